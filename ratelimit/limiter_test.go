package ratelimit_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/ratelimit"
)

type staticOverrides map[string]ratelimit.Limit // by bucket key

func (s staticOverrides) Find(_ context.Context, _ time.Time, txns []ratelimit.Transaction) ([]*ratelimit.Override, error) {
	out := make([]*ratelimit.Override, len(txns))
	for i, t := range txns {
		if l, ok := s[t.Key()]; ok {
			out[i] = &ratelimit.Override{Limit: l}
		}
	}
	return out, nil
}

func order(t testing.TB, c *ratelimit.Catalogue, kind ratelimit.OrderKind, sans ...string) []ratelimit.Transaction {
	t.Helper()
	txns, err := c.OrderTransactions(ratelimit.Order{Directory: leDir, Account: "acct-1", SANs: sans, Kind: kind})
	if err != nil {
		t.Fatal(err)
	}
	return txns
}

func TestLimiterFQDNSet(t *testing.T) {
	cat := catalogue(t)
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	l := ratelimit.NewLimiter(ratelimit.LimiterConfig{Store: ratelimit.NewMemStore(), Catalogue: cat, Clock: clk})
	ctx := tctx(t)
	for i := range 5 {
		r, err := l.Spend(ctx, order(t, cat, ratelimit.NewOrder, "www.example.com", "example.com"))
		if err != nil || !r.Allowed {
			t.Fatalf("order %d: %+v, %v", i, r, err)
		}
		clk.Advance(time.Second)
	}
	r, err := l.Spend(ctx, order(t, cat, ratelimit.Renewal, "example.com", "www.example.com"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Allowed || r.Limiting == nil || r.Limiting.Name != ratelimit.CertificatesPerFQDNSet {
		t.Fatalf("6th order for one SAN set = %+v, want denied by CertificatesPerFQDNSet even as a renewal", r)
	}
	if want := 7*24*time.Hour/5 - 5*time.Second; r.RetryIn != want {
		t.Fatalf("RetryIn = %s, want %s", r.RetryIn, want)
	}
}

func TestLimiterRenewalSpendsWithoutCheck(t *testing.T) {
	cat := catalogue(t)
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	l := ratelimit.NewLimiter(ratelimit.LimiterConfig{Store: ratelimit.NewMemStore(), Catalogue: cat, Clock: clk})
	ctx := tctx(t)
	for i := range 50 {
		r, err := l.Spend(ctx, order(t, cat, ratelimit.NewOrder, fmt.Sprintf("h%d.example.com", i)))
		if err != nil || !r.Allowed {
			t.Fatalf("order %d: %+v, %v", i, r, err)
		}
		clk.Advance(time.Second)
	}
	r, _ := l.Spend(ctx, order(t, cat, ratelimit.NewOrder, "new.example.com"))
	if r.Allowed || r.Limiting.Name != ratelimit.CertificatesPerDomain {
		t.Fatalf("51st new certificate = %+v, want denied by CertificatesPerDomain", r)
	}
	r, _ = l.Spend(ctx, order(t, cat, ratelimit.Renewal, "h0.example.com"))
	if !r.Allowed {
		t.Fatalf("renewal of an existing SAN set = %+v, want allowed (spend without check)", r)
	}
	// The renewal was counted: new issuance now waits two intervals.
	r, _ = l.Check(ctx, order(t, cat, ratelimit.NewOrder, "new.example.com"))
	if r.Allowed || r.RetryIn < 2*7*24*time.Hour/50-time.Minute {
		t.Fatalf("after renewal, new order check = %+v, want a wait of about two intervals", r)
	}
}

func TestLimiterRefundPenaltyOverride(t *testing.T) {
	cat := catalogue(t)
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	acct := mustTxn(t, cat, ratelimit.NewOrdersPerAccount, "acct-1", "acct-1", "")
	store := ratelimit.NewMemStore()
	l := ratelimit.NewLimiter(ratelimit.LimiterConfig{Store: store, Catalogue: cat, Clock: clk,
		Overrides: staticOverrides{acct.Key(): {Count: 2, Period: time.Hour, Burst: 2}}})
	ctx := tctx(t)
	txns := []ratelimit.Transaction{acct}
	for range 2 {
		if r, _ := l.Spend(ctx, txns); !r.Allowed {
			t.Fatalf("spend within override = %+v", r)
		}
	}
	if r, _ := l.Spend(ctx, txns); r.Allowed || r.RetryIn != 30*time.Minute {
		t.Fatalf("spend beyond lower override = %+v, want denied for 30m", r)
	}
	if err := l.Refund(ctx, txns); err != nil {
		t.Fatal(err)
	}
	if r, _ := l.Spend(ctx, txns); !r.Allowed {
		t.Fatalf("spend after refund = %+v", r)
	}
	if err := l.Refund(ctx, txns); err != nil {
		t.Fatal(err)
	}
	if err := l.Penalize(ctx, acct, clk.Now().Add(10*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if r, _ := l.Spend(ctx, txns); r.Allowed || r.RetryIn != 10*time.Minute {
		t.Fatalf("spend under penalty = %+v, want denied for 10m", r)
	}
	clk.Advance(10 * time.Minute)
	if r, _ := l.Spend(ctx, txns); !r.Allowed {
		t.Fatalf("spend after penalty = %+v", r)
	}
}

// A failed validation spends one failed-authorization token per
// authorization host of the order (a wildcard and its base name are one
// host); any other failure spends nothing.
func TestLimiterSpendFailedAuthorizations(t *testing.T) {
	cat := catalogue(t)
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	l := ratelimit.NewLimiter(ratelimit.LimiterConfig{Store: ratelimit.NewMemStore(), Catalogue: cat, Clock: clk})
	ctx := tctx(t)
	o := ratelimit.Order{Directory: leDir, Account: "acct-1", SANs: []string{"example.com", "*.example.com", "www.example.net"}}
	check := order(t, cat, ratelimit.NewOrder, o.SANs...)[5:] // the order's failed-authorization checks, one per host
	if len(check) != 2 || check[0].Name != ratelimit.FailedAuthorizationsPerDomainPerAccount {
		t.Fatalf("the order's checks: %+v", check)
	}
	remaining := func() []int64 {
		var out []int64
		for _, tx := range check {
			r, err := l.Check(ctx, []ratelimit.Transaction{tx})
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, r.Remaining)
		}
		return out
	}
	for _, p := range []string{"urn:ietf:params:acme:error:malformed", "urn:ietf:params:acme:error:rateLimited", "urn:ietf:params:acme:error:serverInternal", ""} {
		if err := l.SpendFailedAuthorizations(ctx, o, p); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
	}
	if got := remaining(); got[0] != 5 || got[1] != 5 {
		t.Fatalf("after failures that are not validations: remaining %v, want 5 each", got)
	}
	for _, p := range []string{"unauthorized", "incorrectResponse", "connection", "dns", "tls", "caa"} {
		if err := l.SpendFailedAuthorizations(ctx, o, "urn:ietf:params:acme:error:"+p); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
	}
	if got := remaining(); got[0] != 0 || got[1] != 0 {
		t.Fatalf("after six failed validations: remaining %v, want 0 each (no more than the burst of 5 checks out)", got)
	}
	if r, _ := l.Spend(ctx, order(t, cat, ratelimit.NewOrder, o.SANs...)); r.Allowed {
		t.Fatalf("an order after its names failed five times an hour: %+v, want denied", r)
	}
	// A CA without the limit: nothing to spend.
	none, err := ratelimit.NewCatalogue(ratelimit.CA{ID: "p", Directory: leDir, Limits: map[ratelimit.Name]ratelimit.LimitConfig{
		ratelimit.NewOrdersPerAccount: {Limit: ratelimit.Limit{Count: 5, Period: time.Hour, Burst: 5}}}})
	if err != nil {
		t.Fatal(err)
	}
	l2 := ratelimit.NewLimiter(ratelimit.LimiterConfig{Store: ratelimit.NewMemStore(), Catalogue: none, Clock: clk})
	if err := l2.SpendFailedAuthorizations(ctx, o, "urn:ietf:params:acme:error:unauthorized"); err != nil {
		t.Fatalf("CA without the limit: %v", err)
	}
}

func TestWithIssuanceLead(t *testing.T) {
	txns := order(t, catalogue(t), ratelimit.NewOrder, "www.example.com", "example.org")
	got := ratelimit.WithIssuanceLead(txns, time.Minute)
	counted := 0
	for i, x := range got {
		want := time.Duration(0)
		if x.Name == ratelimit.CertificatesPerDomain || x.Name == ratelimit.CertificatesPerFQDNSet {
			want, counted = time.Minute, counted+1
		}
		if x.Lead != want || txns[i].Lead != 0 {
			t.Errorf("%s: lead %s (original %s), want %s and the original untouched", x.Key(), x.Lead, txns[i].Lead, want)
		}
	}
	if counted != 3 { // two registered domains and the SAN set
		t.Fatalf("%d issuance-counted transactions, want 3", counted)
	}
}

// TestLimiterBook: orders for one registered domain beyond its limit are
// booked one interval apart, a booking's holder goes ahead at its slot
// without spending again, and the lead of the issuance-counted limits
// delays the next slot by the order latency once, as the CA's count would.
func TestLimiterBook(t *testing.T) {
	hourly := ratelimit.Limit{Count: 6, Period: time.Hour, Burst: 2} // interval 10 min
	cat, err := ratelimit.NewCatalogue(ratelimit.CA{ID: "b", Directory: leDir, Limits: map[ratelimit.Name]ratelimit.LimitConfig{
		ratelimit.CertificatesPerDomain: {Limit: hourly},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clock.NewFake(t0)
	l := ratelimit.NewLimiter(ratelimit.LimiterConfig{Store: ratelimit.NewMemStore(), Catalogue: cat, Clock: clk})
	ctx := tctx(t)
	const latency = 3 * time.Minute
	var got []string
	for i := range 5 {
		r, err := l.Book(ctx, ratelimit.WithIssuanceLead(order(t, cat, ratelimit.NewOrder, fmt.Sprintf("h%d.example.com", i)), latency), 0)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("allowed=%v booked=%v at=+%s retry=%s", r.Allowed, r.Booked, r.At.Sub(t0), r.RetryIn))
	}
	// Burst 2: the first now, recorded at +3m (TAT +13m), which leaves one
	// token at now+3m, not at now: the second is booked for +3m (TAT +23m),
	// then one every 10 minutes.
	want := []string{
		"allowed=true booked=false at=+0s retry=0s",
		"allowed=false booked=true at=+3m0s retry=3m0s",
		"allowed=false booked=true at=+13m0s retry=13m0s",
		"allowed=false booked=true at=+23m0s retry=23m0s",
		"allowed=false booked=true at=+33m0s retry=33m0s",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Book results:\n%s\nwant\n%s", got, want)
	}
	// A horizon shorter than the next slot (+43m) books nothing.
	r, err := l.Book(ctx, order(t, cat, ratelimit.NewOrder, "late.example.com"), 40*time.Minute)
	if err != nil || r.Allowed || r.Booked || !r.At.IsZero() || r.RetryIn != 43*time.Minute {
		t.Fatalf("Book beyond the horizon = %+v, %v; want neither allowed nor booked, retry in 43m", r, err)
	}
	// The holder of the +3m booking goes ahead then without spending: at
	// +3m the bucket holds nothing more than the bookings left it.
	clk.Advance(3 * time.Minute)
	if r, err := l.Check(ctx, order(t, cat, ratelimit.NewOrder, "h1.example.com")); err != nil || r.Allowed {
		t.Fatalf("check at the first booked slot = %+v, %v; want denied (the slot is taken)", r, err)
	}
}
