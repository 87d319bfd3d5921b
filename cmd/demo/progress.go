package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/certfleet/certfleet/events"
)

// waitHorizon is how far in the future a deferral must point for the demo
// to count the certificate as waiting (settled for the demo) rather than
// still in progress.
const waitHorizon = time.Minute

// tracker turns the events and dead-letter records the demo follows into
// per-certificate states. Every managed certificate ends the demo in one of
// three settled states: issued, failed (permanently) or waiting (deferred by
// a rate limit for longer than waitHorizon); the demo does not wait for the
// last ones.
type tracker struct {
	sent     map[string]time.Time // identity -> when it was put under management
	issued   map[string]bool
	failed   map[string]bool
	waiting  map[string]bool
	sum      summary
	issuedBy map[string]int
}

func newTracker(sent map[string]time.Time) *tracker {
	return &tracker{sent: sent, issued: map[string]bool{}, failed: map[string]bool{}, waiting: map[string]bool{},
		issuedBy: map[string]int{},
		sum:      summary{total: len(sent), byLimit: map[string]int{}}}
}

// deadLetter counts one record on the dead-letter topic.
func (t *tracker) deadLetter() { t.sum.dlq++ }

// observe applies one decoded event seen at now. Events about certificates
// the demo did not manage are ignored.
func (t *tracker) observe(e events.Event, now time.Time) {
	settled := func(id string) bool { return t.issued[id] || t.failed[id] }
	switch d := e.Data.(type) {
	case *events.CertObtained:
		id := events.Identity(d.SANs)
		if at, ok := t.sent[id]; ok && !settled(id) {
			t.issued[id] = true
			delete(t.waiting, id)
			t.issuedBy[d.Tenant]++
			t.sum.latencies = append(t.sum.latencies, now.Sub(at))
		}
	case *events.CertFailed:
		id := events.Identity(d.SANs)
		if _, ok := t.sent[id]; ok && !d.Retryable && !settled(id) {
			t.failed[id] = true
			delete(t.waiting, id)
		}
	case *events.IssuanceDeferred:
		id := events.Identity(d.SANs)
		if _, ok := t.sent[id]; !ok {
			return
		}
		t.sum.deferrals++
		t.sum.byLimit[d.Limit]++
		if settled(id) {
			return
		}
		// The latest deferral decides: a request re-queued for a few
		// seconds is still in progress, even if an earlier one was long.
		if d.RetryAt.Sub(now) > waitHorizon {
			t.waiting[id] = true
		} else {
			delete(t.waiting, id)
		}
	}
}

// summary returns the counts so far.
func (t *tracker) summary() summary {
	s := t.sum
	s.obtained, s.failed, s.waiting = len(t.issued), len(t.failed), len(t.waiting)
	s.issuedBy = t.issuedBy
	s.latencies = slices.Clone(t.sum.latencies)
	return s
}

type summary struct {
	total    int // certificates under management
	obtained int // issued
	failed   int // failed permanently
	waiting  int // deferred by a limit beyond waitHorizon; not waited for

	deferrals int            // issuance_deferred events (one certificate may have several)
	byLimit   map[string]int // deferral events by limit
	dlq       int            // records on the dead-letter topic
	latencies []time.Duration
	issuedBy  map[string]int
}

// settled is how many certificates reached a state the demo does not wait
// beyond: issued, failed or waiting.
func (s summary) settled() int { return s.obtained + s.failed + s.waiting }

const barWidth = 30

// bar draws settled certificates out of total: '#' issued, '~' waiting,
// 'x' failed, '.' not settled yet. Each part is scaled against the total, so
// the bar is full exactly when every certificate has settled.
func bar(s summary) string {
	total := max(s.total, 1)
	var b strings.Builder
	cum, drawn := 0, 0
	for _, part := range []struct {
		n  int
		ch string
	}{{s.obtained, "#"}, {s.waiting, "~"}, {s.failed, "x"}} {
		cum += part.n
		upto := min(barWidth*cum/total, barWidth)
		if cum >= total {
			upto = barWidth
		}
		if upto > drawn {
			b.WriteString(strings.Repeat(part.ch, upto-drawn))
			drawn = upto
		}
	}
	b.WriteString(strings.Repeat(".", barWidth-drawn))
	return b.String()
}

