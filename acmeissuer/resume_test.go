package acmeissuer

import (
	"context"
	"crypto"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/testenv"
)

// crashTransport stands for a worker that dies mid-order: once armed, the
// first request whose path contains crashAt ends the order's context and
// fails (before it is sent, or after its answer when after is set). It also
// counts the orders Pebble created.
type crashTransport struct {
	next      http.RoundTripper
	newOrders atomic.Int64

	mu      sync.Mutex
	crashAt string
	after   bool
	kill    context.CancelFunc
}

func (c *crashTransport) arm(path string, after bool, kill context.CancelFunc) {
	c.mu.Lock()
	c.crashAt, c.after, c.kill = path, after, kill
	c.mu.Unlock()
}

func (c *crashTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c.mu.Lock()
	crash := c.crashAt != "" && strings.Contains(req.URL.Path, c.crashAt)
	after, kill := c.after, c.kill
	if crash {
		c.crashAt = ""
	}
	c.mu.Unlock()
	if crash && !after {
		kill()
		return nil, errors.New("worker killed")
	}
	resp, err := c.next.RoundTrip(req)
	if err == nil && req.Method == http.MethodPost && strings.HasSuffix(req.URL.Path, "/order-plz") && resp.StatusCode == http.StatusCreated {
		c.newOrders.Add(1)
	}
	if crash {
		kill()
		if resp != nil {
			resp.Body.Close()
		}
		return nil, errors.New("worker killed")
	}
	return resp, err
}

// crashingIssuer is an Issuer against Pebble whose HTTP goes through a
// crashTransport.
func crashingIssuer(t *testing.T, s testenv.Settings, d *db.DB) (*Issuer, *crashTransport) {
	t.Helper()
	ct := &crashTransport{next: pebbleHTTPClient(t, s, nil).Transport}
	return newTestIssuer(t, s, d, func(c *Config) { c.HTTPClient = &http.Client{Timeout: 30 * time.Second, Transport: ct} }), ct
}

// An order left behind by a worker that died at any stage (challenges not
// yet answered, ready but not finalised, finalised but not downloaded, fully
// issued) is continued by the next Obtain with Resume: the certificate comes
// with the first order's key, and the CA sees no second order.
func TestObtainResumesAnOrderLeftByADeadWorker(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	for _, tc := range []struct {
		name    string
		crashAt string // path part of the request the worker dies at; "" = it does not die
		after   bool   // dies after the request was answered
	}{
		{"pending: died before answering the challenge", "/chalZ/", false},
		{"ready: died before finalising", "/finalize-order/", false},
		{"processing: died after finalising", "/finalize-order/", true},
		{"valid: died before downloading", "/certZ/", false},
		{"valid: died after the whole order", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			iss, ct := crashingIssuer(t, s, d)
			names := []string{"r-" + randomSuffix() + ".certfleet.test", "www.r-" + randomSuffix() + ".certfleet.test"}

			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			dying, die := context.WithCancel(ctx)
			defer die()
			if tc.crashAt != "" {
				ct.arm(tc.crashAt, tc.after, die)
			}
			var left *PendingOrder
			first, err := iss.Obtain(dying, Request{Tenant: "t", SANs: names, OnOrder: func(_ context.Context, o PendingOrder) { left = &o }})
			if tc.crashAt != "" && err == nil {
				t.Fatal("the first worker was to die, but Obtain succeeded")
			}
			if tc.crashAt == "" && err != nil {
				t.Fatal(err)
			}
			if left == nil || left.URL == "" || left.Key == nil {
				t.Fatalf("OnOrder was not told the order: %v", left)
			}
			if n := ct.newOrders.Load(); n != 1 {
				t.Fatalf("%d orders before the resume, want 1", n)
			}

			res, err := iss.Obtain(ctx, Request{Tenant: "t", SANs: names, Resume: left,
				OnOrder: func(context.Context, PendingOrder) { t.Error("a resumed order placed a new one") }})
			if err != nil {
				t.Fatalf("resuming %v: %v", left, err)
			}
			if !res.Resumed {
				t.Error("Result.Resumed is false")
			}
			if n := ct.newOrders.Load(); n != 1 {
				t.Errorf("the CA saw %d orders, want 1", n)
			}
			verify(t, s, res, names...)
			if !res.Leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(left.Key.Public()) {
				t.Error("the certificate is not for the first order's key")
			}
			if first != nil && first.Serial != res.Serial {
				t.Errorf("resumed a valid order to serial %s, the order's certificate is %s", res.Serial, first.Serial)
			}
		})
	}
}

