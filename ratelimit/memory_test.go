package ratelimit_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/ratelimit"
)

// keepNothing is a Store that allows every spend and keeps nothing: the
// buckets live in the database, so what a worker itself holds is what this
// test measures.
type keepNothing struct{}

func (keepNothing) Spend(_ context.Context, _ time.Time, reqs []ratelimit.Request) ([]ratelimit.Decision, error) {
	ds := make([]ratelimit.Decision, len(reqs))
	for i := range ds {
		ds[i].Allowed = true
	}
	return ds, nil
}
func (k keepNothing) Book(ctx context.Context, now time.Time, reqs []ratelimit.Request, _ time.Time) ([]ratelimit.Decision, time.Time, error) {
	ds, err := k.Spend(ctx, now, reqs)
	return ds, now, err
}
func (keepNothing) Refund(context.Context, time.Time, []ratelimit.Request) error { return nil }
func (keepNothing) Penalize(context.Context, string, time.Time) error            { return nil }

func heapAfterGC() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// Issue 17's long run, at the worker's side of the limiter: orders of
// 100,000 distinct tenants, each with its overrides looked up (through the
// bounded OverrideCache), leave the worker's heap where 20,000 left it: what
// a worker keeps per tenant is bounded, not grown for ever.
func TestWorkerMemoryFlatOver100000Tenants(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: 100,000 tenants take about 12 s; make test runs it (no -short)")
	}
	cat := catalogue(t)
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	cache := ratelimit.NewOverrideCache(&countingSource{}, time.Hour, clk)
	l := ratelimit.NewLimiter(ratelimit.LimiterConfig{Store: keepNothing{}, Catalogue: cat, Overrides: cache, Clock: clk})
	ctx := context.Background()
	spend := func(from, to int) {
		for i := from; i < to; i++ {
			txns, err := cat.OrderTransactions(ratelimit.Order{Directory: leDir, Account: fmt.Sprintf("tenant-%d", i),
				SANs: []string{fmt.Sprintf("www.site%d.example.com", i)}, Kind: ratelimit.NewOrder})
			if err != nil {
				t.Fatal(err)
			}
			if r, err := l.Spend(ctx, txns); err != nil || !r.Allowed {
				t.Fatalf("order of tenant %d: %+v, %v", i, r, err)
			}
			clk.Advance(time.Millisecond)
		}
	}
	spend(0, 20_000) // past the cache's bound of 10,000 answers
	at20k := heapAfterGC()
	spend(20_000, 100_000)
	at100k := heapAfterGC()
	growth := int64(at100k) - int64(at20k)
	t.Logf("heap after GC: %d KiB after 20,000 tenants, %d KiB after 100,000 (%+d KiB); cache %d answers",
		at20k>>10, at100k>>10, growth>>10, cache.Len())
	// Unbounded, 80,000 more tenants' cached answers (several per order)
	// would add tens of MiB; bounded, the heap moves by noise only.
	if growth > 4<<20 {
		t.Errorf("the heap grew %d KiB from 20,000 to 100,000 tenants, want flat (under 4 MiB)", growth>>10)
	}
}
