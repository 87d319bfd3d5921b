package ratelimit_test

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/testenv"
)

// fanout is a Publisher standing in for Kafka: every message reaches every
// worker's cache.
type fanout struct{ caches []*ratelimit.OverrideCache }

func (f fanout) Publish(_ context.Context, topic, _ string, value []byte) error {
	if topic != ratelimit.ChangesTopic {
		return nil
	}
	for _, c := range f.caches {
		if err := c.HandleChange(value); err != nil {
			return err
		}
	}
	return nil
}

// TestOverridePropagation measures the time from an override commit to every
// worker's cache answering with the new value, through outbox and relay (the
// Kafka hop itself is replaced by fanout). Caches use a one-hour TTL, so
// only invalidation can make them see a change.
func TestOverridePropagation(t *testing.T) {
	d := testDB(t)
	ctx := tctx(t)
	store := ratelimit.NewOverrideStore(d, nil)
	cat := catalogue(t)
	caches := make([]*ratelimit.OverrideCache, 4)
	for i := range caches {
		caches[i] = ratelimit.NewOverrideCache(store, time.Hour, nil)
	}
	relay := ratelimit.NewRelay(d, fanout{caches})
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = relay.Run(rctx, 20*time.Millisecond, func(err error) { t.Error(err) }) })
	defer func() { stop(); wg.Wait() }()

	txn := mustTxn(t, cat, ratelimit.NewOrdersPerAccount, "acct-p", "acct-p", "")
	o, err := store.Create(ctx, ratelimit.Override{Name: ratelimit.NewOrdersPerAccount, Key: "acct-p",
		Limit: ratelimit.Limit{Count: 1000, Period: time.Hour, Burst: 1000}, ValidFrom: time.Now().Add(-time.Minute), CreatedBy: "test"})
	if err != nil {
		t.Fatal(err)
	}
	const changes = 100
	lat := make([]time.Duration, 0, changes)
	for i := range changes {
		next := *o
		next.Limit.Count = int64(1001 + i)
		next.Limit.Burst = next.Limit.Count
		if o, err = store.Update(ctx, next, "test"); err != nil {
			t.Fatal(err)
		}
		committed := time.Now()
		for _, c := range caches {
			for {
				got, err := c.Find(ctx, time.Now(), []ratelimit.Transaction{txn})
				if err != nil {
					t.Fatal(err)
				}
				if got[0] != nil && got[0].Limit.Count == next.Limit.Count {
					break
				}
				if time.Since(committed) > 10*time.Second {
					t.Fatalf("change %d not seen after 10s", i)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}
		lat = append(lat, time.Since(committed))
	}
	// Disabling the last override reaches every worker too.
	if _, err := store.Disable(ctx, o.ID, o.Version, "test"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, c := range caches {
		for {
			got, _ := c.Find(ctx, time.Now(), []ratelimit.Transaction{txn})
			if got[0] == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("disable not propagated within 5s")
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	slices.Sort(lat)
	t.Logf("propagation over %d changes to 4 caches (relay poll 20ms): p50 %s, max %s", changes, lat[len(lat)/2], lat[len(lat)-1])
	if lat[len(lat)-1] > 5*time.Second {
		t.Errorf("max propagation %s exceeds 5s", lat[len(lat)-1])
	}
}

// TestLimiterConcurrentProperty: 16 goroutines over 4 limiters (each with its
// own connection pool, like 4 workers) hammer one hot bucket and overlapping
// multi-bucket batches, refunding some spends. At a fixed time (no refill)
// no bucket ever grants more than its burst, and every bucket's final state
// equals granted minus refunded: no spend or refund is lost.
func TestLimiterConcurrentProperty(t *testing.T) {
	url := testenv.FreshDatabase(t)
	ctx := tctx(t)
	first := openDB(t, url, true)
	_ = first
	const burst = 60
	cat, err := ratelimit.NewCatalogue(ratelimit.CA{ID: "p", Directory: leDir, Limits: map[ratelimit.Name]ratelimit.LimitConfig{
		ratelimit.NewOrdersPerAccount:   {Limit: ratelimit.Limit{Count: burst, Period: time.Hour, Burst: burst}},
		ratelimit.CertificatesPerDomain: {Limit: ratelimit.Limit{Count: burst, Period: time.Hour, Burst: burst}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	clk := clock.NewFake(time.Now())
	limiters := make([]*ratelimit.Limiter, 4)
	for i := range limiters {
		limiters[i] = ratelimit.NewLimiter(ratelimit.LimiterConfig{Store: ratelimit.NewDBStore(openDB(t, url, false)), Catalogue: cat, Clock: clk})
	}
	txn := func(n ratelimit.Name, v string) ratelimit.Transaction {
		x, err := cat.Transaction(leDir, n, v)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	hot := txn(ratelimit.NewOrdersPerAccount, "hot")
	doms := []ratelimit.Transaction{txn(ratelimit.CertificatesPerDomain, "a.com"), txn(ratelimit.CertificatesPerDomain, "b.com"), txn(ratelimit.CertificatesPerDomain, "c.com")}
	combos := [][]ratelimit.Transaction{{hot}, {hot, doms[0]}, {doms[0], doms[1]}, {doms[1], doms[2], hot}, {doms[2], doms[0]}, {hot}}
	var net sync.Map // key -> *atomic.Int64 (granted - refunded)
	for _, x := range append([]ratelimit.Transaction{hot}, doms...) {
		net.Store(x.Key(), new(atomic.Int64))
	}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			l := limiters[g%4]
			for i := range 40 {
				c := combos[(g+i)%len(combos)]
				res, err := l.Spend(ctx, c)
				if err != nil {
					t.Error(err)
					return
				}
				if !res.Allowed {
					continue
				}
				for _, x := range c {
					v, _ := net.Load(x.Key())
					v.(*atomic.Int64).Add(1)
				}
				if r.IntN(4) == 0 {
					if err := l.Refund(ctx, c); err != nil {
						t.Error(err)
						return
					}
					for _, x := range c {
						v, _ := net.Load(x.Key())
						v.(*atomic.Int64).Add(-1)
					}
				}
			}
		})
	}
	wg.Wait()
	for _, x := range append([]ratelimit.Transaction{hot}, doms...) {
		res, err := limiters[0].Check(ctx, []ratelimit.Transaction{x})
		if err != nil {
			t.Fatal(err)
		}
		v, _ := net.Load(x.Key())
		want := v.(*atomic.Int64).Load()
		if got := burst - res.Remaining; got != want || want > burst {
			t.Errorf("%s: store shows %d spent, callers hold %d (burst %d)", x.Key(), got, want, burst)
		}
	}
}

func openDB(t testing.TB, url string, migrate bool) *db.DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := db.Open(ctx, db.Config{URL: url, MaxConns: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	if migrate {
		migrateDB(t, ctx, d)
	}
	return d
}
