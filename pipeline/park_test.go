package pipeline

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/ratelimit"
)

// fakeParking is certstore's parking in memory: one row per request id,
// the bookings on fakeClaims' rows. fail, when set, makes the named call
// fail (a database that is down).
type fakeParking struct {
	mu     sync.Mutex
	claims *fakeClaims
	rows   map[string]certstore.Parked
	parks  int
	fail   map[string]bool // "Park", "ReleaseBooked"
}

func newFakeParking(c *fakeClaims) *fakeParking {
	return &fakeParking{claims: c, rows: map[string]certstore.Parked{}, fail: map[string]bool{}}
}

func (f *fakeParking) Park(_ context.Context, p certstore.Parked) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail["Park"] {
		return errors.New("fake database: connection refused")
	}
	f.parks++
	f.rows[p.RequestID] = p
	return nil
}

func (f *fakeParking) ReleaseBooked(_ context.Context, id, owner string, b certstore.Booking) error {
	f.mu.Lock()
	fail := f.fail["ReleaseBooked"]
	f.mu.Unlock()
	if fail {
		return errors.New("fake database: connection refused")
	}
	c := f.claims
	c.mu.Lock()
	defer c.mu.Unlock()
	row := c.rows[id]
	if row == nil || row.owner != owner {
		return certstore.ErrNotOwner
	}
	row.owner, row.state, row.booking = "", certstore.StateReleased, &b
	return nil
}

func (f *fakeParking) setFail(call string, v bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[call] = v
}

// due takes the parked records due at now, oldest first, as retry-topic
// records from offset on (what ParkRelay writes).
func (f *fakeParking) due(t *testing.T, now time.Time, topic string, offset int64) []kafka.Message {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	var ps []certstore.Parked
	for id, p := range f.rows {
		if !p.Due.After(now) {
			ps = append(ps, p)
			delete(f.rows, id)
		}
	}
	slices.SortFunc(ps, func(a, b certstore.Parked) int { return a.Due.Compare(b.Due) })
	var out []kafka.Message
	for _, p := range ps {
		m, err := decodeStored(p.Record, topic)
		if err != nil {
			t.Fatal(err)
		}
		m.Partition, m.Offset = 0, offset
		offset++
		out = append(out, m)
	}
	return out
}

// countingBooker is the real limiter, counting its calls.
type countingBooker struct {
	*ratelimit.Limiter
	books, spends atomic.Int64
}

func (c *countingBooker) Book(ctx context.Context, txns []ratelimit.Transaction, horizon time.Duration) (ratelimit.Result, error) {
	c.books.Add(1)
	return c.Limiter.Book(ctx, txns, horizon)
}

func (c *countingBooker) Spend(ctx context.Context, txns []ratelimit.Transaction) (ratelimit.Result, error) {
	c.spends.Add(1)
	return c.Limiter.Spend(ctx, txns)
}

// queueHarness is a worker whose limits are real (ratelimit over a memory
// store, the harness's fake clock): CertificatesPerDomain 1 per hour, burst
// 1, for the test CA; parking and claims fake.
func queueHarness(t *testing.T) (*harness, *fakeParking, *countingBooker, *Worker) {
	h := newHarness(t)
	limits := ratelimit.LetsEncryptLimits()
	limits[ratelimit.CertificatesPerDomain] = ratelimit.LimitConfig{Limit: ratelimit.Limit{Count: 1, Period: time.Hour, Burst: 1}}
	limits[ratelimit.FleetOrdersPerSecond] = ratelimit.LimitConfig{Limit: ratelimit.Limit{Count: 1000, Period: time.Second, Burst: 1000}}
	cat, err := ratelimit.NewCatalogue(ratelimit.CA{ID: "pebble", Directory: "https://ca.test/dir", Limits: limits})
	if err != nil {
		t.Fatal(err)
	}
	b := &countingBooker{Limiter: ratelimit.NewLimiter(ratelimit.LimiterConfig{Store: ratelimit.NewMemStore(), Catalogue: cat, Clock: h.clock})}
	p := newFakeParking(h.claims)
	w := h.worker(func(c *Config) {
		c.Tokens, c.Booker, c.Limits, c.Parking = b, b, cat, p
		c.Concurrency, c.MaxInlineWait, c.Lead = 1, time.Second, LeadPolicy{Off: true}
	})
	return h, p, b, w
}

