package pipeline

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
	dto "github.com/prometheus/client_model/go"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/cahealth"
	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/caconfig"
	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/seal"
)

var _ Breaker = (*fakeBreaker)(nil)

// fakeBreaker is cahealth's contract in memory, scripted: a CA in open is
// refused until its time; one in probe is allowed as the probe; a failure
// of a CA in opensOnFailure opens it for cooldown.
type fakeBreaker struct {
	mu             sync.Mutex
	now            clock.Clock
	open           map[string]time.Time
	probe          map[string]bool
	opensOnFailure map[string]bool
	cooldown       time.Duration
	failures       map[string]int
	successes      map[string]int
	released       []string
}

func newFakeBreaker(now clock.Clock) *fakeBreaker {
	return &fakeBreaker{now: now, open: map[string]time.Time{}, probe: map[string]bool{}, opensOnFailure: map[string]bool{},
		cooldown: 20 * time.Second, failures: map[string]int{}, successes: map[string]int{}}
}

func (f *fakeBreaker) Allow(_ context.Context, ca, _ string) (cahealth.Decision, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if until, ok := f.open[ca]; ok && f.now.Now().Before(until) {
		return cahealth.Decision{State: cahealth.Open, RetryAt: until}, nil
	}
	if f.probe[ca] {
		return cahealth.Decision{Allowed: true, Probe: true, State: cahealth.HalfOpen}, nil
	}
	return cahealth.Decision{Allowed: true, State: cahealth.Closed}, nil
}

func (f *fakeBreaker) Failure(_ context.Context, ca, _ string) (cahealth.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures[ca]++
	if f.opensOnFailure[ca] {
		f.open[ca] = f.now.Now().Add(f.cooldown)
	}
	return cahealth.Status{CA: ca, Failures: f.failures[ca], OpenUntil: f.open[ca]}, nil
}

func (f *fakeBreaker) Success(_ context.Context, ca string, _ time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.successes[ca]++
	delete(f.open, ca)
	return nil
}

func (f *fakeBreaker) ReleaseProbe(_ context.Context, ca, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.released = append(f.released, ca)
	return nil
}

// dirTokens denies the spends of one CA's directory (by the first
// transaction's), and counts spends and refunds per directory.
type dirTokens struct {
	*fakeTokens
	mu      sync.Mutex
	deny    map[string]ratelimit.Result
	spent   map[string]int
	refunds map[string]int
}

func (d *dirTokens) Spend(ctx context.Context, txns []ratelimit.Transaction) (ratelimit.Result, error) {
	d.mu.Lock()
	dir := txns[0].Directory
	d.spent[dir]++
	res, deny := d.deny[dir]
	d.mu.Unlock()
	if deny {
		return res, nil
	}
	return d.fakeTokens.Spend(ctx, txns)
}

func (d *dirTokens) Refund(ctx context.Context, txns []ratelimit.Transaction) error {
	d.mu.Lock()
	d.refunds[txns[0].Directory]++
	d.mu.Unlock()
	return d.fakeTokens.Refund(ctx, txns)
}

const (
	dirA = "https://a.test/dir"
	dirB = "https://b.test/dir"
)

// failoverWorld is a worker with CAs a and b (each its own fake issuer), a
// group "ab" = a+b, a fake breaker and per-directory tokens.
type failoverWorld struct {
	h      *harness
	a, b   *fakeIssuer
	br     *fakeBreaker
	tokens *dirTokens
	w      *Worker
}

func newFailoverWorld(t *testing.T, mod func(*failoverWorld, *Config)) *failoverWorld {
	h := newHarness(t)
	fw := &failoverWorld{h: h, a: &fakeIssuer{}, b: &fakeIssuer{}, br: newFakeBreaker(h.clock),
		tokens: &dirTokens{fakeTokens: h.tokens, deny: map[string]ratelimit.Result{}, spent: map[string]int{}, refunds: map[string]int{}}}
	fw.w = h.worker(func(c *Config) {
		c.CAs = []CA{{CA: caconfig.CA{Name: "a", Directory: dirA}, Issuer: fw.a}, {CA: caconfig.CA{Name: "b", Directory: dirB}, Issuer: fw.b}}
		c.Groups = []caconfig.Group{{Name: "ab", CAs: []string{"a", "b"}}}
		c.Breaker, c.Tokens, c.Orders, c.FailoverAfter = fw.br, fw.tokens, h.claims, 10*time.Minute
		if mod != nil {
			mod(fw, c)
		}
	})
	return fw
}

