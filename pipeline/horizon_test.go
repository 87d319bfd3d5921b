package pipeline

import (
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/events"
)

// A request whose not_before is beyond events' bound (year 9999 decodes: the
// schema cannot tell the time) is dead-lettered at once on the worker's
// clock, naming the field and the bound, instead of holding its record and
// its partition's commits until then. One within the bound is not refused.
func TestNotBeforeBeyondBoundDeadLettered(t *testing.T) {
	for _, at := range []time.Time{time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC), t0.Add(events.MaxNotBeforeAhead + time.Second)} {
		h := newHarness(t)
		req := newRequest("req-far", "www.example.com")
		req.NotBefore = at
		r := runOne(t, h, record(t, h.topics.Requests, 0, 0, req))
		checkWant(t, h, r, want{dlq: 1})
		if dl := h.writer.on(h.topics.DLQ); len(dl) == 1 {
			d, _ := events.ReadDeadLetter(dl[0])
			if want := "not_before: invalid value: " + at.Format(time.RFC3339) + " is more than 90 days after now"; !strings.Contains(d.Reason, want) {
				t.Errorf("reason %q, want it to contain %q", d.Reason, want)
			}
		}
	}
}
