package pipeline

import (
	"context"
	"testing"
	"time"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/ratelimit"
)

// The lead is a high percentile of the CA's latest order latencies, never
// below the floor nor above the cap, per CA, forgetting the oldest beyond
// the window.
func TestIssuanceLead(t *testing.T) {
	s := time.Second
	for _, tc := range []struct {
		name    string
		policy  LeadPolicy
		samples []time.Duration // observed at "ca", in order
		want    time.Duration
	}{
		{"no order measured: the floor", LeadPolicy{Floor: 2 * s}, nil, 2 * s},
		{"fast orders: the floor", LeadPolicy{Floor: 2 * s}, []time.Duration{s / 2, s}, 2 * s},
		{"the 99th percentile of 100", LeadPolicy{Floor: s}, seq(100, s), 99 * s},
		{"the median", LeadPolicy{Floor: s, Percentile: 0.5}, seq(100, s), 50 * s},
		{"slow orders: the cap", LeadPolicy{Floor: s, Cap: 30 * s}, seq(100, s), 30 * s},
		{"the window forgets the oldest", LeadPolicy{Floor: s, Window: 10, Percentile: 1}, append(seq(10, time.Minute), seq(10, s)...), 10 * s},
		{"off", LeadPolicy{Off: true}, seq(10, s), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLatencies(tc.policy)
			for _, d := range tc.samples {
				l.observe("ca", d)
			}
			l.observe("other", time.Hour)
			if got := l.lead("ca"); got != tc.want {
				t.Errorf("lead %v, want %v", got, tc.want)
			}
		})
	}
}

// seq is n latencies 1×d, 2×d, ... n×d.
func seq(n int, d time.Duration) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = time.Duration(i+1) * d
	}
	return out
}

// Each order placed and issued in one attempt is measured for its CA, and
// the next order's issuance-counted transactions carry the lead; the
// others (the account's orders, the fleet budget) none.
func TestOrdersSetTheLead(t *testing.T) {
	h := newHarness(t)
	h.issuer.obtain = func(ctx context.Context, req acmeissuer.Request, _ int64) (*acmeissuer.Result, error) {
		if err := sleepCtx(ctx, 30*time.Millisecond); err != nil {
			return nil, err
		}
		return issueTest(req.SANs)
	}
	w := h.worker(func(c *Config) { c.Lead = LeadPolicy{Floor: time.Millisecond} })
	rr := h.run(w, 5*time.Second, record(t, h.topics.Requests, 0, 0, newRequest("req-1", "www.example.com")))
	rr.waitIdle()
	rr.stop()
	lead := w.lat.lead("pebble")
	if lead < 30*time.Millisecond || lead > 5*time.Second {
		t.Fatalf("lead %v after one 30 ms order, want about 30 ms", lead)
	}
	cat, err := ratelimit.NewCatalogue(ratelimit.CA{ID: "pebble", Directory: "https://ca.test/dir", Limits: ratelimit.LetsEncryptLimits()})
	if err != nil {
		t.Fatal(err)
	}
	txns, err := cat.OrderTransactions(ratelimit.Order{Directory: "https://ca.test/dir", Account: "t", SANs: []string{"www.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	j := &job{w: w}
	for _, tx := range j.withLead(w.cfg.CAs[0], txns) {
		want := time.Duration(0)
		if tx.Name == ratelimit.CertificatesPerDomain || tx.Name == ratelimit.CertificatesPerFQDNSet || tx.Name == ratelimit.NewOrdersPerAccount {
			want = lead
		}
		if tx.Lead != want {
			t.Errorf("%s: lead %v, want %v", tx.Name, tx.Lead, want)
		}
	}
	// Orders that take long to issue: the certificate limits take the whole
	// lead, NewOrdersPerAccount (counted at the newOrder's arrival) at most
	// newOrderLead.
	for range 20 {
		w.lat.observe("pebble", 20*time.Second)
	}
	long := w.lat.lead("pebble")
	if long <= newOrderLead {
		t.Fatalf("lead %v after 20 s orders, want above %v", long, newOrderLead)
	}
	for _, tx := range j.withLead(w.cfg.CAs[0], txns) {
		switch tx.Name {
		case ratelimit.CertificatesPerDomain, ratelimit.CertificatesPerFQDNSet:
			if tx.Lead != long {
				t.Errorf("%s: lead %v, want the order's %v", tx.Name, tx.Lead, long)
			}
		case ratelimit.NewOrdersPerAccount:
			if tx.Lead != newOrderLead {
				t.Errorf("NewOrdersPerAccount: lead %v, want newOrderLead %v", tx.Lead, newOrderLead)
			}
		}
	}
}
