package pipeline

import (
	"sync"
	"time"
)

// fairHold decides which fetched records a worker keeps in memory and which it
// parks, so one tenant's backlog in one lane can neither fill the worker's
// MaxPending nor keep it from reading past that backlog to other tenants and
// higher lanes. A worker keeps at most quota records per (lane, tenant) that
// wait for an order slot; the rest are parked (durably, outside its memory,
// their offsets committed) until the time their turn should come: each
// (lane, tenant) gets successive return times spaced by the rate at which its
// held records have recently been getting slots, so parked records come back
// about when they can be served, in arrival order, not all at once.
// Safe for concurrent use.
type fairHold struct {
	quota   int
	minWait time.Duration // the earliest return of a parked record
	maxWait time.Duration // the latest: a record parked this long is looked at again

	mu     sync.Mutex
	queues map[laneTenant]*holdState
}

type laneTenant struct {
	lane   Lane
	tenant string
}

type holdState struct {
	held     int
	nextDue  time.Time // return time handed to the last parked record
	grants   []time.Time
	lastSeen time.Time
}

// rateWindow is how far back a (lane, tenant)'s slot rate is measured.
const rateWindow = time.Minute

func newFairHold(quota int) *fairHold {
	return &fairHold{quota: quota, minWait: time.Second, maxWait: 10 * time.Minute, queues: map[laneTenant]*holdState{}}
}

// admit is asked for each fetched record before it waits for a slot. hold
// true: keep it (call done when it no longer waits); false: park it until due.
func (f *fairHold) admit(lane Lane, tenant string, now time.Time) (hold bool, due time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := laneTenant{lane, tenant}
	q := f.queues[k]
	if q == nil {
		q = &holdState{}
		f.queues[k] = q
	}
	q.lastSeen = now
	if q.held < f.quota {
		q.held++
		return true, time.Time{}
	}
	// The held records are served at about rate; this one's turn comes after
	// theirs and after every record already parked before it.
	per := time.Duration(float64(time.Second) / q.rate(now))
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

// granted records that a held record of (lane, tenant) got its slot.
func (f *fairHold) granted(lane Lane, tenant string, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if q := f.queues[laneTenant{lane, tenant}]; q != nil {
		q.grants = append(q.grants, now)
		if len(q.grants) > 256 {
			q.grants = q.grants[len(q.grants)-256:]
		}
	}
}

// done records that a held record of (lane, tenant) no longer waits.
func (f *fairHold) done(lane Lane, tenant string, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := laneTenant{lane, tenant}
	q := f.queues[k]
	if q == nil {
		return
	}
	q.held--
	// Forget idle queues so the map holds only tenants seen lately.
	if q.held <= 0 && !q.nextDue.After(now) && now.Sub(q.lastSeen) > rateWindow {
		delete(f.queues, k)
	}
	if len(f.queues) > 4096 {
		for k, q := range f.queues {
			if q.held <= 0 && !q.nextDue.After(now) {
				delete(f.queues, k)
			}
		}
	}
}

// rate is the slots per second this (lane, tenant) got over the last
// rateWindow; with none seen yet, one per second.
func (q *holdState) rate(now time.Time) float64 {
	n := 0
	var first time.Time
	for _, t := range q.grants {
		if now.Sub(t) <= rateWindow {
			if n == 0 {
				first = t
			}
			n++
		}
	}
	if n < 2 {
		return 1
	}
	span := now.Sub(first).Seconds()
	if span <= 0 {
		return 1
	}
	return max(float64(n)/span, 0.01)
}
