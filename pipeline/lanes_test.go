package pipeline

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/clock"
)

func TestLaneOf(t *testing.T) {
	for _, tc := range []struct {
		reason   events.Reason
		priority int
		want     Lane
	}{
		{events.ReasonReissue, 0, LaneEmergency},
		{events.ReasonRenewal, EmergencyPriority, LaneEmergency},
		{events.ReasonNew, 9, LaneEmergency},
		{events.ReasonNew, EmergencyPriority - 1, LaneNew},
		{events.ReasonRenewal, 5, LaneRenewal},
		{events.ReasonRenewal, 0, LaneRenewal},
	} {
		if got := LaneOf(&events.IssuanceRequest{Reason: tc.reason, Priority: tc.priority}); got != tc.want {
			t.Errorf("LaneOf(reason %s, priority %d) = %s, want %s", tc.reason, tc.priority, got, tc.want)
		}
	}
}

// slotQueue drives a one-slot scheduler: the test holds the slot, queues
// waiters, then lets them through one at a time and records who got it.
type slotQueue struct {
	t     *testing.T
	s     *slotScheduler
	hold  func()
	got   chan grant
	queue int
}

type grant struct {
	name    string
	release func()
}

func newSlotQueue(t *testing.T, p LanePolicy, c clock.Clock) *slotQueue {
	return slotQueueOn(t, newSlotScheduler(1, p, c))
}

// slotQueueOn is a slotQueue over s, a one-slot scheduler whose slot is free.
func slotQueueOn(t *testing.T, s *slotScheduler) *slotQueue {
	hold, _, err := s.Acquire(context.Background(), LaneRenewal, "test", 0)
	if err != nil {
		t.Fatal(err)
	}
	return &slotQueue{t: t, s: s, hold: hold, got: make(chan grant, 1024)}
}

// add queues a waiter named name and returns once it is waiting.
func (q *slotQueue) add(name string, lane Lane, tenant string, priority int) {
	q.queue++
	want := q.queue
	go func() {
		release, _, err := q.s.Acquire(context.Background(), lane, tenant, priority)
		if err != nil {
			q.got <- grant{name: "error: " + err.Error(), release: func() {}}
			return
		}
		q.got <- grant{name, release}
	}()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		n := 0
		for _, x := range q.s.Waiting() {
			n += x
		}
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			q.t.Fatalf("waiter %s never queued", name)
		}
	}
}

// orderAdvancing is order with fake advanced by every while each holds the slot.
func (q *slotQueue) orderAdvancing(n int, fake *clock.Fake, every time.Duration) []string {
	q.hold()
	var out []string
	for range n {
		g := <-q.got
		out = append(out, g.name)
		fake.Advance(every)
		g.release()
	}
	return out
}

// order releases the held slot and returns the names in the order they got it.
func (q *slotQueue) order(n int) []string {
	q.hold()
	var out []string
	for range n {
		select {
		case g := <-q.got:
			out = append(out, g.name)
			g.release()
		case <-time.After(10 * time.Second):
			q.t.Fatalf("only %d of %d waiters got the slot: %v", len(out), n, out)
		}
	}
	return out
}

func equalOrder(t *testing.T, got []string, want ...string) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("slots went to\n  %v\nwant\n  %v", got, want)
	}
}

func TestSlotsGoToLanesInOrder(t *testing.T) {
	q := newSlotQueue(t, DefaultLanePolicy, nil)
	q.add("r1", LaneRenewal, "a", 0)
	q.add("r2", LaneRenewal, "a", 0)
	q.add("n1", LaneNew, "a", 0)
	q.add("e1", LaneEmergency, "a", 0)
	q.add("n2", LaneNew, "a", 0)
	q.add("e2", LaneEmergency, "a", 0)
	equalOrder(t, q.order(6), "e1", "e2", "n1", "n2", "r1", "r2")
}

