package scheduler_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/scheduler"
)

// newClock is a fake clock at the current time, which tests move by hand.
func newClock() *clock.Fake { return clock.NewFake(time.Now().UTC().Truncate(time.Millisecond)) }

// memWriter keeps written jobs; fail makes the next write fail after
// keeping them (the job reached Kafka, the tick never learnt it).
type memWriter struct {
	mu   sync.Mutex
	msgs []kafka.Message
	fail bool
}

func (w *memWriter) WriteMessages(_ context.Context, msgs ...kafka.Message) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, msgs...)
	if w.fail {
		w.fail = false
		return errors.New("crash after the write")
	}
	return nil
}

func (w *memWriter) requests(t *testing.T) []*events.IssuanceRequest {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*events.IssuanceRequest
	for _, m := range w.msgs {
		ev, err := events.Decode(m)
		if err != nil {
			t.Fatalf("emitted job does not decode: %v", err)
		}
		out = append(out, ev.Data.(*events.IssuanceRequest))
	}
	return out
}

func (w *memWriter) reset() {
	w.mu.Lock()
	w.msgs = nil
	w.mu.Unlock()
}

var quiet = slog.New(slog.DiscardHandler)

type rig struct {
	t      *testing.T
	d      *db.DB
	clk    *clock.Fake
	w      *memWriter
	inv    *scheduler.Inventory
	sched  *scheduler.Scheduler
	lease  scheduler.LeaseState
	holder string
}

func newRig(t *testing.T, mutate func(*scheduler.Config)) *rig {
	d, _ := freshDB(t)
	r := &rig{t: t, d: d, clk: newClock(), w: &memWriter{}}
	r.inv = scheduler.NewInventory(d, r.clk)
	cfg := scheduler.Config{DB: d, Writer: r.w, Holder: "leader-" + uuid.NewString()[:8], Clock: r.clk, Logger: quiet,
		Budget: ratelimit.Limit{Count: 1000, Period: time.Second, Burst: 1000}}
	if mutate != nil {
		mutate(&cfg)
	}
	var err error
	if r.sched, err = scheduler.New(cfg); err != nil {
		t.Fatal(err)
	}
	ls, err := scheduler.NewLease(d, scheduler.LeaseName, cfg.Holder, time.Minute).TryAcquire(context.Background())
	if err != nil || !ls.Held {
		t.Fatalf("lease: %+v %v", ls, err)
	}
	ls.ValidUntil = time.Now().Add(100 * 365 * 24 * time.Hour) // the fake clock moves far
	r.lease, r.holder = ls, cfg.Holder
	return r
}

func (r *rig) manage(tenant string, n int) []scheduler.Managed {
	r.t.Helper()
	var ms []scheduler.Managed
	for i := range n {
		m, err := scheduler.Normalize(scheduler.Spec{SANs: []string{fmt.Sprintf("c%d.%s.example.com", i, tenant)}, Tenant: tenant, CA: testCA})
		if err != nil {
			r.t.Fatal(err)
		}
		ms = append(ms, m)
	}
	if _, err := r.inv.Manage(context.Background(), ms...); err != nil {
		r.t.Fatal(err)
	}
	return ms
}

func (r *rig) tick() scheduler.TickResult {
	r.t.Helper()
	res, err := r.sched.Tick(context.Background(), func() scheduler.LeaseState { return r.lease })
	if err != nil {
		r.t.Fatalf("tick: %v", err)
	}
	return res
}

func TestTickEmitsOnceWithDeterministicIDs(t *testing.T) {
	r := newRig(t, nil)
	ms := r.manage("t1", 30)
	res := r.tick()
	if res.Emitted != 30 || res.Idle {
		t.Fatalf("first tick: %+v", res)
	}
	reqs := r.w.requests(t)
	ids := map[string]bool{}
	for _, q := range reqs {
		if q.Reason != events.ReasonNew || q.Replaces != "" || q.Tenant != "t1" || q.CA != testCA {
			t.Errorf("job %+v", q)
		}
		ids[q.RequestID] = true
	}
	row, _ := r.inv.Get(context.Background(), ms[0].Identity)
	if row.RequestID != scheduler.RequestID(ms[0].Identity, row.PlannedAt) || !ids[row.RequestID] || row.FenceToken != r.lease.Token {
		t.Errorf("row not marked: %+v", row)
	}
	if h := headerOf(r.w.msgs[0], scheduler.HeaderFencingToken); h != strconv.FormatInt(r.lease.Token, 10) {
		t.Errorf("fencing header %q", h)
	}
	// Marked rows are not due again: the next tick is idle.
	if res := r.tick(); !res.Idle {
		t.Fatalf("second tick: %+v", res)
	}
	// No news for a whole watchdog period: the same jobs go out again.
	r.w.reset()
	r.clk.Advance(6*time.Hour + time.Second)
	if res := r.tick(); res.Emitted != 30 {
		t.Fatalf("watchdog tick: %+v", res)
	}
	for _, q := range r.w.requests(t) {
		if !ids[q.RequestID] {
			t.Errorf("re-emission used a new request id %s", q.RequestID)
		}
	}
}

