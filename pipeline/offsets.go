package pipeline

import (
	"sort"
	"sync"
)

// offsetTracker decides which offsets may be committed when jobs of one
// partition finish out of order: only the highest offset below which every
// fetched record is done. Committing further would lose the unfinished jobs
// below it if the worker died. Safe for concurrent use.
type offsetTracker struct {
	mu    sync.Mutex
	parts map[partitionKey]*partitionOffsets
}

type partitionKey struct {
	topic     string
	partition int
}

type partitionOffsets struct {
	pending   map[int64]bool // fetched offsets -> done
	committed int64          // next offset to commit from (-1: nothing yet)
}

func newOffsetTracker() *offsetTracker {
	return &offsetTracker{parts: map[partitionKey]*partitionOffsets{}}
}

// fetched records that a job for offset started.
func (t *offsetTracker) fetched(topic string, partition int, offset int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := partitionKey{topic, partition}
	p := t.parts[k]
	if p == nil {
		p = &partitionOffsets{pending: map[int64]bool{}, committed: -1}
		t.parts[k] = p
	}
	p.pending[offset] = false
}

// done marks offset finished and returns the offset to commit for its
// partition (the last of the contiguous finished prefix), or -1 when the
// prefix did not move.
func (t *offsetTracker) done(topic string, partition int, offset int64) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.parts[partitionKey{topic, partition}]
	if p == nil {
		return -1
	}
	if _, ok := p.pending[offset]; !ok {
		return -1
	}
	p.pending[offset] = true
	offs := make([]int64, 0, len(p.pending))
	for o := range p.pending {
		offs = append(offs, o)
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	last := int64(-1)
	for _, o := range offs {
		if !p.pending[o] {
			break
		}
		last = o
		delete(p.pending, o)
	}
	if last >= 0 {
		p.committed = last
	}
	return last
}

// inFlight is the number of fetched, unfinished records.
func (t *offsetTracker) inFlight() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, p := range t.parts {
		for _, d := range p.pending {
			if !d {
				n++
			}
		}
	}
	return n
}
