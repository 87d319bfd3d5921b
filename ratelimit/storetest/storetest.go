// Package storetest is the conformance suite every ratelimit.Store must
// pass. It owns no state of its own: each case uses fresh random bucket keys,
// so one store can run the suite alongside other tests.
package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certfleet/certfleet/ratelimit"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

// Run runs every conformance case against s.
func Run(t *testing.T, s ratelimit.Store) {
	cases := []struct {
		name string
		fn   func(*testing.T, ratelimit.Store)
	}{
		{"FreshBucket", testFresh},
		{"ExhaustAndRefill", testExhaust},
		{"AllOrNothing", testAllOrNothing},
		{"CheckDoesNotSpend", testCheck},
		{"SpendNoCheck", testNoCheck},
		{"Refund", testRefund},
		{"Penalty", testPenalty},
		{"InvalidRequests", testInvalid},
		{"ConcurrentHotBucket", testConcurrentHot},
		{"ConcurrentOverlappingBatches", testConcurrentBatches},
		{"Lead", testLead},
		{"ConcurrentLead", testConcurrentLead},
		{"Book", testBook},
		{"BookRefusals", testBookRefusals},
		{"ConcurrentBookingsQueue", testConcurrentBookings},
		{"NeverOverSpent", testNeverOverSpent},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.fn(t, s)
		})
	}
}

func key(t testing.TB) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "storetest:" + t.Name() + ":" + hex.EncodeToString(b)
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

var tenPerSec = ratelimit.Limit{Count: 10, Period: time.Second, Burst: 10}

func spend(t *testing.T, s ratelimit.Store, now time.Time, reqs ...ratelimit.Request) []ratelimit.Decision {
	t.Helper()
	ds, err := s.Spend(ctx(t), now, reqs)
	if err != nil {
		t.Fatalf("Spend: %v", err)
	}
	if len(ds) != len(reqs) {
		t.Fatalf("Spend returned %d decisions for %d requests", len(ds), len(reqs))
	}
	return ds
}

func req(k string, cost int64, mode ratelimit.Mode) ratelimit.Request {
	return ratelimit.Request{Key: k, Limit: tenPerSec, Cost: cost, Mode: mode}
}

// remaining checks how much a bucket holds without spending.
func remaining(t *testing.T, s ratelimit.Store, now time.Time, k string) int64 {
	t.Helper()
	return spend(t, s, now, req(k, 0, ratelimit.ModeCheck))[0].Remaining
}

func testFresh(t *testing.T, s ratelimit.Store) {
	k := key(t)
	d := spend(t, s, at(0), req(k, 1, ratelimit.ModeSpend))[0]
	if !d.Allowed || d.Remaining != 9 || d.RetryIn != 0 || d.ResetIn != 100*time.Millisecond {
		t.Fatalf("first spend = %+v, want allowed, 9 remaining, reset in 100ms", d)
	}
	if got := remaining(t, s, at(0), k); got != 9 {
		t.Fatalf("remaining after one spend = %d, want 9", got)
	}
}

func testExhaust(t *testing.T, s ratelimit.Store) {
	k := key(t)
	for i := range 10 {
		if d := spend(t, s, at(0), req(k, 1, ratelimit.ModeSpend))[0]; !d.Allowed || d.Remaining != int64(9-i) {
			t.Fatalf("spend %d = %+v", i, d)
		}
	}
	d := spend(t, s, at(0), req(k, 1, ratelimit.ModeSpend))[0]
	if d.Allowed || d.RetryIn != 100*time.Millisecond || d.ResetIn != time.Second {
		t.Fatalf("11th spend = %+v, want denied, retry in 100ms, reset in 1s", d)
	}
	if d := spend(t, s, at(100*time.Millisecond), req(k, 1, ratelimit.ModeSpend))[0]; !d.Allowed || d.Remaining != 0 {
		t.Fatalf("spend after one interval = %+v, want allowed", d)
	}
	if got := remaining(t, s, at(10*time.Second), k); got != 10 {
		t.Fatalf("remaining long after = %d, want 10", got)
	}
}

