package ratelimit

import (
	"context"
	"sync"
	"time"
)

// MemStore is a Store in process memory, for tests and single-process use.
// Buckets live until the process ends.
type MemStore struct {
	mu      sync.Mutex
	buckets map[string]*memBucket
}

type memBucket struct {
	tat, penaltyUntil int64
}

var _ Store = (*MemStore)(nil)

// NewMemStore returns an empty in-memory store.
func NewMemStore() *MemStore { return &MemStore{buckets: map[string]*memBucket{}} }

// Spend implements Store.
func (s *MemStore) Spend(ctx context.Context, now time.Time, reqs []Request) ([]Decision, error) {
	if err := validateRequests(reqs); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ds, _, err := s.decide(now, reqs, false, time.Time{})
	return ds, err
}

// Book implements Store.
func (s *MemStore) Book(ctx context.Context, now time.Time, reqs []Request, latest time.Time) ([]Decision, time.Time, error) {
	if err := validateRequests(reqs); err != nil {
		return nil, time.Time{}, err
	}
	if err := ctx.Err(); err != nil {
		return nil, time.Time{}, err
	}
	return s.decide(now, reqs, true, latest)
}

func (s *MemStore) decide(now time.Time, reqs []Request, book bool, latest time.Time) ([]Decision, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := make([]bucketState, len(reqs))
	for i, r := range reqs {
		if b := s.buckets[r.Key]; b != nil {
			st[i] = bucketState{b.tat, b.penaltyUntil}
		}
	}
	ds, at, write := decideBatch(reqs, st, nanos(now), book, nanos(latest))
	if !write {
		return ds, time.Time{}, nil
	}
	for i, r := range reqs {
		if r.Mode == ModeCheck {
			continue
		}
		b := s.buckets[r.Key]
		if b == nil {
			b = &memBucket{}
			s.buckets[r.Key] = b
		}
		b.tat = ds[i].newTAT
	}
	return ds, time.Unix(0, at), nil
}

// Refund implements Store.
func (s *MemStore) Refund(ctx context.Context, now time.Time, reqs []Request) error {
	if err := validateRequests(reqs); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	n := nanos(now)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range reqs {
		if b := s.buckets[r.Key]; b != nil && b.tat > n {
			b.tat = refund(r.Limit, b.tat, n, r.Cost)
		}
	}
	return nil
}

// Penalize implements Store.
func (s *MemStore) Penalize(ctx context.Context, key string, until time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.buckets[key]
	if b == nil {
		b = &memBucket{}
		s.buckets[key] = b
	}
	if until.IsZero() {
		b.penaltyUntil = 0
	} else {
		b.penaltyUntil = max(b.penaltyUntil, nanos(until))
	}
	return nil
}
