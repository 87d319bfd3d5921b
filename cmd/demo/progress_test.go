package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/events"
)

func TestBar(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    summary
		want string
	}{
		{"nothing settled", summary{total: 300}, strings.Repeat(".", 30)},
		// The make run report: 240 issued and 60 waiting is every
		// certificate settled, but not 240 issued of 300.
		{"240 issued, 60 waiting", summary{total: 300, obtained: 240, waiting: 60}, strings.Repeat("#", 24) + strings.Repeat("~", 6)},
		{"240 issued, nothing else yet", summary{total: 300, obtained: 240}, strings.Repeat("#", 24) + strings.Repeat(".", 6)},
		{"all issued", summary{total: 300, obtained: 300}, strings.Repeat("#", 30)},
		{"one short of all", summary{total: 300, obtained: 299}, strings.Repeat("#", 29) + "."},
		{"mixed", summary{total: 100, obtained: 50, waiting: 20, failed: 10}, strings.Repeat("#", 15) + strings.Repeat("~", 6) + strings.Repeat("x", 3) + strings.Repeat(".", 6)},
		{"rounding still fills at the total", summary{total: 7, obtained: 3, waiting: 2, failed: 2}, strings.Repeat("#", 12) + strings.Repeat("~", 9) + strings.Repeat("x", 9)},
		{"small total", summary{total: 3, obtained: 1}, strings.Repeat("#", 10) + strings.Repeat(".", 20)},
		{"zero total", summary{}, strings.Repeat(".", 30)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := bar(tc.s)
			if got != tc.want {
				t.Errorf("bar = %q, want %q", got, tc.want)
			}
			if len(got) != barWidth {
				t.Errorf("bar is %d wide, want %d", len(got), barWidth)
			}
		})
	}
}

func TestProgressLine(t *testing.T) {
	s := summary{total: 300, obtained: 240, waiting: 60, deferrals: 75, dlq: 5}
	got := progressLine(s, 60*time.Second)
	for _, want := range []string{"300/300 settled", "issued 240", "waiting 60", "failed 0", "75 deferral events", "5 dead-lettered", "4.0 issued/s", "1m0s"} {
		if !strings.Contains(got, want) {
			t.Errorf("progress line %q lacks %q", got, want)
		}
	}
}

func TestProgressWriter(t *testing.T) {
	type upd struct {
		s     summary
		at    time.Duration
		final bool
	}
	a := summary{total: 10}
	b := summary{total: 10, obtained: 4}
	c := summary{total: 10, obtained: 8, waiting: 2}
	for _, tc := range []struct {
		name      string
		tty       bool
		updates   []upd
		lines     int  // lines printed ('\n')
		crFrames  int  // '\r' frames
		wantFinal bool // the final state appears
	}{
		{"terminal: one frame per update, a newline at the end", true,
			[]upd{{a, 0, false}, {a, 250 * time.Millisecond, false}, {b, 500 * time.Millisecond, false}, {c, time.Second, true}},
			1, 4, true},
		{"not a terminal: no \\r, a line only when counts change", false,
			[]upd{{a, 0, false}, {a, 3 * time.Second, false}, {b, 6 * time.Second, false}, {b, 9 * time.Second, false}, {c, 12 * time.Second, true}},
			3, 0, true},
		{"not a terminal: changes closer than the gap wait, the final one is printed", false,
			[]upd{{a, 0, false}, {b, 250 * time.Millisecond, false}, {c, 500 * time.Millisecond, true}},
			2, 0, true},
		{"not a terminal: a final update that changes nothing prints nothing", false,
			[]upd{{c, 0, false}, {c, time.Second, true}},
			1, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			p := newProgressWriter(&buf, tc.tty)
			for _, u := range tc.updates {
				p.update(u.s, u.at, u.final)
			}
			out := buf.String()
			if n := strings.Count(out, "\n"); n != tc.lines {
				t.Errorf("%d lines, want %d:\n%s", n, tc.lines, out)
			}
			if n := strings.Count(out, "\r"); n != tc.crFrames {
				t.Errorf("%d \\r frames, want %d: %q", n, tc.crFrames, out)
			}
			if tc.wantFinal && !strings.Contains(out, counts(tc.updates[len(tc.updates)-1].s)) {
				t.Errorf("final state missing:\n%s", out)
			}
			if !tc.tty {
				for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
					if !strings.HasPrefix(l, "  [") {
						t.Errorf("line %q is not a progress line", l)
					}
				}
			}
		})
	}
}

