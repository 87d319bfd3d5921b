package ratelimit

import (
	"context"
	"slices"
	"time"
)

// coalesceKey groups single-bucket spends that one statement can decide
// together: same bucket, same limit, same cost, same lead.
type coalesceKey struct {
	key   string
	limit Limit
	cost  int64
	lead  time.Duration
}

type spendQueue struct {
	busy    bool
	waiting []*spendWaiter
}

type spendWaiter struct {
	now  int64
	done chan spendResult // buffered: the runner never blocks on a caller gone away
}

type spendResult struct {
	d   Decision
	err error
}

// coalesceTimeout bounds one coalesced statement. Callers' own contexts
// bound their wait; the statement itself must not die with the first
// caller's context while others wait on it.
const coalesceTimeout = 10 * time.Second

// spendCoalesced spends r (ModeSpend) for this caller. While a statement for
// the same bucket, limit and cost is in flight, callers queue; the runner
// then decides the whole queue with one statement.
func (s *DBStore) spendCoalesced(ctx context.Context, now int64, r Request) (Decision, error) {
	ck := coalesceKey{r.Key, r.Limit, r.Cost, r.Lead}
	w := &spendWaiter{now: now, done: make(chan spendResult, 1)}
	s.mu.Lock()
	q := s.queues[ck]
	if q == nil {
		q = &spendQueue{}
		s.queues[ck] = q
	}
	q.waiting = append(q.waiting, w)
	start := !q.busy
	q.busy = true
	s.mu.Unlock()
	if start {
		go s.runQueue(context.WithoutCancel(ctx), ck, r, q)
	}
	select {
	case res := <-w.done:
		return res.d, res.err
	case <-ctx.Done():
		// The statement may still spend for this caller: the Store contract
		// makes an error an unknown outcome.
		return Decision{}, ctx.Err()
	}
}

// runQueue drains a queue, one statement per batch of waiters, until it is
// empty.
func (s *DBStore) runQueue(ctx context.Context, ck coalesceKey, r Request, q *spendQueue) {
	limit := max(s.MaxCoalesce, 1)
	for {
		s.mu.Lock()
		if len(q.waiting) == 0 {
			q.busy = false
			delete(s.queues, ck)
			s.mu.Unlock()
			return
		}
		n := min(len(q.waiting), limit)
		batch := q.waiting[:n:n]
		q.waiting = q.waiting[n:]
		s.mu.Unlock()

		now := batch[0].now
		for _, w := range batch {
			now = max(now, w.now)
		}
		cctx, cancel := context.WithTimeout(ctx, coalesceTimeout)
		ds, err := s.spendSingle(cctx, now, r, len(batch))
		cancel()
		for i, w := range batch {
			if err != nil {
				w.done <- spendResult{err: err}
			} else {
				w.done <- spendResult{d: ds[i]}
			}
		}
	}
}

// manyQueue holds multi-bucket calls waiting for a runner (guarded by
// DBStore.mu).
type manyQueue struct {
	running int
	waiting []*manyWaiter
}

type manyWaiter struct {
	call *manyCall
	done chan error // buffered: the runner never blocks on a caller gone away
}

// spendMany decides c (a multi-bucket spend or Book) in a round trip shared
// with the batches queued beside it.
func (s *DBStore) spendMany(ctx context.Context, c *manyCall) error {
	w := &manyWaiter{call: c, done: make(chan error, 1)}
	s.mu.Lock()
	s.many.waiting = append(s.many.waiting, w)
	start := s.many.running < max(s.ManyRunners, 1)
	if start {
		s.many.running++
	}
	s.mu.Unlock()
	if start {
		go s.runMany(context.WithoutCancel(ctx))
	}
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		// The round trip may still spend for this caller: the Store contract
		// makes an error an unknown outcome.
		return ctx.Err()
	}
}

// runMany decides queued calls, one round trip for up to MaxCoalesce of them
// with pairwise disjoint keys (taken in arrival order; a call sharing a key
// with one taken waits for the next round trip), until the queue is empty.
func (s *DBStore) runMany(ctx context.Context) {
	limit := max(s.MaxCoalesce, 1)
	for {
		s.mu.Lock()
		if len(s.many.waiting) == 0 {
			s.many.running--
			s.mu.Unlock()
			return
		}
		var take []*manyWaiter
		keys := map[string]bool{}
		rest := s.many.waiting[:0:0]
		for _, w := range s.many.waiting {
			if len(take) < limit && !slices.ContainsFunc(w.call.reqs, func(r Request) bool { return keys[r.Key] }) {
				take = append(take, w)
				for _, r := range w.call.reqs {
					keys[r.Key] = true
				}
				continue
			}
			rest = append(rest, w)
		}
		s.many.waiting = rest
		s.mu.Unlock()

		calls := make([]*manyCall, len(take))
		for i, w := range take {
			calls[i] = w.call
		}
		cctx, cancel := context.WithTimeout(ctx, coalesceTimeout)
		err := s.decideMany(cctx, calls)
		cancel()
		for _, w := range take {
			w.done <- err
		}
	}
}
