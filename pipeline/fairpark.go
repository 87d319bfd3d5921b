package pipeline

import (
	"context"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
)

// fairHold decides which fetched records a worker keeps in memory and which it
// parks, so that one tenant's backlog in one lane neither fills the worker's
// MaxPending nor keeps it from reading past that backlog to other tenants and
// higher lanes. Each (lane, tenant) may keep a share of the worker's capacity
// waiting for an order slot: capacity/(n+2) records when n other groups hold
// records (half of it for a group alone, the other half left for whoever
// shows up behind it), never fewer than minQuota. The rest are parked
// (durably, outside the worker's memory, their offsets committed) until about
// when their turn should come: each (lane, tenant) hands out successive return
// times spaced by the rate at which slots have recently been granted (the
// higher of its own and the worker's), so parked records come back in arrival
// order and a little early rather than late: early costs a second parking,
// late would leave slots idle. Safe for concurrent use.
type fairHold struct {
	capacity int
	minQuota int
	minWait  time.Duration // the earliest return of a parked record
	// quickWait: a record whose turn is this near at the rate its group is
	// being served is held beyond the share (see admit).
	quickWait time.Duration
	maxWait   time.Duration // the latest: a record parked this long is looked at again

	mu     sync.Mutex
	groups map[laneTenant]*holdState
	active int        // groups with held records
	total  int        // records held, all groups
	all    rateWindow // every grant of this worker
}

type laneTenant struct {
	lane   Lane
	tenant string
}

type holdState struct {
	held    int
	nextDue time.Time // return time handed to the last parked record
	grants  rateWindow
}

// defaultRate is the slots per second assumed before any was granted.
const defaultRate = 20

func newFairHold(capacity, minQuota int) *fairHold {
	return &fairHold{capacity: capacity, minQuota: max(1, minQuota), minWait: time.Second, maxWait: 10 * time.Minute, quickWait: 5 * time.Second,
		groups: map[laneTenant]*holdState{}}
}

// admit is asked for each fetched record before it waits for a slot. hold
// true: keep it, and call release when it stops waiting; false: park it until
// due. returning: the record was parked for its turn before; it may take
// up to half as much again as its group's share, so a record that came back
// a little early is held rather than parked again (each parking costs a
// retry record), while the records of a group that come back far too early
// still leave the worker room to read past them (twice the share would let
// a lone group fill it).
func (f *fairHold) admit(lane Lane, tenant string, now time.Time, returning bool) (hold bool, due time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := laneTenant{lane, tenant}
	q := f.groups[k]
	if q == nil {
		q = &holdState{}
		f.groups[k] = q
	}
	others := f.active
	if q.held > 0 {
		others--
	}
	share := max(f.minQuota, f.capacity/(others+2))
	observed := max(q.grants.rate(now), f.all.rate(now))
	// A group served fast enough that this record's turn comes within
	// quickWait is held beyond its share while the worker has room (a record
	// back from its turn's parking even without room: MaxPending still bounds
	// the worker): parking it would cost a retry record and win nobody more
	// than seconds.
	quick := observed > 0 && float64(q.held)/observed <= f.quickWait.Seconds() && (returning || f.total < f.capacity)
	if q.held < share || returning && q.held < share+share/2 || quick {
		if q.held == 0 {
			f.active++
		}
		q.held++
		f.total++
		return true, time.Time{}
	}
	rate := observed
	if rate == 0 {
		rate = defaultRate
	}
	per := time.Duration(float64(time.Second) / rate)
	due = now.Add(max(f.minWait, time.Duration(q.held)*per))
	if next := q.nextDue.Add(per); q.nextDue.After(now) && next.After(due) {
		due = next
	}
	if limit := now.Add(f.maxWait); due.After(limit) {
		due = limit
	}
	q.nextDue = due
	return false, due
}

// release records that a held record of (lane, tenant) stopped waiting: it
// got its slot (granted true) or gave up.
func (f *fairHold) release(lane Lane, tenant string, now time.Time, granted bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := laneTenant{lane, tenant}
	q := f.groups[k]
	if q == nil {
		return
	}
	if granted {
		q.grants.add(now)
		f.all.add(now)
	}
	q.held--
	f.total--
	if q.held == 0 {
		f.active--
		if !q.nextDue.After(now) {
			delete(f.groups, k) // idle: only groups with records held or parked are kept
		}
	}
	if len(f.groups) > 4*f.capacity {
		for k, q := range f.groups {
			if q.held == 0 && !q.nextDue.After(now) {
				delete(f.groups, k)
			}
		}
	}
}

// rateWindow measures events per second from the last rateSamples events
// inside rateSpan.
type rateWindow struct {
	times []time.Time // the most recent events, at most rateSamples
}

const (
	rateSamples = 256
	rateSpan    = time.Minute
)

func (r *rateWindow) add(t time.Time) {
	r.times = append(r.times, t)
	if len(r.times) > rateSamples {
		r.times = r.times[len(r.times)-rateSamples:]
	}
}

// rate is events per second over the recent ones inside rateSpan; 0 with
// fewer than two.
func (r *rateWindow) rate(now time.Time) float64 {
	n, i := 0, len(r.times)
	for i > 0 && now.Sub(r.times[i-1]) <= rateSpan {
		i--
		n++
	}
	if n < 2 {
		return 0
	}
	span := now.Sub(r.times[i]).Seconds()
	if span <= 0 {
		return 0
	}
	return float64(n) / span
}

// admitOrPark asks fairHold about a fetched request before it waits for an
// order slot. It returns hold true when the worker keeps the record (call
// the returned done when it stops waiting); false when the record was
// parked until its turn (or the park failed: err), the record finished.
func (w *Worker) admitOrPark(ctx context.Context, m kafka.Message, req *events.IssuanceRequest) (hold bool, done func(granted bool), err error) {
	lane := LaneOf(req)
	if w.cfg.Parking == nil {
		return true, func(bool) {}, nil
	}
	ok, due := w.hold.admit(lane, req.Tenant, w.cfg.Clock.Now(), m.Topic == w.cfg.Topics.Retry && parkedForTurn(m))
	if ok {
		return true, func(granted bool) { w.hold.release(lane, req.Tenant, w.cfg.Clock.Now(), granted) }, nil
	}
	w.cfg.Metrics.ParkedForTurn.WithLabelValues(lane.String()).Inc()
	msg := kafka.Message{Topic: w.cfg.Topics.Retry, Key: m.Key, Value: m.Value,
		Headers: append(append([]kafka.Header(nil), m.Headers...), kafka.Header{Key: HeaderParkedForTurn, Value: []byte("1")})}
	return false, nil, w.park(ctx, req.RequestID, events.Identity(req.SANs), msg, due)
}

// HeaderParkedForTurn marks a record the worker parked for its turn
// (fairHold): when it comes back it is held whatever its group's share.
// Only workers write the retry topic, so the header is trusted there and
// ignored on the requests topic.
const HeaderParkedForTurn = "certfleet_parked_for_turn"

func parkedForTurn(m kafka.Message) bool {
	for _, h := range m.Headers {
		if h.Key == HeaderParkedForTurn {
			return true
		}
	}
	return false
}
