package pipeline

import (
	"context"
	"sync"
	"time"

	"github.com/certfleet/certfleet/certstore"
)

// ManyParker parks many records in one call: a Parking that implements it
// (*certstore.Store does) has the records a worker parks at once written in
// batches. Contract: ParkMany parks every record as Park does, all or
// nothing; a request id given twice keeps the last.
type ManyParker interface {
	ParkMany(ctx context.Context, ps []certstore.Parked) error
}

// maxParkBatch bounds one ParkMany.
const maxParkBatch = 500

// parkBatcher writes parks in batches by group commit: the first park
// starts a write, and every park that arrives while a write is in flight
// goes out in the next one. A lone park costs what it did; a worker
// reading past a backlog (thousands of records parked for their turn) makes
// one round trip per batch instead of one per record, which is what bounded
// how fast it reached the records behind the backlog.
type parkBatcher struct {
	store ManyParker

	mu      sync.Mutex
	queue   []parkCall
	running bool
}

type parkCall struct {
	p    certstore.Parked
	done chan error
}

// park parks p with the next batch and returns its outcome, or ctx's error
// (the park may still happen; parking again replaces it).
func (b *parkBatcher) park(ctx context.Context, p certstore.Parked) error {
	c := parkCall{p, make(chan error, 1)}
	b.mu.Lock()
	b.queue = append(b.queue, c)
	if !b.running {
		b.running = true
		go b.run()
	}
	b.mu.Unlock()
	select {
	case err := <-c.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *parkBatcher) run() {
	for {
		b.mu.Lock()
		n := min(len(b.queue), maxParkBatch)
		if n == 0 {
			b.running = false
			b.mu.Unlock()
			return
		}
		batch := b.queue[:n:n]
		b.queue = b.queue[n:]
		b.mu.Unlock()
		ps := make([]certstore.Parked, n)
		for i, c := range batch {
			ps[i] = c.p
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := b.store.ParkMany(ctx, ps)
		cancel()
		for _, c := range batch {
			c.done <- err
		}
	}
}