func TestTracker(t *testing.T) {
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	sans := func(i int) []string { return []string{string(rune('a'+i)) + ".example.com"} }
	sent := map[string]time.Time{}
	for i := 0; i < 4; i++ {
		sent[events.Identity(sans(i))] = now
	}
	ev := func(p events.Payload) events.Event { return events.Event{Data: p} }
	obtained := func(i int) events.Event {
		return ev(&events.CertObtained{SANs: sans(i), Tenant: "alpha"})
	}
	deferred := func(i int, in time.Duration) events.Event {
		return ev(&events.IssuanceDeferred{SANs: sans(i), Limit: "NewOrdersPerAccount", RetryAt: now.Add(in)})
	}
	failed := func(i int, retryable bool) events.Event {
		return ev(&events.CertFailed{SANs: sans(i), Retryable: retryable})
	}

	tr := newTracker(sent)
	tr.observe(obtained(0), now.Add(2*time.Second))
	tr.observe(obtained(0), now.Add(3*time.Second)) // a duplicate counts once
	tr.observe(deferred(1, time.Hour), now)         // waiting
	tr.observe(deferred(2, time.Hour), now)         // waiting, then failed: failed only
	tr.observe(failed(2, false), now)
	tr.observe(deferred(3, time.Hour), now) // long, then short: in progress again
	tr.observe(deferred(3, 5*time.Second), now)
	tr.observe(failed(3, true), now) // retryable: still in progress
	tr.observe(obtained(9), now)     // not managed by the demo
	tr.observe(ev(&events.CertObtained{SANs: []string{"other.example.org"}}), now)
	tr.deadLetter()

	s := tr.summary()
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"issued", s.obtained, 1}, {"waiting", s.waiting, 1}, {"failed", s.failed, 1},
		{"settled", s.settled(), 3}, {"total", s.total, 4}, {"deferral events", s.deferrals, 4}, {"dead-lettered", s.dlq, 1},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if len(s.latencies) != 1 || s.latencies[0] != 2*time.Second {
		t.Errorf("latencies = %v, want [2s]", s.latencies)
	}

	// The waiting one is issued after all: it leaves waiting.
	tr.observe(obtained(1), now.Add(time.Minute))
	tr.observe(obtained(3), now.Add(time.Minute))
	s = tr.summary()
	if s.obtained != 3 || s.waiting != 0 || s.settled() != s.total {
		t.Errorf("after issuing the rest: issued %d, waiting %d, settled %d of %d", s.obtained, s.waiting, s.settled(), s.total)
	}
	if bar(s) != strings.Repeat("#", 22)+strings.Repeat("x", 8) {
		t.Errorf("bar = %q", bar(s))
	}
}

func TestSummaryExplainsWaiting(t *testing.T) {
	var buf bytes.Buffer
	summary{total: 300, obtained: 240, waiting: 60, byLimit: map[string]int{"NewOrdersPerAccount": 60}}.print(&buf, time.Minute)
	out := buf.String()
	for _, want := range []string{"waiting (deferred by a limit past the demo)", "60", "NewOrdersPerAccount 60", "ordered once the limit allows"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(legend(), "~ waiting") || !strings.Contains(legend(), "does not wait for it") {
		t.Errorf("legend does not explain waiting:\n%s", legend())
	}
}