// A crash between the Kafka write and the mark: the rows stay due and the
// next tick emits the same request ids, so nothing is lost and the worker's
// claim on the request id keeps it from being doubled.
func TestTickCrashBetweenEmitAndMark(t *testing.T) {
	r := newRig(t, nil)
	r.manage("t1", 20)
	r.w.fail = true
	if _, err := r.sched.Tick(context.Background(), func() scheduler.LeaseState { return r.lease }); err == nil {
		t.Fatal("tick hid the write failure")
	}
	first := r.w.requests(t)
	r.w.reset()
	if res := r.tick(); res.Emitted != 20 {
		t.Fatalf("retry tick: %+v", res)
	}
	second := r.w.requests(t)
	a, b := map[string]bool{}, map[string]bool{}
	for _, q := range first {
		a[q.RequestID] = true
	}
	for _, q := range second {
		b[q.RequestID] = true
	}
	if len(a) != 20 || len(b) != 20 {
		t.Fatalf("distinct ids %d then %d", len(a), len(b))
	}
	for id := range a {
		if !b[id] {
			t.Errorf("request %s lost its id across the crash", id)
		}
	}
	if res := r.tick(); !res.Idle {
		t.Errorf("after recovery: %+v", res)
	}
}

func TestTickBudgetAndFairness(t *testing.T) {
	r := newRig(t, func(c *scheduler.Config) {
		c.Budget = ratelimit.Limit{Count: 20, Period: time.Second, Burst: 20}
		c.Horizon = time.Second
		c.BatchSize = 7
	})
	r.manage("big", 100)
	r.manage("small1", 5)
	r.manage("small2", 3)
	res := r.tick()
	if res.Emitted != 20 || !res.Remaining {
		t.Fatalf("tick: %+v", res)
	}
	per := map[string]int{}
	for _, q := range r.w.requests(t) {
		per[q.Tenant]++
	}
	if per["small1"] != 5 || per["small2"] != 3 || per["big"] != 12 {
		t.Errorf("not max-min fair: %v", per)
	}
	// The budget is spent: no emission until it refills.
	r.w.reset()
	if res := r.tick(); res.Emitted != 0 {
		t.Fatalf("over budget: %+v", res)
	}
	r.clk.Advance(500 * time.Millisecond)
	if res := r.tick(); res.Emitted != 10 {
		t.Fatalf("half a second later: %+v", res)
	}
	// Over any horizon the emissions stay within rate×horizon + capacity.
	total := 30
	for range 10 {
		r.clk.Advance(time.Second)
		total += r.tick().Emitted
	}
	if total != 108 {
		t.Errorf("emitted %d in all, want all 108 due", total)
	}
}

func TestTickRenewalSetsReplacesAndAdoptsExisting(t *testing.T) {
	r := newRig(t, nil)
	ctx := context.Background()
	ms := r.manage("t", 2)
	now := r.clk.Now()
	// ms[0]: its certificate expires soon (renew it, replacing it); ms[1]: a
	// valid certificate exists already (adopt it: plan, do not order).
	insertIssued(t, r.d, ms[0].Identity, "AAAA.AQ", now.Add(-80*24*time.Hour), now.Add(10*24*time.Hour))
	insertIssued(t, r.d, ms[1].Identity, "AAAA.Ag", now.Add(-time.Hour), now.Add(90*24*time.Hour))
	res := r.tick()
	if res.Emitted != 1 || res.Adopted != 1 {
		t.Fatalf("tick: %+v", res)
	}
	q := r.w.requests(t)[0]
	if q.Reason != events.ReasonRenewal || q.Replaces != "AAAA.AQ" || q.Priority != 3 {
		t.Errorf("renewal job %+v", q)
	}
	row, _ := r.inv.Get(ctx, ms[1].Identity)
	if row.Basis != scheduler.BasisLifetime || row.CertARIID != "AAAA.Ag" || !row.NextRenewalAt.After(now.Add(50*24*time.Hour)) {
		t.Errorf("adopted row %+v", row)
	}
}

