package pipeline

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/clock"
)

// Lane is the class of work a request belongs to. A worker's order slots go
// to the lanes in their order (LaneEmergency first), except that a lower lane
// left waiting for LanePolicy.StarveAfter without a slot is owed its
// reserved share from then until its queue empties, so no lane is starved; a lane borrows every slot the lanes
// above it do not use. Inside a lane, a slot goes to the waiting tenant with
// the least recent usage for its weight (fairshare.go: slots granted, decayed
// with a half-life, counted fleet-wide when the workers share their usage),
// and inside a tenant by the request's priority, then in arrival order.
type Lane int

// The lanes, in the order they are served.
const (
	LaneEmergency Lane = iota // reason reissue, or priority >= EmergencyPriority
	LaneNew                   // reason new
	LaneRenewal               // reason renewal
	numLanes
)

// EmergencyPriority is the lowest request priority that puts a request in
// LaneEmergency whatever its reason.
const EmergencyPriority = 8

var laneNames = [numLanes]string{"emergency", "new", "renewal"}

func (l Lane) String() string {
	if l < 0 || l >= numLanes {
		return "unknown"
	}
	return laneNames[l]
}

// LaneOf is the lane of a request: the contract's way for a producer to ask
// for one is the reason and the priority.
func LaneOf(r *events.IssuanceRequest) Lane {
	switch {
	case r.Reason == events.ReasonReissue || r.Priority >= EmergencyPriority:
		return LaneEmergency
	case r.Reason == events.ReasonNew:
		return LaneNew
	default:
		return LaneRenewal
	}
}

// LanePolicy says how order slots are shared.
type LanePolicy struct {
	// Reserved is each lane's share of the slots it is owed once it has
	// waited StarveAfter without one (LaneEmergency's entry is unused: it is
	// never behind another lane). Zero values take DefaultLanePolicy's.
	Reserved [numLanes]float64
	// StarveAfter is how long a lane with waiting requests may go without a
	// slot before it is owed its reserved share. A burst in a higher lane
	// shorter than this (an incident's reissues at the fleet's rate) is served
	// before any lower-lane request.
	StarveAfter time.Duration
	// Weight is a tenant's share inside a lane relative to others (its
	// usage is divided by it); nil or a result below 1 means 1.
	Weight func(tenant string) int
	// ShareHalfLife is how fast a tenant's usage of a lane is forgotten
	// (fairshare.go): a tenant that had no slots for a while is served
	// ahead of one that had many, until their usage is even. Longer gives
	// a newcomer behind a backlog more; zero takes DefaultLanePolicy's.
	ShareHalfLife time.Duration
	// NewcomerCredit is how many slots of usage are not counted for a
	// tenant that starts waiting in a lane with no recent usage there
	// (below one slot), for as long as it keeps waiting: it is served
	// that many slots ahead of the tenants already using the lane, beyond
	// catching up with their usage (fairshare.go). Zero takes
	// DefaultLanePolicy's; negative means none.
	NewcomerCredit int
}

// DefaultLanePolicy: new issuance is owed 20% and renewals 10% of the slots
// once they have waited a minute.
// A tenant's usage halves every 10 s; a newcomer's first 10 slots go ahead.
var DefaultLanePolicy = LanePolicy{Reserved: [numLanes]float64{0, 0.2, 0.1}, StarveAfter: time.Minute, ShareHalfLife: 10 * time.Second, NewcomerCredit: 10}

func (p LanePolicy) withDefaults() LanePolicy {
	for i := range p.Reserved {
		if p.Reserved[i] <= 0 {
			p.Reserved[i] = DefaultLanePolicy.Reserved[i]
		}
	}
	if p.StarveAfter <= 0 {
		p.StarveAfter = DefaultLanePolicy.StarveAfter
	}
	if p.ShareHalfLife <= 0 {
		p.ShareHalfLife = DefaultLanePolicy.ShareHalfLife
	}
	switch {
	case p.NewcomerCredit == 0:
		p.NewcomerCredit = DefaultLanePolicy.NewcomerCredit
	case p.NewcomerCredit < 0:
		p.NewcomerCredit = 0
	}
	return p
}

// shareWindow is how many recent grants a lane's share is measured over.
const shareWindow = 50

