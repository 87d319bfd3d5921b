package caproxy

import (
	"context"
	"errors"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/certfleet/certfleet/testenv"
)

// Stop refuses new connections (an outage as clients see it) and keeps
// Pebble's state and the proxy's counters; Start serves again on the same
// address, where an order placed before the outage is still there.
func TestStopAndStart(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startProxy(t, s, Config{})
	c, _ := newClient(t, p)
	acct := newAccount(ctx, t, c)
	o := mustOrder(ctx, t, c, acct, "outage-"+randomLabel()+".caproxy.certfleet.test")

	if err := p.Stop(5 * time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := p.Stop(time.Second); err == nil {
		t.Error("a second Stop did not say the proxy is not serving")
	}
	// A fresh connection (acmez keeps directories in a cache of its own).
	get := func() error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.DirectoryURL(), nil)
		resp, err := (&http.Client{Transport: proxyTransport(t, p, false)}).Do(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	if err := get(); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("directory while stopped: %v; want connection refused", err)
	}

	if err := p.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := p.Start(ctx); err == nil {
		t.Error("a second Start did not say the proxy serves already")
	}
	if err := get(); err != nil {
		t.Fatalf("directory after Start: %v", err)
	}
	got, err := c.GetOrder(ctx, acct, o)
	if err != nil || got.Location != o.Location {
		t.Fatalf("the order placed before the outage: %+v, %v", got, err)
	}
	if st := p.Stats(); st.Orders != 1 {
		t.Errorf("stats after the outage: %d orders, want the 1 from before", st.Orders)
	}
}
