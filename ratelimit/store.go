package ratelimit

import (
	"context"
	"fmt"
	"time"
)

// Request is one bucket operation handed to a Store: the limit is already
// resolved (default or override).
type Request struct {
	Key   string
	Limit Limit
	Cost  int64
	Mode  Mode
}

// Store holds GCRA buckets and CA penalties.
//
// Contract, for every implementation:
//   - Safe for concurrent use by many goroutines; the database store also by
//     many processes. No spend is ever lost and no bucket is over-spent.
//   - ctx bounds each call. When it expires during Spend or Refund the call
//     returns an error and, for a database store, the effect may or may not
//     have happened (the statement may commit): callers must treat an error
//     as "unknown" and not refund what they do not know was spent.
//   - now is the caller's clock; stores never read the time themselves
//     (fleet members should run NTP: skew shifts a bucket by the skew).
//   - Keys within one call must be unique; costs between 0 and the burst.
//     Violations return ErrInvalidRequest without touching any bucket.
type Store interface {
	// Spend evaluates every request at now and, only if all of them are
	// allowed, spends the ModeSpend and ModeSpendNoCheck ones atomically. It
	// returns one decision per request, in order; the batch was applied if and
	// only if every decision is Allowed. ModeCheck requests take part in the
	// condition but are never spent. A bucket under an active penalty denies
	// ModeSpend and ModeCheck requests until the penalty ends.
	Spend(ctx context.Context, now time.Time, reqs []Request) ([]Decision, error)
	// Refund gives each request's cost back to its bucket (never beyond full).
	// Unknown keys are ignored. It is atomic over the batch.
	Refund(ctx context.Context, now time.Time, reqs []Request) error
	// Penalize blocks key until until (extending, never shortening, a current
	// penalty). A zero until clears the penalty.
	Penalize(ctx context.Context, key string, until time.Time) error
}

// validateRequests checks the contract's preconditions.
func validateRequests(reqs []Request) error {
	seen := make(map[string]bool, len(reqs))
	for i, r := range reqs {
		if r.Key == "" || len(r.Key) > 1024 {
			return fmt.Errorf("%w: request %d: key must be 1-1024 bytes", ErrInvalidRequest, i)
		}
		if seen[r.Key] {
			return fmt.Errorf("%w: request %d: key %q appears twice", ErrInvalidRequest, i, r.Key)
		}
		seen[r.Key] = true
		if err := r.Limit.Validate(); err != nil {
			return fmt.Errorf("%w: request %d (%s): %w", ErrInvalidRequest, i, r.Key, err)
		}
		if err := checkCost(r.Limit, r.Cost); err != nil {
			return fmt.Errorf("request %d (%s): %w", i, r.Key, err)
		}
		if r.Mode < ModeSpend || r.Mode > ModeCheck {
			return fmt.Errorf("%w: request %d: unknown mode %d", ErrInvalidRequest, i, r.Mode)
		}
	}
	return nil
}

// evaluate is the decision for one request given the bucket's state; the
// shared semantics of every store.
func evaluate(r Request, tat, penaltyUntil, now int64) Decision {
	switch r.Mode {
	case ModeSpendNoCheck:
		return spendNoCheck(r.Limit, tat, now, r.Cost)
	case ModeCheck:
		return withPenalty(decide(r.Limit, tat, now, r.Cost, false), tat, now, penaltyUntil)
	default:
		return withPenalty(decide(r.Limit, tat, now, r.Cost, true), tat, now, penaltyUntil)
	}
}