// slotScheduler hands out a fixed number of order slots to waiting jobs by
// lane, tenant and priority. Safe for concurrent use.
type slotScheduler struct {
	policy LanePolicy
	clock  clock.Clock

	mu     sync.Mutex
	free   int
	seq    uint64
	lanes  [numLanes]laneQueue
	recent [shareWindow]Lane // ring of the last grants' lanes
	nRec   int               // grants recorded (saturates at shareWindow)
	next   int               // ring position of the next grant
}

type laneQueue struct {
	tenants    map[string]*tenantQueue
	ring       []string // tenants with waiters, in arrival order (ties go round it)
	pos        int      // ring position looked at first
	waiting    int
	lastServed time.Time // last grant, or when the lane last went from empty to waiting
	owed       bool      // starved: served at its reserved share until caught up
	usage      usageMap  // slots granted per tenant, decayed (fairshare.go)
}

type tenantQueue struct {
	waiters []*slotWaiter // by priority (highest first), then arrival
	since   time.Time     // last grant, or when the tenant started waiting
	credit  float64       // newcomer credit: slots of usage not counted while it waits (fairshare.go)
}

type slotWaiter struct {
	lane     Lane
	tenant   string
	priority int
	seq      uint64
	granted  chan struct{}
	done     bool // granted (closed) or withdrawn
	owed     bool // granted as its starved lane's reserved share
}

func newSlotScheduler(slots int, policy LanePolicy, c clock.Clock) *slotScheduler {
	s := &slotScheduler{policy: policy.withDefaults(), clock: clock.Or(c), free: slots}
	for i := range s.lanes {
		s.lanes[i].tenants = map[string]*tenantQueue{}
		s.lanes[i].usage = usageMap{}
	}
	return s
}

// Acquire waits for an order slot for a request of the lane, tenant and
// priority, or returns ctx's error (holding nothing). The returned release
// gives the slot back; calling it more than once is harmless. owed reports a
// slot given as a starved lane's reserved share.
func (s *slotScheduler) Acquire(ctx context.Context, lane Lane, tenant string, priority int) (release func(), owed bool, err error) {
	if lane < 0 || lane >= numLanes {
		lane = LaneRenewal
	}
	s.mu.Lock()
	w := &slotWaiter{lane: lane, tenant: tenant, priority: priority, seq: s.seq, granted: make(chan struct{})}
	s.seq++
	s.enqueue(w)
	s.dispatch()
	s.mu.Unlock()
	select {
	case <-w.granted:
		return sync.OnceFunc(s.release), w.owed, nil
	case <-ctx.Done():
		s.mu.Lock()
		defer s.mu.Unlock()
		if w.done { // granted while ctx ended: give the slot back
			s.free++
			s.dispatch()
		} else {
			s.withdraw(w)
		}
		return nil, false, ctx.Err()
	}
}

func (s *slotScheduler) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.free++
	s.dispatch()
}

// Waiting returns the number of jobs waiting for a slot in each lane.
func (s *slotScheduler) Waiting() [numLanes]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n [numLanes]int
	for i := range s.lanes {
		n[i] = s.lanes[i].waiting
	}
	return n
}

func (s *slotScheduler) enqueue(w *slotWaiter) {
	lq := &s.lanes[w.lane]
	if lq.waiting == 0 {
		lq.lastServed = s.clock.Now()
	}
	lq.waiting++
	tq := lq.tenants[w.tenant]
	if tq == nil {
		tq = &tenantQueue{since: s.clock.Now()}
		if lq.usage.at(w.tenant, s.clock.Now(), s.policy.ShareHalfLife) < 1 {
			tq.credit = float64(s.policy.NewcomerCredit)
		}
		lq.tenants[w.tenant] = tq
		lq.ring = append(lq.ring, w.tenant)
	}
	i := len(tq.waiters)
	for i > 0 && tq.waiters[i-1].priority < w.priority {
		i--
	}
	tq.waiters = append(tq.waiters, nil)
	copy(tq.waiters[i+1:], tq.waiters[i:])
	tq.waiters[i] = w
}

func (s *slotScheduler) withdraw(w *slotWaiter) {
	lq := &s.lanes[w.lane]
	tq := lq.tenants[w.tenant]
	for i, x := range tq.waiters {
		if x == w {
			tq.waiters = append(tq.waiters[:i], tq.waiters[i+1:]...)
			break
		}
	}
	w.done = true
	lq.waiting--
	if len(tq.waiters) == 0 {
		s.dropTenant(lq, w.tenant)
	}
}

