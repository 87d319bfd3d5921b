package pipeline

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// progress tracks the records a worker holds, so a liveness probe can tell a
// stuck worker from an idle or a patient one. A record is due from the later
// of its fetch and its not_before; the worker is stalled when a record has
// been due longer than the probe's patience and no record finished since it
// became due. Records waiting for their not_before are not due: a worker
// holding only those is waiting on purpose. The zero value is ready to use.
type progress struct {
	mu       sync.Mutex
	next     uint64
	due      map[uint64]time.Time // held records: when each is (or will be) due
	finished time.Time            // the last record that finished (zero: none yet)
}

// track registers m as held from now; the returned func marks it finished.
// It never fails: a record whose not_before cannot be read is due at once.
func (w *Worker) track(m kafka.Message) (finish func()) {
	p := &w.progress
	now := w.cfg.Clock.Now()
	at := now
	var peek struct {
		NotBefore *time.Time `json:"not_before"`
	}
	if json.Unmarshal(m.Value, &peek) == nil && peek.NotBefore != nil && peek.NotBefore.After(now) {
		at = *peek.NotBefore
	}
	p.mu.Lock()
	if p.due == nil {
		p.due = map[uint64]time.Time{}
	}
	p.next++
	id := p.next
	p.due[id] = at
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		delete(p.due, id)
		p.finished = w.cfg.Clock.Now()
	}
}

// Stalled returns an error describing the stall when a held record has been
// due for longer than patience and no record finished since it became due;
// nil otherwise (nothing held, only records waiting for their not_before, or
// records finishing). A liveness probe answers 503 on an error, so the
// orchestrator restarts the worker and its records go to another member.
// Safe for concurrent use with Run.
func (w *Worker) Stalled(patience time.Duration) error {
	p := &w.progress
	now := w.cfg.Clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	var due int
	var oldest time.Time
	for _, at := range p.due {
		if at.After(now) {
			continue
		}
		due++
		if oldest.IsZero() || at.Before(oldest) {
			oldest = at
		}
	}
	if due == 0 {
		return nil
	}
	since := oldest
	if p.finished.After(since) {
		since = p.finished
	}
	if now.Sub(since) <= patience {
		return nil
	}
	last := "none since the worker started"
	if !p.finished.IsZero() {
		last = "the last at " + p.finished.UTC().Format(time.RFC3339)
	}
	return fmt.Errorf("stalled: %d record(s) due, the oldest since %s, and no record finished for %s (%s)",
		due, oldest.UTC().Format(time.RFC3339), now.Sub(since).Round(time.Second), last)
}
