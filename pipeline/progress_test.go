package pipeline

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/internal/clock"
)

// Stalled is the liveness probe's verdict: a record due for longer than the
// patience with nothing finished since it became due is a stall; idleness,
// records waiting for their not_before and records that keep finishing are
// not.
func TestStalled(t *testing.T) {
	const patience = 10 * time.Minute
	start := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	due := kafka.Message{Value: []byte(`{"request_id":"r1"}`)}
	later := func(d time.Duration) kafka.Message {
		b, _ := json.Marshal(map[string]any{"request_id": "r2", "not_before": start.Add(d)})
		return kafka.Message{Value: b}
	}
	garbage := kafka.Message{Value: []byte("not json")}
	type step struct {
		advance time.Duration
		hold    *kafka.Message // track this record
		finish  int            // finish the n-th tracked record (1-based), 0: none
		stalled bool           // the verdict after the step
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"idle worker", []step{{advance: time.Hour}}},
		{"due record, nothing finishes", []step{{hold: &due}, {advance: patience}, {advance: time.Second, stalled: true}}},
		{"unreadable record is due at once", []step{{hold: &garbage}, {advance: patience + time.Second, stalled: true}}},
		{"waiting for not_before", []step{{hold: ptr(later(2 * time.Hour))}, {advance: time.Hour}}},
		{"not_before passed, then stuck", []step{{hold: ptr(later(time.Hour))}, {advance: time.Hour + patience}, {advance: time.Second, stalled: true}}},
		{"records keep finishing", []step{
			{hold: &due}, {hold: &due}, {advance: patience - time.Second}, {finish: 1},
			{advance: patience - time.Second}, {advance: 2 * time.Second, stalled: true},
		}},
		{"stall ends when the record finishes", []step{{hold: &due}, {advance: 2 * patience, stalled: true}, {finish: 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := clock.NewFake(start)
			w := &Worker{cfg: Config{Clock: fake}}
			var finishers []func()
			for i, s := range tc.steps {
				fake.Advance(s.advance)
				if s.hold != nil {
					finishers = append(finishers, w.track(*s.hold))
				}
				if s.finish > 0 {
					finishers[s.finish-1]()
				}
				err := w.Stalled(patience)
				if (err != nil) != s.stalled {
					t.Fatalf("step %d: Stalled = %v; want stalled %v", i, err, s.stalled)
				}
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