func (s *slotScheduler) dropTenant(lq *laneQueue, tenant string) {
	delete(lq.tenants, tenant)
	for i, t := range lq.ring {
		if t == tenant {
			lq.ring = append(lq.ring[:i], lq.ring[i+1:]...)
			if lq.pos > i {
				lq.pos--
			}
			break
		}
	}
	if lq.pos >= len(lq.ring) {
		lq.pos = 0
	}
	if lq.waiting == 0 {
		lq.owed = false
	}
}

// dispatch grants free slots to waiters. Called with mu held.
func (s *slotScheduler) dispatch() {
	for s.free > 0 {
		lane, owed, ok := s.pickLane()
		if !ok {
			return
		}
		w := s.pickWaiter(lane)
		w.owed = owed
		s.free--
		w.done = true
		close(w.granted)
		s.recent[s.next] = lane
		s.next = (s.next + 1) % shareWindow
		s.nRec = min(s.nRec+1, shareWindow)
		s.lanes[lane].lastServed = s.clock.Now()
	}
}

// pickLane is the lane the next slot goes to: the highest owed lane, else the
// highest lane with waiters.
func (s *slotScheduler) pickLane() (lane Lane, owed, ok bool) {
	now := s.clock.Now()
	top := Lane(-1)
	for l := LaneEmergency; l < numLanes; l++ {
		if s.lanes[l].waiting > 0 {
			top = l
			break
		}
	}
	if top < 0 {
		return 0, false, false
	}
	for l := top + 1; l < numLanes; l++ {
		lq := &s.lanes[l]
		if lq.waiting == 0 {
			continue
		}
		if !lq.owed && now.Sub(lq.lastServed) >= s.policy.StarveAfter {
			lq.owed = true
		}
		if lq.owed {
			if s.share(l) < s.policy.Reserved[l] {
				return l, true, true
			}
		}
	}
	return top, false, true
}

// share is lane l's fraction of the recent grants.
func (s *slotScheduler) share(l Lane) float64 {
	if s.nRec == 0 {
		return 0
	}
	n := 0
	for i := 0; i < s.nRec; i++ {
		if s.recent[i] == l {
			n++
		}
	}
	return float64(n) / float64(s.nRec)
}

// pickWaiter takes the next waiter of a lane that has some: the first
// waiter of the tenant with the least usage for its weight (local and, when
// shared, the fleet's), except that a tenant left waiting StarveAfter without
// a slot goes first. Ties go round the ring in arrival order.
func (s *slotScheduler) pickWaiter(l Lane) *slotWaiter {
	lq := &s.lanes[l]
	now := s.clock.Now()
	best, bestUse := -1, 0.0
	for n := range lq.ring {
		i := (lq.pos + n) % len(lq.ring)
		tenant := lq.ring[i]
		tq := lq.tenants[tenant]
		if now.Sub(tq.since) >= s.policy.StarveAfter {
			best = i
			break
		}
		use := lq.usage.at(tenant, now, s.policy.ShareHalfLife)/float64(s.weight(tenant)) - tq.credit
		if best < 0 || use < bestUse {
			best, bestUse = i, use
		}
	}
	tenant := lq.ring[best]
	tq := lq.tenants[tenant]
	w := tq.waiters[0]
	tq.waiters = tq.waiters[1:]
	tq.since = now
	lq.waiting--
	lq.usage.add(tenant, 1, now, s.policy.ShareHalfLife)
	lq.pos = best + 1
	if len(tq.waiters) == 0 {
		s.dropTenant(lq, tenant)
	} else if lq.pos >= len(lq.ring) {
		lq.pos = 0
	}
	return w
}

func (s *slotScheduler) weight(tenant string) int {
	if s.policy.Weight == nil {
		return 1
	}
	return max(1, s.policy.Weight(tenant))
}

// acquireSlot waits for an order slot for req by its lane, tenant and
// priority; the returned release (idempotent) gives it back. owed: the slot
// is its starved lane's reserved share (it does not yield to higher lanes).
func (w *Worker) acquireSlot(ctx context.Context, req *events.IssuanceRequest) (release func(), owed bool, err error) {
	lane := LaneOf(req)
	w.cfg.Metrics.LaneWaiting.WithLabelValues(lane.String()).Inc()
	rel, owed, err := w.slots.Acquire(ctx, lane, req.Tenant, req.Priority)
	w.cfg.Metrics.LaneWaiting.WithLabelValues(lane.String()).Dec()
	if err != nil {
		return nil, false, err
	}
	w.cfg.Metrics.InFlight.Inc()
	return sync.OnceFunc(func() { rel(); w.cfg.Metrics.InFlight.Dec() }), owed, nil
}