// counts is the part of a progress line that changes only when a
// certificate changes state.
func counts(s summary) string {
	return fmt.Sprintf("%d/%d settled: issued %d, waiting %d, failed %d; %d deferral events, %d dead-lettered",
		s.settled(), s.total, s.obtained, s.waiting, s.failed, s.deferrals, s.dlq)
}

// progressLine is one progress update.
func progressLine(s summary, elapsed time.Duration) string {
	rate := float64(s.obtained) / max(elapsed.Seconds(), 0.001)
	return fmt.Sprintf("[%s] %s (%.1f issued/s, %s)", bar(s), counts(s), rate, elapsed.Round(time.Second))
}

// legend explains the progress line; printed once before it.
func legend() string {
	return `    progress: # issued, ~ waiting, x failed, . not settled yet
    waiting: a rate limit deferred the certificate for more than a minute (here tenant gamma's
             override of 40 new orders per 3 hours). Its request sits on the retry topic with a
             later not_before and is ordered once the limit allows, by whichever worker runs then;
             the demo counts it as settled and does not wait for it.
`
}

// progressWriter shows progress updates. On a terminal it redraws one line
// in place ('\r'); otherwise (a file, a pipe, CI logs) it prints a new line
// per update, and only when a count changed, at most every minGap, plus
// the final state.
type progressWriter struct {
	w      io.Writer
	tty    bool
	minGap time.Duration

	last    string // counts of the last line printed (not a terminal)
	lastAt  time.Duration
	printed bool
	width   int // length of the last line drawn (terminal), to blank leftovers
}

func newProgressWriter(w io.Writer, tty bool) *progressWriter {
	return &progressWriter{w: w, tty: tty, minGap: 2 * time.Second}
}

// update shows s at elapsed; final marks the last update.
func (p *progressWriter) update(s summary, elapsed time.Duration, final bool) {
	line := progressLine(s, elapsed)
	if p.tty {
		pad := max(p.width-len(line), 0)
		fmt.Fprintf(p.w, "\r  %s%s", line, strings.Repeat(" ", pad))
		p.width = len(line)
		if final {
			fmt.Fprintln(p.w)
		}
		return
	}
	c := counts(s)
	changed, due := c != p.last, elapsed-p.lastAt >= p.minGap
	if p.printed && !(changed && (due || final)) {
		return
	}
	fmt.Fprintf(p.w, "  %s\n", line)
	p.last, p.lastAt, p.printed = c, elapsed, true
}

// isTerminal reports whether f is a character device (a terminal), without
// a dependency outside the standard library.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func (s summary) print(w io.Writer, elapsed time.Duration) {
	slices.Sort(s.latencies)
	pct := func(p float64) string {
		if len(s.latencies) == 0 {
			return "-"
		}
		return s.latencies[min(len(s.latencies)-1, int(p*float64(len(s.latencies))))].Round(time.Millisecond).String()
	}
	fmt.Fprintln(w, "\nsummary")
	rows := [][2]string{
		{"certificates managed", fmt.Sprint(s.total)},
		{"certificates issued", fmt.Sprint(s.obtained)},
		{"  by tenant", fmt.Sprintf("alpha %d, beta %d, gamma %d", s.issuedBy["alpha"], s.issuedBy["beta"], s.issuedBy["gamma"])},
		{"waiting (deferred by a limit past the demo)", fmt.Sprint(s.waiting)},
		{"deferral events, by limit", limitsText(s.byLimit)},
		{"failed", fmt.Sprint(s.failed)},
		{"dead-lettered records", fmt.Sprint(s.dlq)},
		{"CA orders (one per issued certificate)", fmt.Sprint(s.obtained)},
		{"time to certificate p50 / p99", pct(0.50) + " / " + pct(0.99)},
		{"demo wall time", elapsed.Round(100 * time.Millisecond).String()},
	}
	for _, r := range rows {
		fmt.Fprintf(w, "  %-44s %s\n", r[0], r[1])
	}
	if s.waiting > 0 {
		fmt.Fprintf(w, "  (waiting: deferred by a rate limit for more than a minute; ordered once the limit allows,\n"+
			"   by whichever issuer-worker runs then. A new make run within 3 h finds gamma's budget spent.)\n")
	}
}

func limitsText(m map[string]int) string {
	if len(m) == 0 {
		return "0"
	}
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s %d", k, v))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}