// With even usage, tenants take turns in arrival order.
func TestTenantsShareALaneRoundRobin(t *testing.T) {
	q := newSlotQueue(t, noCredit(DefaultLanePolicy), clock.NewFake(time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)))
	for i := range 5 {
		q.add(fmt.Sprintf("a%d", i), LaneNew, "a", 0)
	}
	q.add("b0", LaneNew, "b", 0)
	q.add("b1", LaneNew, "b", 0)
	q.add("c0", LaneNew, "c", 0)
	equalOrder(t, q.order(8), "a0", "b0", "c0", "a1", "b1", "a2", "a3", "a4")
}

// A tenant's usage is divided by its weight: weight 3 gets three slots to
// another's one.
func TestTenantWeights(t *testing.T) {
	p := noCredit(DefaultLanePolicy)
	p.Weight = func(tenant string) int {
		if tenant == "big" {
			return 3
		}
		return 0 // below 1 counts as 1
	}
	q := newSlotQueue(t, p, clock.NewFake(time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)))
	for i := range 6 {
		q.add(fmt.Sprintf("big%d", i), LaneRenewal, "big", 0)
	}
	for i := range 3 {
		q.add(fmt.Sprintf("s%d", i), LaneRenewal, "small", 0)
	}
	equalOrder(t, q.order(9), "big0", "s0", "big1", "big2", "s1", "big3", "big4", "big5", "s2")
}

// noCredit is p without the newcomer credit, to see the usage rule alone.
func noCredit(p LanePolicy) LanePolicy {
	p.NewcomerCredit = -1
	return p
}

// A tenant that starts waiting with no recent usage has its first
// NewcomerCredit slots ahead of a tenant that started just before it; one
// that comes back while its usage is still there has no credit again.
func TestNewcomerCredit(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC))
	p := DefaultLanePolicy
	p.NewcomerCredit = 5
	q := newSlotQueue(t, p, fake)
	for i := range 8 {
		q.add(fmt.Sprintf("a%d", i), LaneNew, "a", 0)
	}
	for i := range 8 {
		q.add(fmt.Sprintf("b%d", i), LaneNew, "b", 0)
	}
	// Both arrived new: a's credit goes first (arrival order), then b's,
	// then they alternate by usage.
	equalOrder(t, q.order(16), "a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3", "a4", "b4", "a5", "b5", "a6", "b6", "a7", "b7")

	s := newSlotScheduler(1, p, fake)
	serveFor(t, s, fake, LaneNew, "a", 3, 100*time.Millisecond) // a has been served a little
	q = slotQueueOn(t, s)
	for i := range 4 {
		q.add(fmt.Sprintf("a%d", i), LaneNew, "a", 0)
	}
	for i := range 7 {
		q.add(fmt.Sprintf("b%d", i), LaneNew, "b", 0)
	}
	// b: 5 on credit, then 3 more to even out a's 3; then by usage.
	equalOrder(t, q.order(11), "b0", "b1", "b2", "b3", "b4", "b5", "b6", "a0", "a1", "a2", "a3")
}

// serveFor has q grant n waiters of tenant in lane one at a time, the clock
// advancing every between grants, as a busy lane is served.
func serveFor(t *testing.T, s *slotScheduler, fake *clock.Fake, lane Lane, tenant string, n int, every time.Duration) {
	t.Helper()
	for range n {
		release, _, err := s.Acquire(context.Background(), lane, tenant, 0)
		if err != nil {
			t.Fatal(err)
		}
		fake.Advance(every)
		release()
	}
}

// A tenant arriving behind another's backlog is served ahead of it until
// their usage is even (about one half-life when the backlog's tenant had
// every slot), then they share; the backlog's tenant keeps getting slots.
func TestNewcomerIsServedAheadOfABacklog(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC))
	p := noCredit(DefaultLanePolicy) // half-life 10 s; the usage rule alone
	s := newSlotScheduler(1, p, fake)
	// A has had the lane to itself for a minute at 4 slots a second.
	serveFor(t, s, fake, LaneNew, "a", 240, 250*time.Millisecond)
	q := slotQueueOn(t, s)
	for i := range 60 {
		q.add(fmt.Sprintf("a%d", i), LaneNew, "a", 0)
	}
	for i := range 60 {
		q.add(fmt.Sprintf("b%d", i), LaneNew, "b", 0)
	}
	got := q.orderAdvancing(120, fake, 250*time.Millisecond)
	firstA := slices.IndexFunc(got, func(n string) bool { return n[0] == 'a' })
	// A's usage after a minute at 4/s is about 4*10/ln 2 = 58; B catches
	// up in about one half-life: some 40 slots at 4/s while A's decays.
	if firstA < 30 || firstA > 50 {
		t.Errorf("A's first slot after B arrived was slot %d, want B ahead for about one half-life (30-50 slots): %v", firstA, got)
	}
	// Then they share: in the next 40 slots each has about half.
	var bAfter int
	for _, n := range got[firstA : firstA+40] {
		if n[0] == 'b' {
			bAfter++
		}
	}
	if bAfter < 15 || bAfter > 25 {
		t.Errorf("after catching up B got %d of the next 40 slots, want about half: %v", bAfter, got)
	}
}