// run handles req through the worker and returns what it published.
func (fw *failoverWorld) run(t *testing.T, req *events.IssuanceRequest) run {
	t.Helper()
	h := fw.h
	rr := h.run(fw.w, 5*time.Second, record(t, h.topics.Requests, 0, 1, req))
	rr.waitIdle()
	rr.stop()
	out := run{req: req, msgs: h.writer.on(h.topics.Events)}
	out.events = decoded(t, out.msgs)
	out.retry = decoded(t, h.writer.on(h.topics.Retry))
	return out
}

func groupRequest() *events.IssuanceRequest {
	r := newRequest("req-f", "www.example.com")
	r.CA = "ab"
	return r
}

func refused() error {
	return fmt.Errorf("acmeissuer: obtaining a certificate: %w", &url.Error{Op: "Post", URL: dirA,
		Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}})
}

func obtainedBy(t *testing.T, r run) string {
	t.Helper()
	if len(r.events) == 0 {
		t.Fatalf("nothing published; want cert_obtained")
	}
	ob, ok := r.events[len(r.events)-1].Data.(*events.CertObtained)
	if !ok {
		t.Fatalf("last event %s, want cert_obtained", r.events[len(r.events)-1].Type())
	}
	return ob.CA
}

func failovers(t *testing.T, w *Worker, from, to string) float64 {
	t.Helper()
	var m dto.Metric
	if err := w.cfg.Metrics.Failovers.WithLabelValues(from, to).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestFailover(t *testing.T) {
	t.Run("preferred CA's breaker open: ordered from the next, cert_obtained names it", func(t *testing.T) {
		fw := newFailoverWorld(t, nil)
		fw.br.open["a"] = t0.Add(time.Minute)
		r := fw.run(t, groupRequest())
		if got := obtainedBy(t, r); got != "b" {
			t.Errorf("cert_obtained ca %q, want b", got)
		}
		if fw.a.calls.Load() != 0 || fw.b.calls.Load() != 1 {
			t.Errorf("orders a/b = %d/%d, want 0/1", fw.a.calls.Load(), fw.b.calls.Load())
		}
		if fw.tokens.spent[dirA] != 0 || fw.tokens.spent[dirB] != 1 {
			t.Errorf("tokens spent at a/b = %d/%d, want 0/1: limits stay per CA", fw.tokens.spent[dirA], fw.tokens.spent[dirB])
		}
		if n := failovers(t, fw.w, "a", "b"); n != 1 {
			t.Errorf("certfleet_worker_ca_failovers_total{a,b} = %v, want 1", n)
		}
		if fw.br.successes["b"] != 1 {
			t.Errorf("b's answer not recorded in its breaker: %v", fw.br.successes)
		}
	})

	t.Run("preferred CA refuses connections and its breaker opens: same job moves on, tokens at a refunded", func(t *testing.T) {
		fw := newFailoverWorld(t, nil)
		fw.br.opensOnFailure["a"] = true
		fw.a.obtain = func(context.Context, acmeissuer.Request, int64) (*acmeissuer.Result, error) { return nil, refused() }
		r := fw.run(t, groupRequest())
		if got := obtainedBy(t, r); got != "b" {
			t.Errorf("cert_obtained ca %q, want b", got)
		}
		if fw.a.calls.Load() != 1 || fw.b.calls.Load() != 1 {
			t.Errorf("orders a/b = %d/%d, want 1/1 (no retry at a once its breaker opened)", fw.a.calls.Load(), fw.b.calls.Load())
		}
		if fw.br.failures["a"] != 1 || fw.tokens.refunds[dirA] != 1 || fw.tokens.refunds[dirB] != 0 {
			t.Errorf("failures at a %d, refunds a/b %d/%d; want 1, 1/0", fw.br.failures["a"], fw.tokens.refunds[dirA], fw.tokens.refunds[dirB])
		}
	})

	t.Run("unavailable below the threshold: retried in place at the preferred CA", func(t *testing.T) {
		fw := newFailoverWorld(t, nil)
		fw.a.obtain = func(_ context.Context, r acmeissuer.Request, n int64) (*acmeissuer.Result, error) {
			if n == 1 {
				return nil, refused()
			}
			return issueTest(r.SANs)
		}
		r := fw.run(t, groupRequest())
		if got := obtainedBy(t, r); got != "a" || fw.b.calls.Load() != 0 || fw.br.failures["a"] != 1 || fw.br.successes["a"] != 1 {
			t.Errorf("obtained from %q, b asked %d times, a failures/successes %d/%d; want a, 0, 1/1", got, fw.b.calls.Load(), fw.br.failures["a"], fw.br.successes["a"])
		}
	})

	t.Run("every CA of the group open: deferred CAUnavailable to the earliest probe", func(t *testing.T) {
		fw := newFailoverWorld(t, nil)
		fw.br.open["a"], fw.br.open["b"] = t0.Add(40*time.Second), t0.Add(25*time.Second)
		r := fw.run(t, groupRequest())
		checkDeferred(t, r, limitCAUnavailable, "b", t0.Add(25*time.Second))
		if fw.a.calls.Load()+fw.b.calls.Load() != 0 {
			t.Errorf("%d orders while every breaker is open", fw.a.calls.Load()+fw.b.calls.Load())
		}
	})

	t.Run("a single CA's breaker open: the request waits for it", func(t *testing.T) {
		fw := newFailoverWorld(t, nil)
		fw.br.open["a"] = t0.Add(30 * time.Second)
		req := groupRequest()
		req.CA = "a"
		r := fw.run(t, req)
		checkDeferred(t, r, limitCAUnavailable, "a", t0.Add(30*time.Second))
		if fw.b.calls.Load() != 0 {
			t.Error("a request for CA a alone was ordered from b")
		}
	})

	t.Run("a single CA found unavailable with its breaker opening: retried when the breaker allows a probe", func(t *testing.T) {
		fw := newFailoverWorld(t, nil)
		fw.br.opensOnFailure["a"] = true
		fw.a.obtain = func(context.Context, acmeissuer.Request, int64) (*acmeissuer.Result, error) { return nil, refused() }
		req := groupRequest()
		req.CA = "a"
		r := fw.run(t, req)
		if len(r.events) != 1 || r.events[0].Type() != events.TypeCertFailed {
			t.Fatalf("events %v, want one retryable cert_failed", r.events)
		}
		f := r.events[0].Data.(*events.CertFailed)
		if !f.Retryable || !f.NextAttemptAt.Equal(t0.Add(20*time.Second)) || fw.a.calls.Load() != 1 {
			t.Errorf("cert_failed %+v after %d orders; want retryable at the breaker's end (%v) after 1", f, fw.a.calls.Load(), t0.Add(20*time.Second))
		}
		checkRetry(t, r, t0.Add(20*time.Second), 1)
	})

	t.Run("preferred CA's limits defer beyond FailoverAfter: the next CA", func(t *testing.T) {
		fw := newFailoverWorld(t, nil)
		fw.tokens.deny[dirA] = ratelimit.Result{Decision: ratelimit.Decision{RetryIn: 3 * time.Hour},
			Limiting: &ratelimit.Transaction{Directory: dirA, Name: ratelimit.NewOrdersPerAccount, Value: "acme-corp"}}
		r := fw.run(t, groupRequest())
		if got := obtainedBy(t, r); got != "b" {
			t.Errorf("cert_obtained ca %q, want b", got)
		}
	})

	t.Run("preferred CA's limits defer within FailoverAfter: waited for", func(t *testing.T) {
		fw := newFailoverWorld(t, nil)
		fw.tokens.deny[dirA] = ratelimit.Result{Decision: ratelimit.Decision{RetryIn: 5 * time.Minute},
			Limiting: &ratelimit.Transaction{Directory: dirA, Name: ratelimit.NewOrdersPerAccount, Value: "acme-corp"}}
		r := fw.run(t, groupRequest())
		checkDeferred(t, r, string(ratelimit.NewOrdersPerAccount), fw.tokens.deny[dirA].Limiting.Key(), t0.Add(5*time.Minute))
		if fw.tokens.spent[dirB] != 0 {
			t.Error("b's tokens were spent for a request worth waiting for at a")
		}
	})

	t.Run("both CAs' limits defer beyond FailoverAfter: the shorter deferral", func(t *testing.T) {
		fw := newFailoverWorld(t, nil)
		fw.tokens.deny[dirA] = ratelimit.Result{Decision: ratelimit.Decision{RetryIn: 3 * time.Hour},
			Limiting: &ratelimit.Transaction{Directory: dirA, Name: ratelimit.NewOrdersPerAccount, Value: "acme-corp"}}
		fw.tokens.deny[dirB] = ratelimit.Result{Decision: ratelimit.Decision{RetryIn: time.Hour},
			Limiting: &ratelimit.Transaction{Directory: dirB, Name: ratelimit.CertificatesPerDomain, Value: "example.com"}}
		r := fw.run(t, groupRequest())
		checkDeferred(t, r, string(ratelimit.CertificatesPerDomain), fw.tokens.deny[dirB].Limiting.Key(), t0.Add(time.Hour))
	})

	t.Run("the CA's 429 beyond FailoverAfter: penalised, refunded, the next CA", func(t *testing.T) {
		fw := newFailoverWorld(t, nil)
		fw.a.obtain = func(context.Context, acmeissuer.Request, int64) (*acmeissuer.Result, error) {
			p := acme.Problem{Type: acme.ProblemTypeRateLimited, Status: 429, Detail: "too many new orders (300) from this account in the last 3h0m0s"}
			return nil, fmt.Errorf("obtaining: %w", &acmeissuer.CAError{Status: 429, RetryAfter: t0.Add(2 * time.Hour), Problem: p, Detail: p.Detail, Err: p})
		}
		r := fw.run(t, groupRequest())
		if got := obtainedBy(t, r); got != "b" || fw.tokens.refunds[dirA] != 1 || len(fw.h.tokens.penalties) == 0 {
			t.Errorf("obtained from %q, refunds at a %d, penalties %v; want b, 1, some", got, fw.tokens.refunds[dirA], fw.h.tokens.penalties)
		}
	})

	t.Run("half-open probe: the order's answer is the verdict", func(t *testing.T) {
		fw := newFailoverWorld(t, nil)
		fw.br.probe["a"] = true
		r := fw.run(t, groupRequest())
		if got := obtainedBy(t, r); got != "a" || fw.br.successes["a"] != 1 || len(fw.br.released) != 0 {
			t.Errorf("obtained from %q, successes %v, released %v; want a, the probe decided by the order", got, fw.br.successes, fw.br.released)
		}
	})

	t.Run("half-open probe not used (limits deny): given back", func(t *testing.T) {
		fw := newFailoverWorld(t, nil)
		fw.br.probe["a"] = true
		fw.tokens.deny[dirA] = ratelimit.Result{Decision: ratelimit.Decision{RetryIn: 3 * time.Hour},
			Limiting: &ratelimit.Transaction{Directory: dirA, Name: ratelimit.NewOrdersPerAccount, Value: "acme-corp"}}
		r := fw.run(t, groupRequest())
		if got := obtainedBy(t, r); got != "b" || len(fw.br.released) != 1 || fw.br.released[0] != "a" {
			t.Errorf("obtained from %q, probes released %v; want b, [a]", got, fw.br.released)
		}
	})

	t.Run("a single CA's request keeps its ca field; no breaker, no change", func(t *testing.T) {
		fw := newFailoverWorld(t, func(_ *failoverWorld, c *Config) { c.Breaker = nil })
		req := groupRequest()
		req.CA = dirB // named by directory
		if got := obtainedBy(t, fw.run(t, req)); got != dirB {
			t.Errorf("cert_obtained ca %q, want the request's %q", got, dirB)
		}
	})
}

// An order recorded at a CA is continued there: never moved to another CA
// of the group, also while that CA is down; the order's CA is recorded with
// it.
func TestOrderStaysAtItsCA(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	req := groupRequest()
	aad := seal.AAD(seal.PurposeCertKey, events.Identity(req.SANs), req.RequestID)
	ring := testKeyring(t)
	sealed, err := seal.SealPrivateKey(context.Background(), ring, key, aad)
	if err != nil {
		t.Fatal(err)
	}
	left := func(fw *failoverWorld, dir string) {
		fw.h.claims.rows[req.RequestID] = &claimRow{owner: "dead/1", until: t0.Add(-time.Second), attempts: 1, state: certstore.StateOrdering,
			order: &certstore.Order{URL: "https://b.test/order/1", SealedKey: sealed, CA: dir}}
	}
	withRing := func(_ *failoverWorld, c *Config) { c.Sealer = ring }

	t.Run("left at the second CA while the first is healthy: continued at the second", func(t *testing.T) {
		fw := newFailoverWorld(t, withRing)
		left(fw, dirB)
		var resumed *acmeissuer.PendingOrder
		fw.b.obtain = func(_ context.Context, r acmeissuer.Request, _ int64) (*acmeissuer.Result, error) {
			resumed = r.Resume
			res, err := issueTest(r.SANs)
			if err == nil && r.Resume != nil {
				res.PrivateKey, res.Resumed = r.Resume.Key, true
			}
			return res, err
		}
		r := fw.run(t, req)
		if got := obtainedBy(t, r); got != "b" || fw.a.calls.Load() != 0 || resumed == nil || resumed.URL != "https://b.test/order/1" {
			t.Errorf("obtained from %q, a asked %d times, resumed %v; want b's order continued at b", got, fw.a.calls.Load(), resumed)
		}
		if n := failovers(t, fw.w, "a", "b"); n != 0 {
			t.Errorf("continuing an order counted as a failover (%v)", n)
		}
	})

	t.Run("left at a CA whose breaker is open: waits for it, never ordered elsewhere", func(t *testing.T) {
		fw := newFailoverWorld(t, withRing)
		left(fw, dirB)
		fw.br.open["b"] = t0.Add(45 * time.Second)
		r := fw.run(t, req)
		checkDeferred(t, r, limitCAUnavailable, "b", t0.Add(45*time.Second))
		if fw.a.calls.Load()+fw.b.calls.Load() != 0 {
			t.Errorf("orders a/b %d/%d while the order's CA is open; want none", fw.a.calls.Load(), fw.b.calls.Load())
		}
		if row := fw.h.claims.rows[req.RequestID]; row.order == nil || row.order.CA != dirB {
			t.Errorf("the order left the claim: %+v", row.order)
		}
	})

	t.Run("its CA unavailable during the continuation: not moved, retried when the breaker allows", func(t *testing.T) {
		fw := newFailoverWorld(t, withRing)
		left(fw, dirB)
		fw.br.opensOnFailure["b"] = true
		fw.b.obtain = func(context.Context, acmeissuer.Request, int64) (*acmeissuer.Result, error) { return nil, refused() }
		r := fw.run(t, req)
		if fw.a.calls.Load() != 0 || fw.b.calls.Load() != 1 || len(r.retry) != 1 {
			t.Errorf("orders a/b %d/%d, %d retries; want 0/1, 1", fw.a.calls.Load(), fw.b.calls.Load(), len(r.retry))
		}
	})

	t.Run("recorded before CAs were (no CA): the request's first CA", func(t *testing.T) {
		fw := newFailoverWorld(t, withRing)
		left(fw, "")
		fw.br.open["a"] = t0.Add(time.Minute) // would send a new order to b
		r := fw.run(t, req)
		checkDeferred(t, r, limitCAUnavailable, "a", t0.Add(time.Minute))
	})

	t.Run("a new order is recorded with its CA", func(t *testing.T) {
		fw := newFailoverWorld(t, withRing)
		fw.br.open["a"] = t0.Add(time.Minute)
		fw.b.obtain = func(ctx context.Context, r acmeissuer.Request, _ int64) (*acmeissuer.Result, error) {
			r.OnOrder(ctx, acmeissuer.PendingOrder{URL: "https://b.test/order/2", Key: key})
			return nil, fmt.Errorf("polling: %w", acme.Problem{Type: acme.ProblemTypeServerInternal, Status: 500})
		}
		fw.run(t, req)
		if row := fw.h.claims.rows[req.RequestID]; row.order == nil || row.order.CA != dirB || row.order.URL != "https://b.test/order/2" {
			t.Errorf("recorded order %+v, want b's with directory %s", row.order, dirB)
		}
	})
}

func TestGroupValidation(t *testing.T) {
	h := newHarness(t)
	cfg := h.config()
	cfg.Groups = []caconfig.Group{{Name: "ab", CAs: []string{"pebble", "nope"}}}
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), `Groups: group "ab": CA "nope" is not configured`) {
		t.Fatalf("New with a group naming an unknown CA: %v", err)
	}
}
