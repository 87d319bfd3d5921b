package cahealth

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/schema"
	"github.com/certfleet/certfleet/testenv"
)

func freshDB(t *testing.T) *db.DB {
	t.Helper()
	testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := db.Open(ctx, db.Config{URL: testenv.FreshDatabase(t), MaxConns: 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	if _, err := schema.Migrate(ctx, d, schema.Options{}); err != nil {
		t.Fatal(err)
	}
	return d
}

func gauge(t *testing.T, m *Metrics, ca string) float64 {
	t.Helper()
	var out dto.Metric
	if err := m.State.WithLabelValues(ca).Write(&out); err != nil {
		t.Fatal(err)
	}
	return out.GetGauge().GetValue()
}

// Two workers (two Breakers on one database, one fake clock) go through a
// CA's whole life: closed while failures stay below the threshold (a
// success resets them), open at the threshold for the cooldown, half-open
// with one probe at a time, open again twice as long when the probe fails,
// closed when a probe succeeds.
func TestBreakerLifecycle(t *testing.T) {
	d := freshDB(t)
	ctx := context.Background()
	clk := clock.NewFake(time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC))
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	newB := func(metrics *Metrics) *Breaker {
		b, err := New(Config{DB: d, Threshold: 3, Cooldown: 10 * time.Second, MaxCooldown: 25 * time.Second,
			ProbeLease: time.Minute, HalfOpenWait: 2 * time.Second, CacheFor: time.Second, Clock: clk, Metrics: metrics, CAs: []string{"a", "b"}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	w1, w2 := newB(m), newB(nil)
	allow := func(b *Breaker, owner string) Decision {
		t.Helper()
		dec, err := b.Allow(ctx, "a", owner)
		if err != nil {
			t.Fatal(err)
		}
		return dec
	}
	fail := func(b *Breaker) Status {
		t.Helper()
		s, err := b.Failure(ctx, "a", "HTTP 503")
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if dec := allow(w1, "j1"); !dec.Allowed || dec.Probe || dec.State != Closed {
		t.Fatalf("a CA without a row: %+v", dec)
	}
	if err := w1.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if v := gauge(t, m, "b"); v != 0 {
		t.Errorf("metric of a CA that never failed = %v, want 0 (closed)", v)
	}

	fail(w1)
	fail(w2)
	if err := w2.Success(ctx, "a", clk.Now()); err != nil {
		t.Fatal(err)
	}
	fail(w1)
	if s := fail(w2); s.Failures != 2 || s.State(clk.Now()) != Closed {
		t.Fatalf("after a success and two failures: %+v, want 2 failures, closed", s)
	}
	s := fail(w1)
	if s.State(clk.Now()) != Open || !s.OpenUntil.Equal(clk.Now().Add(10*time.Second)) || s.Opens != 1 || s.LastError != "HTTP 503" {
		t.Fatalf("at the threshold: %+v, want open for the cooldown", s)
	}
	if v := gauge(t, m, "a"); v != 2 {
		t.Errorf("metric = %v, want 2 (open)", v)
	}
	clk.Advance(1500 * time.Millisecond) // w2's read is stale now
	for _, b := range []*Breaker{w1, w2} {
		if dec := allow(b, "j2"); dec.Allowed || dec.State != Open || !dec.RetryAt.Equal(s.OpenUntil) {
			t.Fatalf("open: %+v, want refused until %v", dec, s.OpenUntil)
		}
	}
	fail(w2) // a late failure while open changes nothing but the count
	clk.Set(s.OpenUntil)

	// Half-open: of two workers asking at once, one takes the probe.
	clk.Advance(time.Second)
	decs := make([]Decision, 2)
	var wg sync.WaitGroup
	for i, b := range []*Breaker{w1, w2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			decs[i], _ = b.Allow(ctx, "a", fmt.Sprintf("p%d", i))
		}()
	}
	wg.Wait()
	probes := 0
	for _, dec := range decs {
		if dec.Probe {
			probes++
			if !dec.Allowed {
				t.Errorf("a probe not allowed: %+v", dec)
			}
		} else if dec.Allowed || dec.State != HalfOpen || !dec.RetryAt.Equal(clk.Now().Add(2*time.Second)) {
			t.Errorf("the other worker: %+v, want refused, half-open, back in 2s", dec)
		}
	}
	if probes != 1 {
		t.Fatalf("%d probes taken, want 1: %+v", probes, decs)
	}
	// The probe fails: open again, twice as long.
	s = fail(w1)
	if s.State(clk.Now()) != Open || !s.OpenUntil.Equal(clk.Now().Add(20*time.Second)) || s.Opens != 2 || s.ProbeOwner != "" {
		t.Fatalf("failed probe: %+v, want open for 20s", s)
	}
	clk.Set(s.OpenUntil)
	// A probe whose worker died frees the CA after its lease.
	if dec := allow(w1, "dead"); !dec.Probe {
		t.Fatalf("half-open again: %+v, want the probe", dec)
	}
	clk.Advance(30 * time.Second)
	w2.Refresh(ctx)
	if dec := allow(w2, "j3"); dec.Allowed {
		t.Fatalf("during another's probe lease: %+v", dec)
	}
	clk.Advance(31 * time.Second)
	w2.Refresh(ctx)
	if dec := allow(w2, "j3"); !dec.Probe {
		t.Fatalf("after the dead probe's lease: %+v, want the probe", dec)
	}
	// Given back without a verdict, the probe is free at once.
	if err := w2.ReleaseProbe(ctx, "a", "j3"); err != nil {
		t.Fatal(err)
	}
	if dec := allow(w1, "j4"); !dec.Probe {
		t.Fatalf("after a released probe: %+v, want the probe", dec)
	}
	// An answer to an order that began before the last failure is stale:
	// it closes nothing.
	if err := w1.Success(ctx, "a", clk.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if list, _ := w2.List(ctx); list[0].Failures == 0 {
		t.Fatalf("a stale success reset the breaker: %+v", list[0])
	}
	// The probe succeeds: closed, everything reset.
	clk.Advance(time.Second)
	if err := w1.Success(ctx, "a", clk.Now()); err != nil {
		t.Fatal(err)
	}
	list, err := w2.List(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("List: %+v, %v", list, err)
	}
	if got := list[0]; got.State(clk.Now()) != Closed || got.Failures != 0 || got.Opens != 0 || !got.ClosedAt.Equal(clk.Now()) || got.ProbeOwner != "" {
		t.Fatalf("after the probe's success: %+v, want closed now", got)
	}
	if v := gauge(t, m, "a"); v != 0 {
		t.Errorf("metric = %v, want 0 (closed)", v)
	}
	// The cooldown starts from the beginning after a close, and is capped.
	for range 3 {
		s = fail(w1)
	}
	if !s.OpenUntil.Equal(clk.Now().Add(10 * time.Second)) {
		t.Fatalf("first open after a close: %+v", s)
	}
	for i, want := range []time.Duration{20 * time.Second, 25 * time.Second, 25 * time.Second} {
		clk.Set(s.OpenUntil)
		s = fail(w1)
		if !s.OpenUntil.Equal(clk.Now().Add(want)) {
			t.Fatalf("open %d: until %v, want now+%v", i+2, s.OpenUntil, want)
		}
	}
	// Reset by hand.
	if ok, err := w1.Reset(ctx, "a"); err != nil || !ok {
		t.Fatalf("Reset = %v, %v", ok, err)
	}
	if dec := allow(w1, "j5"); !dec.Allowed || dec.State != Closed {
		t.Fatalf("after Reset: %+v", dec)
	}
	if ok, err := w1.Reset(ctx, "a"); err != nil || ok {
		t.Fatalf("second Reset = %v, %v; want nothing to reset", ok, err)
	}
}

// Failures recorded at once by many workers are all counted (no lost
// update), and the breaker opens once.
func TestConcurrentFailures(t *testing.T) {
	d := freshDB(t)
	ctx := context.Background()
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		b, err := New(Config{DB: d, Threshold: 3})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = b.Failure(ctx, "down", "connection refused")
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	b, _ := New(Config{DB: d})
	list, err := b.List(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("List: %+v, %v", list, err)
	}
	if s := list[0]; s.Failures != n || s.Opens != 1 || s.State(time.Now()) != Open {
		t.Fatalf("after %d concurrent failures: %+v, want them all counted and one open", n, s)
	}
}