func testAllOrNothing(t *testing.T, s ratelimit.Store) {
	a, b, c := key(t), key(t), key(t)
	spend(t, s, at(0), req(b, 10, ratelimit.ModeSpend)) // b is empty
	ds := spend(t, s, at(0), req(a, 1, ratelimit.ModeSpend), req(b, 1, ratelimit.ModeSpend), req(c, 1, ratelimit.ModeSpendNoCheck))
	if !ds[0].Allowed || ds[1].Allowed || !ds[2].Allowed {
		t.Fatalf("batch decisions = %+v, want a allowed, b denied, c allowed", ds)
	}
	if ds[1].RetryIn != 100*time.Millisecond {
		t.Fatalf("b RetryIn = %s, want 100ms", ds[1].RetryIn)
	}
	for _, k := range []string{a, c} {
		if got := remaining(t, s, at(0), k); got != 10 {
			t.Fatalf("bucket %s spent by a denied batch: remaining %d", k, got)
		}
	}
	// A failing check-only member also blocks the batch.
	ds = spend(t, s, at(0), req(a, 1, ratelimit.ModeSpend), req(b, 1, ratelimit.ModeCheck))
	if ds[1].Allowed || remaining(t, s, at(0), a) != 10 {
		t.Fatalf("batch with failing check: %+v, a remaining %d", ds, remaining(t, s, at(0), a))
	}
	// And when all fit, all are spent (the check member is not).
	ds = spend(t, s, at(time.Second), req(a, 2, ratelimit.ModeSpend), req(b, 1, ratelimit.ModeCheck), req(c, 3, ratelimit.ModeSpend))
	if !ds[0].Allowed || !ds[1].Allowed || !ds[2].Allowed {
		t.Fatalf("fitting batch = %+v", ds)
	}
	if ra, rb, rc := remaining(t, s, at(time.Second), a), remaining(t, s, at(time.Second), b), remaining(t, s, at(time.Second), c); ra != 8 || rb != 10 || rc != 7 {
		t.Fatalf("after batch remaining a=%d b=%d c=%d, want 8 10 7", ra, rb, rc)
	}
}

func testCheck(t *testing.T, s ratelimit.Store) {
	k := key(t)
	for range 3 {
		if d := spend(t, s, at(0), req(k, 10, ratelimit.ModeCheck))[0]; !d.Allowed || d.Remaining != 10 {
			t.Fatalf("check = %+v", d)
		}
	}
	spend(t, s, at(0), req(k, 5, ratelimit.ModeSpend))
	if d := spend(t, s, at(0), req(k, 6, ratelimit.ModeCheck))[0]; d.Allowed || d.Remaining != 5 {
		t.Fatalf("check of 6 with 5 left = %+v", d)
	}
}

func testNoCheck(t *testing.T, s ratelimit.Store) {
	k := key(t)
	spend(t, s, at(0), req(k, 10, ratelimit.ModeSpend))
	if d := spend(t, s, at(0), req(k, 1, ratelimit.ModeSpendNoCheck))[0]; !d.Allowed {
		t.Fatalf("spend-no-check on empty bucket = %+v", d)
	}
	if d := spend(t, s, at(100*time.Millisecond), req(k, 1, ratelimit.ModeSpend))[0]; d.Allowed || d.RetryIn != 100*time.Millisecond {
		t.Fatalf("spend after debt = %+v, want denied for another 100ms", d)
	}
}

func testRefund(t *testing.T, s ratelimit.Store) {
	k, other := key(t), key(t)
	spend(t, s, at(0), req(k, 10, ratelimit.ModeSpend))
	if err := s.Refund(ctx(t), at(0), []ratelimit.Request{req(k, 4, ratelimit.ModeSpend), req(other, 1, ratelimit.ModeSpend)}); err != nil {
		t.Fatal(err)
	}
	if got := remaining(t, s, at(0), k); got != 4 {
		t.Fatalf("remaining after refund of 4 = %d", got)
	}
	if err := s.Refund(ctx(t), at(0), []ratelimit.Request{req(k, 10, ratelimit.ModeSpend)}); err != nil {
		t.Fatal(err)
	}
	if got := remaining(t, s, at(0), k); got != 10 {
		t.Fatalf("remaining after over-refund = %d, want full (10)", got)
	}
	if got := remaining(t, s, at(0), other); got != 10 {
		t.Fatalf("refund of an unknown bucket changed it: %d", got)
	}
}