// A tenant left waiting StarveAfter goes first, however much it had before.
func TestStarvedTenantGoesFirst(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC))
	p := LanePolicy{StarveAfter: 5 * time.Second, ShareHalfLife: time.Hour}
	s := newSlotScheduler(1, p, fake)
	serveFor(t, s, fake, LaneNew, "heavy", 1000, time.Millisecond)
	q := slotQueueOn(t, s)
	q.add("heavy0", LaneNew, "heavy", 0)
	for i := range 20 {
		q.add(fmt.Sprintf("light%d", i), LaneNew, "light", 0)
	}
	got := q.orderAdvancing(21, fake, time.Second)
	if i := slices.Index(got, "heavy0"); i < 4 || i > 6 {
		t.Errorf("heavy waited %d slots of a second each, want it served once it waited StarveAfter (5 s): %v", i, got)
	}
}

// The rest of the fleet's usage counts: a tenant the other workers served
// much is served after one they did not, whatever this worker gave each.
func TestFleetUsageCounts(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC))
	q := newSlotQueue(t, noCredit(DefaultLanePolicy), fake)
	q.add("a0", LaneNew, "a", 0)
	q.add("b0", LaneNew, "b", 0)
	q.add("b1", LaneNew, "b", 0)
	q.add("b2", LaneNew, "b", 0)
	// Elsewhere in the fleet, A had 2 slots a second ago (2*2^-0.1 now).
	q.s.setRemote([]TenantUsage{{Lane: "new", Tenant: "a", Usage: 2, At: fake.Now().Add(-time.Second)}, {Lane: "renewal", Tenant: "b", Usage: 50, At: fake.Now()}})
	equalOrder(t, q.order(4), "b0", "b1", "a0", "b2")
	got := q.s.usageSnapshot()
	if len(got) != 3 { // the holder "test", a and b: local grants only
		t.Errorf("usage snapshot = %+v, want this worker's three tenants", got)
	}
}

func TestUsageHalvesEveryHalfLife(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	d := decayed{8, t0}
	for _, tc := range []struct {
		after time.Duration
		want  float64
	}{{0, 8}, {-time.Second, 8}, {10 * time.Second, 4}, {30 * time.Second, 1}, {5 * time.Second, 8 / math.Sqrt2}} {
		if got := d.value(t0.Add(tc.after), 10*time.Second); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("8 after %v = %v, want %v", tc.after, got, tc.want)
		}
	}
	var m usageMap
	for i := range 5000 {
		m.add(fmt.Sprint(i), 1, t0, time.Second)
	}
	for i := range 5000 { // a minute later the first 5,000 decayed to nothing
		m.add(fmt.Sprint("late", i), 1, t0.Add(time.Minute), time.Second)
	}
	if len(m.local) != 5000 {
		t.Errorf("%d usage entries kept, want the 5,000 that have not decayed to nothing", len(m.local))
	}
}

func TestPriorityInsideATenant(t *testing.T) {
	q := newSlotQueue(t, DefaultLanePolicy, nil)
	q.add("p1", LaneNew, "a", 1)
	q.add("p5", LaneNew, "a", 5)
	q.add("p3", LaneNew, "a", 3)
	q.add("p5b", LaneNew, "a", 5)
	equalOrder(t, q.order(4), "p5", "p5b", "p3", "p1")
}