// laneHold is how long a mark of a lane waiting for the fleet budget holds
// lower lanes back; a lane still denied marks again.
const laneHold = 2 * time.Second

// markWaiting tells the fleet that j's lane waits for the fleet budget
// (LaneSignals), at most once per laneHold/4 per worker and lane. Failures
// are logged: lanes across workers are best effort, never a reason to stop.
func (j *job) markWaiting(ctx context.Context) {
	w, lane := j.w, LaneOf(j.req)
	if w.cfg.LaneSignals == nil || lane == LaneRenewal {
		return
	}
	now := w.cfg.Clock.Now()
	if !w.laneMarks.due(lane, now, laneHold/4) {
		return
	}
	if err := w.cfg.LaneSignals.Mark(ctx, lane.String(), now.Add(laneHold)); err != nil {
		w.cfg.Logger.Warn("marking the lane as waiting for the fleet budget failed", append(j.log(), "lane", lane, "err", err)...)
	}
}

// higherLanesWaiting returns until when a lane above j's was marked waiting
// for the fleet budget (zero: none, or j's slot is its lane's owed share,
// or no LaneSignals). Read at most every 250 ms per worker.
func (j *job) higherLanesWaiting(ctx context.Context) time.Time {
	w, lane := j.w, LaneOf(j.req)
	if w.cfg.LaneSignals == nil || lane == LaneEmergency || j.owed {
		return time.Time{}
	}
	var higher []string
	for l := LaneEmergency; l < lane; l++ {
		higher = append(higher, l.String())
	}
	until, err := w.laneMarks.until(ctx, w.cfg.LaneSignals, higher, w.cfg.Clock.Now())
	if err != nil {
		w.cfg.Logger.Warn("reading the lanes waiting for the fleet budget failed; not holding back", append(j.log(), "err", err)...)
		return time.Time{}
	}
	if !until.After(w.cfg.Clock.Now()) {
		return time.Time{}
	}
	return until
}

// yieldToHigherLanes holds j back while a higher lane waits for the fleet
// budget somewhere in the fleet: in place up to MaxInlineWait, its order slot
// given back meanwhile (a higher lane's job of this worker may take it) and
// taken again after; beyond that it reports the time to defer j to.
func (j *job) yieldToHigherLanes(ctx context.Context) (deferTo time.Time, err error) {
	w := j.w
	start := w.cfg.Clock.Now()
	gaveBack := false
	for {
		until := j.higherLanesWaiting(ctx)
		if until.IsZero() {
			break
		}
		if until.Sub(start) > w.cfg.MaxInlineWait {
			deferTo = until
			break
		}
		if !gaveBack {
			j.releaseSlot()
			gaveBack = true
		}
		if err := clock.Sleep(ctx, until.Sub(w.cfg.Clock.Now())); err != nil {
			j.releaseSlot = func() {}
			return time.Time{}, err
		}
	}
	if gaveBack {
		if j.releaseSlot, j.owed, err = w.acquireSlot(ctx, j.req); err != nil {
			j.releaseSlot = func() {}
			return time.Time{}, err
		}
	}
	return deferTo, nil
}

// laneMarks caches, per worker, when each lane was last marked and the
// marks last read.
type laneMarks struct {
	mu        sync.Mutex
	marked    [numLanes]time.Time
	readAt    time.Time
	readFor   string
	readUntil time.Time
}

func (m *laneMarks) due(lane Lane, now time.Time, every time.Duration) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if now.Sub(m.marked[lane]) < every {
		return false
	}
	m.marked[lane] = now
	return true
}

func (m *laneMarks) until(ctx context.Context, s LaneSignals, lanes []string, now time.Time) (time.Time, error) {
	key := fmt.Sprint(lanes)
	m.mu.Lock()
	if m.readFor == key && now.Sub(m.readAt) < 250*time.Millisecond {
		u := m.readUntil
		m.mu.Unlock()
		return u, nil
	}
	m.mu.Unlock()
	u, err := s.Until(ctx, lanes)
	if err != nil {
		return time.Time{}, err
	}
	m.mu.Lock()
	m.readAt, m.readFor, m.readUntil = now, key, u
	m.mu.Unlock()
	return u, nil
}
