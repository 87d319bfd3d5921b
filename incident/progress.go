package incident

import (
	"fmt"
	"time"

	"github.com/certfleet/certfleet/events"
)

// Tracker follows a batch of requests by their outcomes on the events
// topic: obtained, failed for good, deferred (the latest deferral of each
// request still open). Not safe for concurrent use; feed it from one
// goroutine.
type Tracker struct {
	start    time.Time
	open     map[string]bool // request id -> not ended yet
	deferred map[string]time.Time
	total    int
	obtained int
	failed   int
	last     time.Time // the latest end
}

// NewTracker tracks ids from start.
func NewTracker(ids []string, start time.Time) *Tracker {
	t := &Tracker{start: start, open: make(map[string]bool, len(ids)), deferred: map[string]time.Time{}}
	for _, id := range ids {
		if !t.open[id] {
			t.open[id] = true
			t.total++
		}
	}
	return t
}

// Observe takes one event seen at at and reports whether it changed the
// progress (an event about another request, or a repeat, does not).
func (t *Tracker) Observe(e events.Event, at time.Time) bool {
	switch d := e.Data.(type) {
	case *events.CertObtained:
		return t.end(d.RequestID, at, false)
	case *events.CertFailed:
		if !d.Retryable {
			return t.end(d.RequestID, at, true)
		}
	case *events.IssuanceDeferred:
		if t.open[d.RequestID] {
			t.deferred[d.RequestID] = d.RetryAt
			return true
		}
	}
	return false
}

func (t *Tracker) end(id string, at time.Time, failed bool) bool {
	if !t.open[id] {
		return false
	}
	delete(t.open, id)
	delete(t.deferred, id)
	if failed {
		t.failed++
	} else {
		t.obtained++
	}
	t.last = at
	return true
}

// Snapshot is the progress at one time.
type Snapshot struct {
	Total, Obtained, Failed, Deferred int
	Elapsed                           time.Duration
	// Rate is requests ended per second so far; ETA the time left at that
	// rate (zero when nothing has ended yet, or when done).
	Rate float64
	ETA  time.Duration
	Done bool
}

// Snapshot returns the progress at now.
func (t *Tracker) Snapshot(now time.Time) Snapshot {
	s := Snapshot{Total: t.total, Obtained: t.obtained, Failed: t.failed, Deferred: len(t.deferred),
		Elapsed: now.Sub(t.start), Done: len(t.open) == 0}
	ended := t.obtained + t.failed
	if ended > 0 && s.Elapsed > 0 {
		s.Rate = float64(ended) / s.Elapsed.Seconds()
		if !s.Done {
			s.ETA = time.Duration(float64(len(t.open)) / s.Rate * float64(time.Second))
		}
	}
	return s
}

// String is one progress line: "412/2000 obtained, 3 failed, 20 deferred;
// 9.8/s; 2m41s left".
func (s Snapshot) String() string {
	line := fmt.Sprintf("%d/%d obtained, %d failed, %d deferred; %s elapsed", s.Obtained, s.Total, s.Failed, s.Deferred, s.Elapsed.Round(time.Second))
	switch {
	case s.Done:
		return line + "; done"
	case s.Rate > 0:
		return line + fmt.Sprintf("; %.1f/s; about %s left", s.Rate, s.ETA.Round(time.Second))
	}
	return line
}
