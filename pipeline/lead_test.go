package pipeline

import (
	"testing"
	"time"
)

// The lead is a high percentile of the CA's latest order latencies, never
// below the floor nor above the cap, per CA, forgetting the oldest beyond
// the window.
func TestIssuanceLead(t *testing.T) {
	s := time.Second
	for _, tc := range []struct {
		name    string
		policy  LeadPolicy
		samples []time.Duration // observed at "ca", in order
		want    time.Duration
	}{
		{"no order measured: the floor", LeadPolicy{Floor: 2 * s}, nil, 2 * s},
		{"fast orders: the floor", LeadPolicy{Floor: 2 * s}, []time.Duration{s / 2, s}, 2 * s},
		{"the 99th percentile of 100", LeadPolicy{Floor: s}, seq(100, s), 99 * s},
		{"the median", LeadPolicy{Floor: s, Percentile: 0.5}, seq(100, s), 50 * s},
		{"slow orders: the cap", LeadPolicy{Floor: s, Cap: 30 * s}, seq(100, s), 30 * s},
		{"the window forgets the oldest", LeadPolicy{Floor: s, Window: 10, Percentile: 1}, append(seq(10, time.Minute), seq(10, s)...), 10 * s},
		{"off", LeadPolicy{Off: true}, seq(10, s), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLatencies(tc.policy)
			for _, d := range tc.samples {
				l.observe("ca", d)
			}
			l.observe("other", time.Hour)
			if got := l.lead("ca"); got != tc.want {
				t.Errorf("lead %v, want %v", got, tc.want)
			}
		})
	}
}

// seq is n latencies 1×d, 2×d, ... n×d.
func seq(n int, d time.Duration) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = time.Duration(i+1) * d
	}
	return out
}
