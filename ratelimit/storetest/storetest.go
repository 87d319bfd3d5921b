// Package storetest is the conformance suite every ratelimit.Store must
// pass. It owns no state of its own: each case uses fresh random bucket keys,
// so one store can run the suite alongside other tests.
package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
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
	const workers, per = 16, 20
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
	if got := granted.Load(); got != 100 {
		t.Fatalf("granted %d spends of a burst of 100", got)
	}
	// Refund 30 concurrently, then exactly 30 more fit.
	for range 30 {
		wg.Go(func() {
			if err := s.Refund(ctx(t), at(0), []ratelimit.Request{r}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	granted.Store(0)
	for range workers {
		wg.Go(func() {
			for range 4 {
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
	if got := granted.Load(); got != 30 {
		t.Fatalf("after 30 refunds, granted %d, want 30", got)
	}
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