// A deposed leader's marks are refused by the database: the lease has a new
// holder and token, and rows the new leader marked carry a higher token.
func TestTickStaleTokenRefused(t *testing.T) {
	r := newRig(t, nil)
	ms := r.manage("t", 10)
	ctx := context.Background()
	// The lease passes to another scheduler (r's lease expired meanwhile).
	if _, err := r.d.Pool().Exec(ctx, `UPDATE leases SET expires_at = now() WHERE name = $1`, scheduler.LeaseName); err != nil {
		t.Fatal(err)
	}
	other := newSchedulerOn(t, r, "standby")
	ls2, err := scheduler.NewLease(r.d, scheduler.LeaseName, "standby", time.Minute).TryAcquire(ctx)
	if err != nil || !ls2.Held || ls2.Token != r.lease.Token+1 {
		t.Fatalf("takeover: %+v %v", ls2, err)
	}
	// The old leader still believes it leads: its jobs go out but every
	// mark is refused, and it stops with ErrNotLeader.
	res, err := r.sched.Tick(ctx, func() scheduler.LeaseState { return r.lease })
	if !errors.Is(err, scheduler.ErrNotLeader) || res.Refused != 10 {
		t.Fatalf("stale tick: %+v %v", res, err)
	}
	stale := r.w.requests(t)
	row, _ := r.inv.Get(ctx, ms[0].Identity)
	if row.RequestID != "" {
		t.Fatalf("stale mark was recorded: %+v", row)
	}
	// The new leader emits the very same request ids and its marks stick.
	ls2.ValidUntil = time.Now().Add(100 * 365 * 24 * time.Hour)
	w2 := other.w
	res, err = other.sched.Tick(ctx, func() scheduler.LeaseState { return ls2 })
	if err != nil || res.Emitted != 10 {
		t.Fatalf("new leader tick: %+v %v", res, err)
	}
	ids := map[string]bool{}
	for _, q := range w2.requests(t) {
		ids[q.RequestID] = true
	}
	for _, q := range stale {
		if !ids[q.RequestID] {
			t.Errorf("stale leader emitted %s, which the new leader did not: a double", q.RequestID)
		}
	}
	// Even with the lease check passing, a lower token never overwrites a
	// row marked with a higher one.
	row, _ = r.inv.Get(ctx, ms[0].Identity)
	if row.FenceToken != ls2.Token {
		t.Errorf("fence token %d", row.FenceToken)
	}
}

// newSchedulerOn builds a second scheduler over r's database and clock.
func newSchedulerOn(t *testing.T, r *rig, holder string) *rig {
	r2 := &rig{t: t, d: r.d, clk: r.clk, w: &memWriter{}, inv: r.inv}
	var err error
	r2.sched, err = scheduler.New(scheduler.Config{DB: r.d, Writer: r2.w, Holder: holder, Clock: r.clk, Logger: quiet,
		Budget: ratelimit.Limit{Count: 1000, Period: time.Second, Burst: 1000}})
	if err != nil {
		t.Fatal(err)
	}
	return r2
}

func insertIssued(t testing.TB, d *db.DB, identity, ari string, nb, na time.Time) {
	t.Helper()
	storeIssued(t, d, identity, "req-"+uuid.NewString(), "1", ari, nb, na)
}

// storeIssued stores a certificate as a worker does (certstore.Complete)
// before it publishes cert_obtained for requestID.
func storeIssued(t testing.TB, d *db.DB, identity, requestID, serial, ari string, nb, na time.Time) {
	t.Helper()
	_, err := d.Pool().Exec(context.Background(), `INSERT INTO issued_certificates
		(id, identity, request_id, serial, ari_cert_id, not_before, not_after, chain_pem, sealed_key)
		VALUES ($1, $2, $3, $4, $5, $6, $7, '', '\x00')`, uuid.New(), identity, requestID, serial, ari, nb, na)
	if err != nil {
		t.Fatal(err)
	}
}

// storeClaim records requestID as claimed for identity, as a worker does
// (certstore.Claim) before it publishes cert_failed or issuance_deferred.
func storeClaim(t testing.TB, d *db.DB, requestID, identity string) {
	t.Helper()
	_, err := d.Pool().Exec(context.Background(), `INSERT INTO issuance_requests (request_id, identity, state, owner, owner_until, attempts)
		VALUES ($1, $2, 'ordering', 'worker-test', now() + interval '1 minute', 1)`, requestID, identity)
	if err != nil {
		t.Fatal(err)
	}
}

func headerOf(m kafka.Message, k string) string {
	for _, h := range m.Headers {
		if h.Key == k {
			return string(h.Value)
		}
	}
	return ""
}
