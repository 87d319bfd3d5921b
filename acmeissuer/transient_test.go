package acmeissuer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/certfleet/certfleet/testenv"
	"github.com/certfleet/certfleet/testenv/caproxy"
)

// proxiedIssuer is an Issuer talking to testenv's Pebble through a CA proxy
// started with faults: the CA's own counters say how many orders it saw.
func proxiedIssuer(t *testing.T, s testenv.Settings, faults caproxy.Faults) (*Issuer, *caproxy.Proxy) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := caproxy.Start(ctx, caproxy.Config{Upstream: s.ACMEDirectory, UpstreamCA: s.ACMETLSCA, Faults: faults})
	if err != nil {
		t.Fatalf("starting the CA proxy: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	caPEM, err := os.ReadFile(p.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	t.Cleanup(tr.CloseIdleConnections)
	return newTestIssuer(t, s, freshDB(t), func(c *Config) {
		c.Directory = p.DirectoryURL()
		c.HTTPClient = &http.Client{Timeout: 30 * time.Second, Transport: tr}
	}), p
}

// A CA that answers 503 to the polls of an authorization (three in a row,
// which makes acmez give the poll up) fails the attempt as retryable and
// leaves the order as it was: its authorizations are not deactivated, so the
// next attempt continues it (Resume) and the certificate costs exactly one
// order at the CA, reported once through OnOrder.
func TestTransientPollFailureCostsNoSecondOrder(t *testing.T) {
	s := testenv.Require(t)
	iss, p := proxiedIssuer(t, s, caproxy.Faults{UnavailablePolls: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	name := "transient-" + randomSuffix() + ".certfleet.test"

	var mu sync.Mutex
	var placed []PendingOrder
	req := Request{SANs: []string{name}, OnOrder: func(_ context.Context, o PendingOrder) {
		mu.Lock()
		placed = append(placed, o)
		mu.Unlock()
	}}
	_, err := iss.Obtain(ctx, req)
	if c := Classify(err); err == nil || c.Class != Retry || !Unavailable(err) {
		t.Fatalf("first attempt: %v (%+v); want a retryable failure saying the CA is unavailable", err, c)
	}
	if st := p.Stats(); st.InjectedUnavailablePolls != 3 || st.Orders != 1 {
		t.Fatalf("the CA saw %d orders and answered %d polls 503; want 1 and 3", st.Orders, st.InjectedUnavailablePolls)
	}
	mu.Lock()
	if len(placed) != 1 {
		t.Fatalf("OnOrder reported %d orders; want 1", len(placed))
	}
	req.Resume = &placed[0]
	mu.Unlock()

	res, err := iss.Obtain(ctx, req)
	if err != nil {
		t.Fatalf("second attempt, resuming %s: %v", req.Resume.URL, err)
	}
	if !res.Resumed {
		t.Error("the certificate did not come from the first order")
	}
	verify(t, s, res, name)
	st := p.Stats()
	if st.Orders != 1 || st.Issued != 1 {
		t.Errorf("the CA saw %d orders and issued %d certificates; want 1 and 1 (no second order)", st.Orders, st.Issued)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(placed) != 1 {
		t.Errorf("OnOrder reported %d orders in all; want 1", len(placed))
	}
}