// An incident's burst shorter than StarveAfter goes first entirely; a longer
// one leaves the lower lanes their reserved share.
func TestStarvedLaneGetsItsReservedShare(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC))
	p := LanePolicy{Reserved: [numLanes]float64{0, 0.2, 0.1}, StarveAfter: time.Minute}
	q := newSlotQueue(t, p, fake)
	for i := range 10 {
		q.add(fmt.Sprintf("r%d", i), LaneRenewal, "a", 0)
	}
	for i := range 150 {
		q.add(fmt.Sprintf("e%d", i), LaneEmergency, "a", 0)
	}
	// Not starved yet: emergencies only.
	q.hold()
	var first []string
	for range 60 {
		g := <-q.got
		first = append(first, g.name)
		g.release()
	}
	for _, name := range first {
		if name[0] != 'e' {
			t.Fatalf("a renewal got a slot before the renewal lane had waited StarveAfter: %v", first)
		}
	}
	// The 61st holds its slot while the clock moves.
	g := <-q.got
	if g.name[0] != 'e' {
		t.Fatalf("slot 61 went to %s", g.name)
	}
	fake.Advance(2 * time.Minute)
	g.release()
	var renewals int
	var rest []string
	for range 99 {
		g := <-q.got
		rest = append(rest, g.name)
		g.release()
		if g.name[0] == 'r' {
			renewals++
		}
	}
	// Reserved 10% of the recent grants: 10 of 99, all ten renewals.
	if renewals < 9 || renewals > 10 {
		t.Errorf("the starved renewal lane got %d of 99 slots, want its 10%% share (9-10): %v", renewals, rest)
	}
}

func TestWithdrawnWaiterHoldsNothing(t *testing.T) {
	s := newSlotScheduler(1, DefaultLanePolicy, nil)
	hold, _, err := s.Acquire(context.Background(), LaneNew, "a", 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, _, err := s.Acquire(ctx, LaneNew, "b", 0); errc <- err }()
	for s.Waiting()[LaneNew] != 1 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("Acquire returned no error after its context ended")
	}
	if w := s.Waiting(); w != [numLanes]int{} {
		t.Fatalf("withdrawn waiter still counted: %v", w)
	}
	hold()
	hold() // twice is harmless
	release, _, err := s.Acquire(context.Background(), LaneRenewal, "c", 0)
	if err != nil {
		t.Fatalf("the slot was not given back: %v", err)
	}
	release()
	if s.free != 1 {
		t.Fatalf("free slots = %d after every release, want 1", s.free)
	}
}

// Property, under the race detector: whatever the mix of lanes, tenants,
// priorities and cancellations, never more than the slots are held at once,
// every Acquire that is not cancelled returns, and all slots come back.
func TestSlotSchedulerConcurrent(t *testing.T) {
	const slots, jobs = 3, 400
	s := newSlotScheduler(slots, LanePolicy{StarveAfter: time.Millisecond}, nil)
	var inUse, maxInUse atomic.Int64
	var wg sync.WaitGroup
	var granted atomic.Int64
	for i := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 7))
			ctx := context.Background()
			if r.IntN(10) == 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, time.Duration(r.IntN(3))*time.Millisecond)
				defer cancel()
			}
			release, _, err := s.Acquire(ctx, Lane(r.IntN(int(numLanes))), fmt.Sprint("t", r.IntN(7)), r.IntN(10))
			if err != nil {
				return
			}
			granted.Add(1)
			n := inUse.Add(1)
			for {
				m := maxInUse.Load()
				if n <= m || maxInUse.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(time.Duration(r.IntN(200)) * time.Microsecond)
			inUse.Add(-1)
			release()
		}()
	}
	wg.Wait()
	if m := maxInUse.Load(); m > slots {
		t.Errorf("%d slots held at once, want at most %d", m, slots)
	}
	if granted.Load() < jobs*8/10 {
		t.Errorf("only %d of %d jobs got a slot", granted.Load(), jobs)
	}
	if s.free != slots || s.Waiting() != [numLanes]int{} {
		t.Errorf("after every job: %d free slots, waiting %v; want %d and none", s.free, s.Waiting(), slots)
	}
}
