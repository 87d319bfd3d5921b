package pipeline

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/segmentio/kafka-go"
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

// blockingFetcher's CommitMessages waits for release, recording each call.
type blockingFetcher struct {
	fakeFetcher
	release chan struct{}
	calls   chan []kafka.Message
}

func (f *blockingFetcher) CommitMessages(ctx context.Context, msgs ...kafka.Message) error {
	f.calls <- msgs
	<-f.release
	return f.fakeFetcher.CommitMessages(ctx, msgs...)
}

// Offsets finished while a commit is in flight go out together in the next
// one, the highest per partition; nothing is committed twice or backwards,
// and close sends what is left.
func TestCommitterCoalesces(t *testing.T) {
	f := &blockingFetcher{release: make(chan struct{}), calls: make(chan []kafka.Message, 10)}
	c := newCommitter(f, slog.New(slog.DiscardHandler))
	c.commit("t", 0, 1)
	first := <-f.calls // in flight, blocked
	for off := int64(2); off <= 1000; off++ {
		c.commit("t", 0, off)
		c.commit("t", 1, off)
	}
	c.commit("t", 0, 500) // lower than pending: ignored
	close(f.release)
	second := <-f.calls
	c.commit("t", 0, 1000) // sent already
	c.commit("t", 1, 999)  // backwards: ignored
	c.close()
	if len(first) != 1 || first[0].Offset != 1 {
		t.Errorf("first commit %v, want offset 1 of partition 0", first)
	}
	slices.SortFunc(second, func(a, b kafka.Message) int { return a.Partition - b.Partition })
	if len(second) != 2 || second[0].Offset != 1000 || second[1].Offset != 1000 {
		t.Errorf("second commit %v, want offset 1000 of partitions 0 and 1 in one call", second)
	}
	select {
	case extra := <-f.calls:
		t.Errorf("a third commit %v: offset 1000 was committed already", extra)
	default:
	}
}