func testPenalty(t *testing.T, s ratelimit.Store) {
	k := key(t)
	if err := s.Penalize(ctx(t), k, at(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := s.Penalize(ctx(t), k, at(2*time.Second)); err != nil { // never shortens
		t.Fatal(err)
	}
	d := spend(t, s, at(time.Second), req(k, 1, ratelimit.ModeSpend))[0]
	if d.Allowed || d.RetryIn != 4*time.Second {
		t.Fatalf("spend under penalty = %+v, want denied, retry in 4s", d)
	}
	ds := spend(t, s, at(time.Second), req(key(t), 1, ratelimit.ModeSpend), req(k, 1, ratelimit.ModeCheck))
	if ds[0].Allowed && ds[1].Allowed {
		t.Fatalf("batch with penalised check allowed: %+v", ds)
	}
	if d := spend(t, s, at(time.Second), req(k, 1, ratelimit.ModeSpendNoCheck))[0]; !d.Allowed {
		t.Fatalf("spend-no-check under penalty = %+v, want allowed", d)
	}
	if d := spend(t, s, at(5*time.Second), req(k, 1, ratelimit.ModeSpend))[0]; !d.Allowed {
		t.Fatalf("spend when penalty ends = %+v, want allowed", d)
	}
	if err := s.Penalize(ctx(t), k, at(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.Penalize(ctx(t), k, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if d := spend(t, s, at(6*time.Second), req(k, 1, ratelimit.ModeSpend))[0]; !d.Allowed {
		t.Fatalf("spend after penalty cleared = %+v, want allowed", d)
	}
}

func testInvalid(t *testing.T, s ratelimit.Store) {
	k := key(t)
	bad := [][]ratelimit.Request{
		{req(k, 11, ratelimit.ModeSpend)},
		{req(k, -1, ratelimit.ModeSpend)},
		{req(k, 1, ratelimit.ModeSpend), req(k, 1, ratelimit.ModeCheck)},
		{{Key: k, Limit: ratelimit.Limit{}, Cost: 1}},
		{{Key: "", Limit: tenPerSec, Cost: 1}},
	}
	for i, reqs := range bad {
		if _, err := s.Spend(ctx(t), at(0), reqs); !errors.Is(err, ratelimit.ErrInvalidRequest) {
			t.Errorf("case %d: err = %v, want ErrInvalidRequest", i, err)
		}
	}
	if got := remaining(t, s, at(0), k); got != 10 {
		t.Fatalf("invalid requests touched the bucket: %d", got)
	}
}

// testConcurrentHot: many goroutines spend one bucket at a fixed time (no
// refill); exactly the burst is granted, and concurrent refunds are never
// lost.
func testConcurrentHot(t *testing.T, s ratelimit.Store) {
	k := key(t)
	l := ratelimit.Limit{Count: 100, Period: time.Hour, Burst: 100}
	r := ratelimit.Request{Key: k, Limit: l, Cost: 1}
	const workers = 16
	if got := concurrentSpends(t, s, r, workers, 20); got != 100 {
		t.Fatalf("granted %d spends of a burst of 100", got)
	}
	// Refund 30 concurrently, then exactly 30 more fit.
	var wg sync.WaitGroup
	for range 30 {
		wg.Go(func() {
			if err := s.Refund(ctx(t), at(0), []ratelimit.Request{r}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := concurrentSpends(t, s, r, workers, 4); got != 30 {
		t.Fatalf("after 30 refunds, granted %d, want 30", got)
	}
}

// concurrentSpends spends r per times from each of workers goroutines, all
// at time 0, and returns how many were granted.
func concurrentSpends(t *testing.T, s ratelimit.Store, r ratelimit.Request, workers, per int) int64 {
	var granted atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range per {
				ds, err := s.Spend(ctx(t), at(0), []ratelimit.Request{r})
				if err != nil {
					t.Error(err)
					return
				}
				if ds[0].Allowed {
					granted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return granted.Load()
}

// testConcurrentBatches: goroutines spend overlapping 2- and 3-bucket
// batches; per bucket, granted spends never exceed the burst, and the
// bucket's TAT accounts for exactly the granted spends.
func testConcurrentBatches(t *testing.T, s ratelimit.Store) {
	keys := []string{key(t), key(t), key(t), key(t)}
	l := ratelimit.Limit{Count: 40, Period: time.Hour, Burst: 40}
	combos := [][]int{{0, 1}, {1, 2}, {2, 3}, {3, 0}, {0, 1, 2}, {1, 2, 3}, {3, 1}, {2, 0, 3}}
	var mu sync.Mutex
	spent := make([]int64, len(keys))
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := range 12 {
				combo := combos[(w+i)%len(combos)]
				reqs := make([]ratelimit.Request, len(combo))
				for j, c := range combo {
					reqs[j] = ratelimit.Request{Key: keys[c], Limit: l, Cost: 1}
				}
				ds, err := s.Spend(ctx(t), at(0), reqs)
				if err != nil {
					t.Error(err)
					return
				}
				all := true
				for _, d := range ds {
					all = all && d.Allowed
				}
				if all {
					mu.Lock()
					for _, c := range combo {
						spent[c]++
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	for i, k := range keys {
		if spent[i] > 40 {
			t.Errorf("bucket %d granted %d spends, burst is 40", i, spent[i])
		}
		ds, err := s.Spend(ctx(t), at(0), []ratelimit.Request{{Key: k, Limit: l, Cost: 0, Mode: ratelimit.ModeCheck}})
		if err != nil {
			t.Fatal(err)
		}
		if got := 40 - ds[0].Remaining; got != spent[i] {
			t.Errorf("bucket %d: store shows %d spent, callers were granted %d", i, got, spent[i])
		}
	}
}

func lead(k string, cost int64, mode ratelimit.Mode, lead time.Duration) ratelimit.Request {
	r := req(k, cost, mode)
	r.Lead = lead
	return r
}

// testLead: a spend with a lead is decided at now and recorded at now+lead,
// alone and in a batch, and a lead outside 0-MaxLead is refused.
func testLead(t *testing.T, s ratelimit.Store) {
	const ms = time.Millisecond
	k := key(t)
	d := spend(t, s, at(0), lead(k, 1, ratelimit.ModeSpend, 300*ms))[0]
	if !d.Allowed || !d.NewTAT().Equal(at(400*ms)) || d.Remaining != 6 {
		t.Fatalf("first spend with lead 300ms = %+v (TAT %v), want allowed, TAT at 400ms, 6 remaining", d, d.NewTAT())
	}
	// A busy bucket (TAT beyond now+lead) records as without a lead.
	if d := spend(t, s, at(0), lead(k, 1, ratelimit.ModeSpend, 300*ms))[0]; !d.Allowed || !d.NewTAT().Equal(at(500*ms)) {
		t.Fatalf("second spend = %+v (TAT %v), want TAT at 500ms", d, d.NewTAT())
	}
	// In a batch, with spend-without-check, the check stays at now.
	a, b, c := key(t), key(t), key(t)
	ds := spend(t, s, at(0), lead(a, 10, ratelimit.ModeSpend, 0), lead(b, 10, ratelimit.ModeSpend, 2*time.Second), lead(c, 1, ratelimit.ModeSpendNoCheck, time.Second))
	if !ds[0].Allowed || !ds[1].Allowed || !ds[2].Allowed {
		t.Fatalf("batch with leads = %+v, want all allowed (a lead does not change the check)", ds)
	}
	for i, want := range []time.Time{at(time.Second), at(3 * time.Second), at(1100 * ms)} {
		if !ds[i].NewTAT().Equal(want) {
			t.Errorf("batch bucket %d TAT %v, want %v", i, ds[i].NewTAT(), want)
		}
	}
	if d := spend(t, s, at(2*time.Second), req(b, 1, ratelimit.ModeSpend))[0]; d.Allowed || d.RetryIn != 100*ms {
		t.Fatalf("spend of b at 2s = %+v, want denied until 2.1s (its 10 were recorded at 2s)", d)
	}
	for _, l := range []time.Duration{-time.Nanosecond, ratelimit.MaxLead + time.Nanosecond} {
		if _, err := s.Spend(ctx(t), at(0), []ratelimit.Request{lead(key(t), 1, ratelimit.ModeSpend, l)}); !errors.Is(err, ratelimit.ErrInvalidRequest) {
			t.Errorf("lead %s: err = %v, want ErrInvalidRequest", l, err)
		}
	}
}

// testConcurrentLead: concurrent single-bucket spends with a lead of three
// intervals at one instant grant exactly burst-3: the first records at
// now+lead, the others queue behind it.
func testConcurrentLead(t *testing.T, s ratelimit.Store) {
	k := key(t)
	r := lead(k, 1, ratelimit.ModeSpend, 300*time.Millisecond)
	if got := concurrentSpends(t, s, r, 16, 2); got != 7 {
		t.Fatalf("granted %d spends with lead 3 intervals of a burst of 10, want 7", got)
	}
}

func book(t *testing.T, s ratelimit.Store, now, latest time.Time, reqs ...ratelimit.Request) ([]ratelimit.Decision, time.Time) {
	t.Helper()
	ds, at, err := s.Book(ctx(t), now, reqs, latest)
	if err != nil {
		t.Fatalf("Book: %v", err)
	}
	if len(ds) != len(reqs) {
		t.Fatalf("Book returned %d decisions for %d requests", len(ds), len(reqs))
	}
	return ds, at
}

// testBook: a batch that fits is spent at now; a full batch is booked all or
// nothing at the slot of its fullest bucket, and later waiters queue one
// interval apart, in arrival order.
func testBook(t *testing.T, s ratelimit.Store) {
	const ms = time.Millisecond
	a, b, c := key(t), key(t), key(t)
	if _, got := book(t, s, at(0), time.Time{}, req(a, 5, ratelimit.ModeSpend)); !got.Equal(at(0)) {
		t.Fatalf("Book of a fitting batch at %v, want now", got)
	}
	spend(t, s, at(0), req(b, 10, ratelimit.ModeSpend))                                      // b empty until 100ms
	spend(t, s, at(0), req(c, 10, ratelimit.ModeSpend), req(key(t), 0, ratelimit.ModeCheck)) // c too
	// a has 5 left, b frees one at 100ms, c is checked only.
	var slots []time.Time
	for range 3 {
		ds, got := book(t, s, at(0), time.Time{}, req(a, 1, ratelimit.ModeSpend), req(b, 1, ratelimit.ModeSpend), req(c, 1, ratelimit.ModeCheck))
		if ds[1].Allowed {
			t.Fatalf("Book on a full bucket reports it allowed now: %+v", ds)
		}
		slots = append(slots, got)
	}
	if want := []time.Time{at(100 * ms), at(200 * ms), at(300 * ms)}; !slices.EqualFunc(slots, want, time.Time.Equal) {
		t.Fatalf("booked slots %v, want %v", slots, want)
	}
	// The booking is the spend: a spent 3 (5+3 of 10), b is booked to 1.3s,
	// c was only checked.
	if got := remaining(t, s, at(0), a); got != 2 {
		t.Errorf("a holds %d after 3 bookings, want 2", got)
	}
	if d := spend(t, s, at(300*ms), req(b, 1, ratelimit.ModeSpend))[0]; d.Allowed || d.RetryIn != 100*ms {
		t.Errorf("spend of b at the last booked slot = %+v, want denied until the next slot (400ms)", d)
	}
	if got := remaining(t, s, at(300*ms), c); got != 3 {
		t.Errorf("c holds %d at 300ms, want 3: bookings must not spend a check-only bucket", got)
	}
	// A booking with a lead records at its slot plus the lead.
	e := key(t)
	spend(t, s, at(0), req(e, 10, ratelimit.ModeSpend))
	ds, got := book(t, s, at(0), time.Time{}, lead(e, 1, ratelimit.ModeSpend, 250*ms))
	if !got.Equal(at(100*ms)) || !ds[0].NewTAT().Equal(at(1100*ms)) {
		t.Fatalf("booking with lead: slot %v TAT %v, want slot 100ms, TAT 1.1s (max(1s, 350ms) + 100ms)", got, ds[0].NewTAT())
	}
}

// testBookRefusals: a penalised bucket, or a slot after latest, books
// nothing.
func testBookRefusals(t *testing.T, s ratelimit.Store) {
	a, b := key(t), key(t)
	spend(t, s, at(0), req(a, 10, ratelimit.ModeSpend))
	if err := s.Penalize(ctx(t), b, at(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, got := book(t, s, at(0), time.Time{}, req(a, 1, ratelimit.ModeSpend), req(b, 1, ratelimit.ModeCheck)); !got.IsZero() {
		t.Fatalf("batch with a penalised bucket booked at %v", got)
	}
	if _, got := book(t, s, at(0), at(50*time.Millisecond), req(a, 1, ratelimit.ModeSpend)); !got.IsZero() {
		t.Fatalf("slot 100ms booked although latest is 50ms: %v", got)
	}
	if d := spend(t, s, at(100*time.Millisecond), req(a, 1, ratelimit.ModeSpend))[0]; !d.Allowed {
		t.Fatalf("refused bookings spent a: %+v", d)
	}
}

// testConcurrentBookings: k waiters booking one full bucket at once are told
// k distinct slots, one interval apart, and the bucket accounts for them all.
func testConcurrentBookings(t *testing.T, s ratelimit.Store) {
	k := key(t)
	spend(t, s, at(0), req(k, 10, ratelimit.ModeSpend))
	const waiters = 24
	slots := make([]time.Time, waiters)
	var wg sync.WaitGroup
	for i := range waiters {
		wg.Go(func() {
			_, got, err := s.Book(ctx(t), at(0), []ratelimit.Request{req(k, 1, ratelimit.ModeSpend)}, time.Time{})
			if err != nil {
				t.Error(err)
			}
			slots[i] = got
		})
	}
	wg.Wait()
	slices.SortFunc(slots, time.Time.Compare)
	for i, got := range slots {
		if want := at(time.Duration(i+1) * 100 * time.Millisecond); !got.Equal(want) {
			t.Fatalf("slot %d of %d waiters = %v, want %v (all: %v)", i, waiters, got, want, slots)
		}
	}
	if d := spend(t, s, at(2400*time.Millisecond), req(k, 1, ratelimit.ModeSpend))[0]; d.Allowed {
		t.Fatalf("a spend at the last booked slot was allowed: %+v", d)
	}
}

// testNeverOverSpent is the GCRA property over random spends, spends with
// leads and bookings at advancing times: with each event placed where the CA
// counts it (a spend at now+Lead, a booking at its slot+Lead), no window
// [t1, t2] holds more than burst + (t2-t1)/interval units of cost.
func testNeverOverSpent(t *testing.T, s ratelimit.Store) {
	l := ratelimit.Limit{Count: 5, Period: time.Second, Burst: 5} // interval 200ms
	keys := []string{key(t), key(t)}
	type event struct {
		at   time.Time
		cost int64
	}
	events := make([][]event, len(keys))
	r := mrand.New(mrand.NewPCG(1, 2))
	now := t0
	for range 150 {
		now = now.Add(time.Duration(r.IntN(150)) * time.Millisecond)
		var reqs []ratelimit.Request
		var idx []int
		for i, k := range keys {
			if r.IntN(3) > 0 {
				reqs = append(reqs, ratelimit.Request{Key: k, Limit: l, Cost: int64(1 + r.IntN(2)),
					Lead: time.Duration(r.IntN(3)) * 300 * time.Millisecond})
				idx = append(idx, i)
			}
		}
		if len(reqs) == 0 {
			continue
		}
		var when time.Time
		if r.IntN(2) == 0 {
			ds := spend(t, s, now, reqs...)
			if all := !slices.ContainsFunc(ds, func(d ratelimit.Decision) bool { return !d.Allowed }); all {
				when = now
			}
		} else {
			_, when = book(t, s, now, now.Add(3*time.Second), reqs...)
			if !when.IsZero() && when.Before(now) {
				t.Fatalf("booked at %v, before now %v", when, now)
			}
		}
		if when.IsZero() {
			continue
		}
		for j, rq := range reqs {
			events[idx[j]] = append(events[idx[j]], event{when.Add(rq.Lead), rq.Cost})
		}
	}
	interval := int64(l.Period) / l.Count
	for b, evs := range events {
		if len(evs) < 10 {
			t.Fatalf("bucket %d: only %d events, the property saw too little", b, len(evs))
		}
		for _, e1 := range evs {
			for _, e2 := range evs {
				if e2.at.Before(e1.at) {
					continue
				}
				var sum int64
				for _, e := range evs {
					if !e.at.Before(e1.at) && !e.at.After(e2.at) {
						sum += e.cost
					}
				}
				if limit := l.Burst + int64(e2.at.Sub(e1.at))/interval; sum > limit {
					t.Fatalf("bucket %d: %d units counted in [%v, %v], at most %d allowed", b, sum, e1.at, e2.at, limit)
				}
			}
		}
	}
}
