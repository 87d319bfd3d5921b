package pipeline

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/delivery"
	"github.com/certfleet/certfleet/events"
)

// fakeDelivery records what the job hands to Config.Delivery; fail makes
// the first calls fail, as an unreachable Kafka would.
type fakeDelivery struct {
	mu    sync.Mutex
	got   []delivery.Certificate
	fail  int
	calls int
}

func (f *fakeDelivery) Deliver(_ context.Context, c delivery.Certificate) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.calls <= f.fail {
		return errors.New("broker not available")
	}
	f.got = append(f.got, c)
	return nil
}

// issuedClaims keeps what Complete stores.
type issuedClaims struct {
	*fakeClaims
	mu     sync.Mutex
	issued []certstore.Issued
}

func (c *issuedClaims) Complete(ctx context.Context, owner string, ic certstore.Issued, outcome []byte) error {
	c.mu.Lock()
	c.issued = append(c.issued, ic)
	c.mu.Unlock()
	return c.fakeClaims.Complete(ctx, owner, ic, outcome)
}

// The delivery hook: the certificate just obtained, its key and its tenant
// reach Config.Delivery before it is stored; a failing delivery is retried
// like any infrastructure call and the job still ends obtained, once; a
// re-published outcome delivers nothing new; without a Delivery nothing
// changes.
func TestDeliveryHook(t *testing.T) {
	h := newHarness(t)
	d := &fakeDelivery{fail: 2}
	var stored []string
	claims := &issuedClaims{fakeClaims: h.claims}
	w := h.worker(func(c *Config) { c.Delivery, c.Claims = d, claims })
	req := newRequest("req-d1", "a.example.com", "www.a.example.com")
	for i := range 2 { // the request, then its redelivery
		r := h.run(w, 0, record(t, h.topics.Requests, 0, int64(i), req))
		r.waitIdle()
		r.stop()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.got) != 1 || d.calls != 3 {
		t.Fatalf("Deliver called %d times with %d successes; want 3 calls (2 failures retried), 1 success, and nothing for the duplicate", d.calls, len(d.got))
	}
	c := d.got[0]
	for _, ic := range claims.issued {
		stored = append(stored, ic.Serial+"/"+ic.Tenant)
	}
	if c.Key == nil || c.Tenant != "acme-corp" || c.RequestID != req.RequestID || c.Identity != events.Identity(req.SANs) ||
		!slices.Equal(c.SANs, req.SANs) || c.Serial == "" || c.ChainPEM == "" {
		t.Errorf("delivered %v, not the request's certificate with its key", c)
	}
	if !slices.Equal(stored, []string{c.Serial + "/acme-corp"}) {
		t.Errorf("stored %v, want the delivered certificate with its tenant", stored)
	}
	var obtained int
	for _, ev := range decoded(t, h.writer.on(h.topics.Events)) {
		if ev.Type() == events.TypeCertObtained {
			obtained++
		}
	}
	if obtained != 2 {
		t.Errorf("%d cert_obtained (first and re-published), want 2", obtained)
	}
}