// Five requests under one registered domain whose limit admits one an
// hour: the first is ordered, the other four book the next four slots in
// arrival order (distinct, an hour apart), are parked until them (nothing on
// the retry topic, their records committed) and, relayed when due, each
// orders at its first wake-up without spending again.
func TestBookedQueueDrainsInOrder(t *testing.T) {
	h, parking, booker, w := queueHarness(t)
	var msgs []kafka.Message
	for i := range 5 {
		msgs = append(msgs, record(t, h.topics.Requests, 0, int64(i), newRequest(string(rune('a'+i)), string(rune('a'+i))+".example.com")))
	}
	rr := h.run(w, 5*time.Second, msgs...)
	rr.waitIdle()
	rr.stop()
	if got := rr.f.committed(0); len(got) == 0 || got[len(got)-1] != 4 {
		t.Fatalf("commits %v, want every record committed (offset 4 last)", got)
	}
	evs := decoded(t, h.writer.on(h.topics.Events))
	var slots []time.Time
	for _, ev := range evs {
		if d, ok := ev.Data.(*events.IssuanceDeferred); ok {
			slots = append(slots, d.RetryAt)
		}
	}
	want := []time.Time{t0.Add(time.Hour), t0.Add(2 * time.Hour), t0.Add(3 * time.Hour), t0.Add(4 * time.Hour)}
	if !slices.EqualFunc(slots, want, time.Time.Equal) {
		t.Errorf("booked slots %v, want %v (distinct, in arrival order, one interval apart)", slots, want)
	}
	if n := len(h.writer.on(h.topics.Retry)); n != 0 {
		t.Errorf("%d records on the retry topic while they wait, want 0 (parked)", n)
	}
	if len(parking.rows) != 4 {
		t.Fatalf("%d requests parked, want 4", len(parking.rows))
	}

	// The slots come: the relay writes the parked records, each is claimed
	// with its booking and ordered, spending nothing more.
	h.clock.Advance(4 * time.Hour)
	relayed := parking.due(t, h.clock.Now(), h.topics.Retry, 0)
	w2 := h.worker(func(c *Config) {
		c.Tokens, c.Booker, c.Limits, c.Parking = booker, booker, w.cfg.Limits, parking
		c.Concurrency, c.MaxInlineWait, c.Lead = 1, time.Second, LeadPolicy{Off: true}
	})
	rr2 := h.run(w2, 5*time.Second, relayed...)
	rr2.waitIdle()
	rr2.stop()
	obtained := 0
	for _, ev := range decoded(t, h.writer.on(h.topics.Events)) {
		if ev.Type() == events.TypeCertObtained {
			obtained++
		}
	}
	if obtained != 5 || h.issuer.calls.Load() != 5 {
		t.Errorf("%d obtained in %d orders, want 5 in 5", obtained, h.issuer.calls.Load())
	}
	if b, s := booker.books.Load(), booker.spends.Load(); b != 5 || s != 0 {
		t.Errorf("%d bookings and %d spends, want 5 and 0: a booking is redeemed without spending again", b, s)
	}
	if len(relayed) != 4 || len(parking.rows) != 0 {
		t.Errorf("%d records relayed, %d still parked; want 4 and 0", len(relayed), len(parking.rows))
	}
}

// A worker that stops (crashes) at each step of a deferral, the step's
// store unreachable until then, loses nothing: its record is not
// committed, and the next delivery of it ends parked with its booking or
// booked again; once due, the request is obtained exactly once.
func TestDeferralCrashBetweenSteps(t *testing.T) {
	for _, step := range []string{"Park", "ReleaseBooked"} {
		t.Run("stopped while "+step+" fails", func(t *testing.T) {
			h, parking, booker, w := queueHarness(t)
			first := record(t, h.topics.Requests, 0, 0, newRequest("a", "a.example.com"))
			m := record(t, h.topics.Requests, 0, 1, newRequest("b", "b.example.com"))
			// "a" takes the domain's only token; "b" must wait for a slot.
			rr := h.run(w, 5*time.Second, first)
			rr.waitIdle()
			rr.stop()
			parking.setFail(step, true)
			rr = h.run(w, 100*time.Millisecond, m)
			rr.waitFor("the job to reach the failing step", func() bool { c, _, _, _ := h.claims.counts(); return c > 1 })
			time.Sleep(50 * time.Millisecond) // let the job retry the failing call
			rr.stop()
			if got := rr.f.committed(0); len(got) != 0 {
				t.Fatalf("record committed (%v) although the deferral did not finish", got)
			}
			parking.setFail(step, false)
			// Redelivered (after the claim's lease, as after a crash).
			h.clock.Advance(6 * time.Minute)
			rr = h.run(w, 5*time.Second, m)
			rr.waitIdle()
			rr.stop()
			if got := rr.f.committed(0); !slices.Equal(got, []int64{1}) {
				t.Fatalf("redelivered record: commits %v, want [1]", got)
			}
			h.clock.Advance(3 * time.Hour)
			relayed := parking.due(t, h.clock.Now(), h.topics.Retry, 0)
			if len(relayed) != 1 {
				t.Fatalf("%d records relayed, want 1 (the request parked once, a crashed park replaced)", len(relayed))
			}
			rr = h.run(w, 5*time.Second, relayed...)
			rr.waitIdle()
			rr.stop()
			// Duplicates of an outcome carry one event id (at least once).
			obtained := map[string]map[string]bool{}
			for _, ev := range decoded(t, h.writer.on(h.topics.Events)) {
				if o, ok := ev.Data.(*events.CertObtained); ok {
					if obtained[o.RequestID] == nil {
						obtained[o.RequestID] = map[string]bool{}
					}
					obtained[o.RequestID][ev.ID] = true
				}
			}
			if len(obtained["a"]) != 1 || len(obtained["b"]) != 1 || h.issuer.calls.Load() != 2 {
				t.Errorf("obtained %v in %d orders, want a and b once each in 2", obtained, h.issuer.calls.Load())
			}
			if n := booker.spends.Load(); n != 0 {
				t.Errorf("%d spends outside Book", n)
			}
		})
	}
}
