package ratelimit_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/ratelimit/storetest"
	"github.com/certfleet/certfleet/schema"
	"github.com/certfleet/certfleet/testenv"
)

func TestMemStoreConformance(t *testing.T) {
	storetest.Run(t, ratelimit.NewMemStore())
}

func TestDBStoreConformance(t *testing.T) {
	storetest.Run(t, ratelimit.NewDBStore(testDB(t)))
}

// testDB is a migrated fresh database on the testenv server, closed when
// the test ends.
func testDB(t testing.TB) *db.DB {
	t.Helper()
	url := testenv.FreshDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := db.Open(ctx, db.Config{URL: url, MaxConns: 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	migrateDB(t, ctx, d)
	return d
}

func migrateDB(t testing.TB, ctx context.Context, d *db.DB) {
	t.Helper()
	if _, err := schema.Migrate(ctx, d, schema.Options{}); err != nil {
		t.Fatal(err)
	}
}

// TestDBStoreCoalescedBatchesDecideAlone: with one runner, concurrent
// multi-bucket spends and bookings of disjoint buckets share round trips;
// each, with its own time, mode, lead and horizon, gets exactly the
// decisions and slot a memory store gives it alone.
func TestDBStoreCoalescedBatchesDecideAlone(t *testing.T) {
	s := ratelimit.NewDBStore(testDB(t))
	s.ManyRunners = 1
	mem := ratelimit.NewMemStore()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	lim := ratelimit.Limit{Count: 10, Period: time.Second, Burst: 10}
	type call struct {
		now    time.Time
		reqs   []ratelimit.Request
		book   bool
		latest time.Time
	}
	prefix := fmt.Sprintf("coalesced:%d:", time.Now().UnixNano())
	var calls []call
	for i := range 40 {
		k := func(j int) string { return fmt.Sprintf("%s%d:%d", prefix, i, j) }
		c := call{now: t0.Add(time.Duration(i) * time.Millisecond), book: i%2 == 1}
		if i%4 == 3 {
			c.latest = c.now.Add(150 * time.Millisecond)
		}
		c.reqs = []ratelimit.Request{
			{Key: k(0), Limit: lim, Cost: int64(1 + i%3), Lead: time.Duration(i%3) * 100 * time.Millisecond},
			{Key: k(1), Limit: lim, Cost: 1, Mode: ratelimit.Mode(i % 3)},
			{Key: k(2), Limit: lim, Cost: 2, Mode: ratelimit.ModeSpendNoCheck},
		}
		calls = append(calls, c)
	}
	ctx := tctx(t)
	// Fill every bucket 1 of the odd calls, so that they book rather than spend.
	for i, c := range calls {
		if i%2 == 1 {
			full := []ratelimit.Request{{Key: c.reqs[1].Key, Limit: lim, Cost: 10}}
			for _, st := range []ratelimit.Store{s, mem} {
				if _, err := st.Spend(ctx, t0, full); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	do := func(st ratelimit.Store, c call) string {
		var ds []ratelimit.Decision
		var at time.Time
		var err error
		if c.book {
			ds, at, err = st.Book(ctx, c.now, c.reqs, c.latest)
		} else {
			ds, err = st.Spend(ctx, c.now, c.reqs)
		}
		if err != nil {
			return "error: " + err.Error()
		}
		out := fmt.Sprintf("at=%v", at.Sub(t0))
		for _, d := range ds {
			out += fmt.Sprintf(" %v/%d/%s/%s/%s", d.Allowed, d.Remaining, d.RetryIn, d.ResetIn, d.NewTAT().Sub(t0))
		}
		return out
	}
	got := make([]string, len(calls))
	var wg sync.WaitGroup
	for i, c := range calls {
		wg.Go(func() { got[i] = do(s, c) })
	}
	wg.Wait()
	for i, c := range calls {
		if want := do(mem, c); got[i] != want {
			t.Errorf("call %d (book %v): database %s\nmemory %s", i, c.book, got[i], want)
		}
	}
}