// An order that cannot be continued (unknown to the CA, or for other names)
// is left, and one new order is placed.
func TestObtainPlacesANewOrderWhenTheOldOneCannotBeResumed(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	iss, ct := crashingIssuer(t, s, d)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	other := []string{"x-" + randomSuffix() + ".certfleet.test"}
	var otherOrder PendingOrder
	if _, err := iss.Obtain(ctx, Request{Tenant: "t", SANs: other, OnOrder: func(_ context.Context, o PendingOrder) { otherOrder = o }}); err != nil {
		t.Fatal(err)
	}
	gone := otherOrder
	gone.URL = strings.TrimRight(gone.URL, "/") + "nosuchorder"

	for _, tc := range []struct {
		name   string
		resume PendingOrder
	}{
		{"unknown to the CA", gone},
		{"for other names", otherOrder},
		{"no key", PendingOrder{URL: otherOrder.URL}},
		{"on another server", PendingOrder{URL: "https://evil.test/my-order/1", Key: otherOrder.Key}},
		{"plain http", PendingOrder{URL: strings.Replace(otherOrder.URL, "https://", "http://", 1), Key: otherOrder.Key}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := ct.newOrders.Load()
			names := []string{"n-" + randomSuffix() + ".certfleet.test"}
			res, err := iss.Obtain(ctx, Request{Tenant: "t", SANs: names, Resume: &tc.resume})
			if err != nil {
				t.Fatal(err)
			}
			verify(t, s, res, names...)
			if res.Resumed {
				t.Error("Result.Resumed for a new order")
			}
			if n := ct.newOrders.Load() - before; n != 1 {
				t.Errorf("%d new orders, want 1", n)
			}
		})
	}
}

// The resume path ends when the context ends: a dead successor is not taken
// for an unresumable order (which would place a new one).
func TestResumeHonoursContext(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	iss, ct := crashingIssuer(t, s, d)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	names := []string{"c-" + randomSuffix() + ".certfleet.test"}
	dying, die := context.WithCancel(ctx)
	ct.arm("/chalZ/", false, die)
	var left *PendingOrder
	if _, err := iss.Obtain(dying, Request{Tenant: "t", SANs: names, OnOrder: func(_ context.Context, o PendingOrder) { left = &o }}); err == nil || left == nil {
		t.Fatalf("first attempt: err %v, order %v", err, left)
	}
	dying2, die2 := context.WithCancel(ctx)
	ct.arm("/chalZ/", false, die2)
	_, err := iss.Obtain(dying2, Request{Tenant: "t", SANs: names, Resume: left})
	if err == nil || errors.Is(err, ErrNotResumable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("resume under a cancelled context: %v; want context.Canceled, not ErrNotResumable", err)
	}
	if n := ct.newOrders.Load(); n != 1 {
		t.Errorf("%d orders, want 1", n)
	}
}

// downTransport refuses every connection while down is set: the CA is
// unreachable.
type downTransport struct {
	next http.RoundTripper
	down atomic.Bool
}

func (d *downTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if d.down.Load() {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	}
	return d.next.RoundTrip(req)
}

// A CA that cannot be reached while an order is resumed does not make the
// order unresumable (that would place a second one): the error is the CA
// being unavailable, and once it is back the same order is continued.
func TestResumeWhileTheCAIsDown(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	ct := &crashTransport{next: pebbleHTTPClient(t, s, nil).Transport}
	dt := &downTransport{next: ct}
	iss := newTestIssuer(t, s, d, func(c *Config) { c.HTTPClient = &http.Client{Timeout: 30 * time.Second, Transport: dt} })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	names := []string{"down-" + randomSuffix() + ".certfleet.test"}
	dying, die := context.WithCancel(ctx)
	ct.arm("/chalZ/", false, die)
	var left *PendingOrder
	if _, err := iss.Obtain(dying, Request{Tenant: "t", SANs: names, OnOrder: func(_ context.Context, o PendingOrder) { left = &o }}); err == nil || left == nil {
		t.Fatalf("first attempt: err %v, order %v", err, left)
	}
	dt.down.Store(true)
	_, err := iss.Obtain(ctx, Request{Tenant: "t", SANs: names, Resume: left})
	if err == nil || errors.Is(err, ErrNotResumable) || !Unavailable(err) {
		t.Fatalf("resume while the CA is down: %v; want the CA unavailable, not ErrNotResumable", err)
	}
	dt.down.Store(false)
	res, err := iss.Obtain(ctx, Request{Tenant: "t", SANs: names, Resume: left,
		OnOrder: func(context.Context, PendingOrder) { t.Error("the resume placed a new order") }})
	if err != nil || !res.Resumed {
		t.Fatalf("resume once the CA is back: %v, %v", res, err)
	}
	if n := ct.newOrders.Load(); n != 1 {
		t.Errorf("the CA saw %d orders, want 1", n)
	}
}
