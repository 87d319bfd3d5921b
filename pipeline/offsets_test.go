package pipeline

import (
	"math/rand/v2"
	"testing"
)

func TestOffsetTrackerTable(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fetched []int64
		done    []int64
		commits []int64 // result of each done call
	}{
		{"in order", []int64{5, 6, 7}, []int64{5, 6, 7}, []int64{5, 6, 7}},
		{"out of order waits for the gap", []int64{5, 6, 7}, []int64{7, 6, 5}, []int64{-1, -1, 7}},
		{"middle first", []int64{1, 2, 3}, []int64{2, 1, 3}, []int64{-1, 2, 3}},
		{"unknown offset ignored", []int64{1}, []int64{9, 1}, []int64{-1, 1}},
		{"double done ignored", []int64{1, 2}, []int64{1, 1, 2}, []int64{1, -1, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newOffsetTracker()
			for _, o := range tc.fetched {
				tr.fetched("t", 0, o)
			}
			for i, o := range tc.done {
				if got := tr.done("t", 0, o); got != tc.commits[i] {
					t.Fatalf("done(%d) = %d, want %d", o, got, tc.commits[i])
				}
			}
		})
	}
}

// Property: whatever order jobs finish in, a committed offset never passes
// an unfinished one, and once all are done the last offset is committed.
func TestOffsetTrackerProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 500; round++ {
		tr := newOffsetTracker()
		n := 1 + r.IntN(40)
		base := int64(r.IntN(1000))
		for i := 0; i < n; i++ {
			tr.fetched("t", 1, base+int64(i))
		}
		order := r.Perm(n)
		finished := map[int64]bool{}
		maxCommit := int64(-1)
		for _, i := range order {
			o := base + int64(i)
			finished[o] = true
			c := tr.done("t", 1, o)
			if c < 0 {
				continue
			}
			if c < maxCommit {
				t.Fatalf("commit went backwards: %d after %d", c, maxCommit)
			}
			maxCommit = c
			for x := base; x <= c; x++ {
				if !finished[x] {
					t.Fatalf("round %d: committed %d while %d unfinished", round, c, x)
				}
			}
		}
		if maxCommit != base+int64(n-1) {
			t.Fatalf("round %d: final commit %d, want %d", round, maxCommit, base+int64(n-1))
		}
		if tr.inFlight() != 0 {
			t.Fatalf("in flight %d after all done", tr.inFlight())
		}
	}
}
