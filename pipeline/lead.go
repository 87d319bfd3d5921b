package pipeline

import (
	"slices"
	"sync"
	"time"

	"github.com/certfleet/certfleet/ratelimit"
)

// Spend where the CA counts. A CA counts CertificatesPerDomain and
// CertificatesPerFQDNSet when it issues the certificate, an order's latency
// after the worker spent the tokens at placing it. The worker therefore
// records those spends ahead by a lead (ratelimit.WithIssuanceLead): a
// rolling high percentile of the measured time from placing an order to
// its certificate, per CA, bounded by a floor and a cap. Its buckets are
// then never ahead of the CA's at equal limits, while a lead that is too
// long only delays (never over-spends).

// LeadPolicy configures the issuance lead. The zero value means the
// defaults.
type LeadPolicy struct {
	// Floor is the least lead, also used before any order was measured.
	// Default 1 s.
	Floor time.Duration
	// Cap is the greatest lead: a CA whose orders are slower than this is
	// charged as if they took Cap (a longer wait then shows as the CA's 429
	// and its penalty). Default 5 minutes.
	Cap time.Duration
	// Percentile of the window's latencies used, in (0, 1]. Default 0.99.
	Percentile float64
	// Window is how many of the CA's latest orders are kept. Default 256.
	Window int
	// Off: no lead (certificates spent as if counted when ordered).
	Off bool
}

func (p *LeadPolicy) defaults() {
	if p.Floor <= 0 {
		p.Floor = time.Second
	}
	if p.Cap <= 0 {
		p.Cap = 5 * time.Minute
	}
	if p.Percentile <= 0 || p.Percentile > 1 {
		p.Percentile = 0.99
	}
	if p.Window <= 0 {
		p.Window = 256
	}
}

// latencies keeps the latest order latencies per CA. Safe for concurrent use.
type latencies struct {
	mu     sync.Mutex
	policy LeadPolicy
	byCA   map[string]*ring
}

type ring struct {
	d    []time.Duration
	next int
}

func newLatencies(p LeadPolicy) *latencies {
	p.defaults()
	return &latencies{policy: p, byCA: map[string]*ring{}}
}

// observe records that an order placed at ca took d to issue.
func (l *latencies) observe(ca string, d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.byCA[ca]
	if r == nil {
		r = &ring{}
		l.byCA[ca] = r
	}
	if len(r.d) < l.policy.Window {
		r.d = append(r.d, d)
		return
	}
	r.d[r.next] = d
	r.next = (r.next + 1) % len(r.d)
}

// lead is ca's issuance lead: the policy's percentile of its latencies,
// between Floor and Cap.
func (l *latencies) lead(ca string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.policy
	if p.Off {
		return 0
	}
	var q time.Duration
	if r := l.byCA[ca]; r != nil && len(r.d) > 0 {
		s := slices.Clone(r.d)
		slices.Sort(s)
		i := int(float64(len(s))*p.Percentile+0.999999) - 1
		q = s[min(max(i, 0), len(s)-1)]
	}
	return min(max(q, p.Floor), p.Cap)
}

// withLead marks the issuance-counted transactions of an order at ca with
// ca's lead, and NewOrdersPerAccount with a lead of its own, newOrderLead at
// most: the CA counts an order when its newOrder arrives, after the spend,
// and a spend recorded when it is made runs ahead of that count by the
// jitter of the latency in between (at 100% of the CA's limits the CA proxy
// answered 2 NewOrdersPerAccount 429s in a 2,000-job friendliness run
// without it; 0 with it). That latency is one request's, not the order's
// whole time to issuance: the order's lead there slowed a saturated fast
// bucket to one spend per lead (make bench's fleet row, limits of 10^6/s).
func (j *job) withLead(ca CA, txns []ratelimit.Transaction) []ratelimit.Transaction {
	d := j.w.lat.lead(ca.Name)
	if d == 0 {
		return txns
	}
	out := ratelimit.WithIssuanceLead(txns, d)
	for i := range out {
		if out[i].Name == ratelimit.NewOrdersPerAccount {
			out[i].Lead = min(d, newOrderLead)
		}
	}
	return out
}

// newOrderLead bounds the lead of NewOrdersPerAccount: far above a newOrder
// request's latency and its jitter, far below an order's time to issuance.
const newOrderLead = time.Second
