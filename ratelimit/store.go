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
	// Lead says the CA counts this spend Lead after it is made (a
	// certificate limit counted at issuance, an order's latency after the
	// worker places the order). Whether the cost fits is still decided at
	// now, but a spend (ModeSpend, ModeSpendNoCheck) is recorded at now+Lead:
	// the new TAT is max(tat, now+Lead) + cost*interval (see SpendAhead), so
	// the bucket is never ahead of the CA's. Zero, the default, records at
	// now; ModeCheck ignores it. Between 0 and MaxLead.
	Lead time.Duration
}

// MaxLead bounds Request.Lead and Transaction.Lead.
const MaxLead = 24 * time.Hour

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
	// Book is Spend that queues instead of refusing. A batch Spend would
	// apply is applied and at is now. A batch denied only because buckets
	// are full (no denied bucket is under a penalty) is booked, all or
	// nothing: at is the earliest time at which every ModeSpend and ModeCheck
	// bucket would allow its cost, and each ModeSpend and ModeSpendNoCheck
	// bucket is spent now exactly as a Spend at time at would spend it (new
	// TAT max(tat, at+Lead) + cost*interval); check buckets are not spent.
	// The booking is that spend made in advance: its holder goes ahead at at
	// and must not spend the batch again (Refund gives it back if the holder
	// gives up). Later batches see the booked TATs, so the n-th waiter on a
	// bucket is booked one cost*interval after the (n-1)-th. When the slot
	// would be after latest (a non-zero latest), or a denied bucket is
	// penalised, nothing is written and at is zero. Decisions are Spend's at
	// now (a booked batch has denied ones, whose RetryIn is their own wait).
	Book(ctx context.Context, now time.Time, reqs []Request, latest time.Time) (ds []Decision, at time.Time, err error)
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
		if r.Lead < 0 || r.Lead > MaxLead {
			return fmt.Errorf("%w: request %d (%s): lead %s outside 0-%s", ErrInvalidRequest, i, r.Key, r.Lead, MaxLead)
		}
	}
	return nil
}

// evaluate is the decision for one request given the bucket's state; the
// shared semantics of every store.
func evaluate(r Request, tat, penaltyUntil, now int64) Decision {
	switch r.Mode {
	case ModeSpendNoCheck:
		return spendNoCheck(r.Limit, tat, now, r.Cost, int64(r.Lead))
	case ModeCheck:
		return withPenalty(decide(r.Limit, tat, now, r.Cost, 0, false), tat, now, penaltyUntil)
	default:
		return withPenalty(decide(r.Limit, tat, now, r.Cost, int64(r.Lead), true), tat, now, penaltyUntil)
	}
}

// bucketState is one bucket as read by a store: TAT and penalty end, Unix
// nanoseconds (0: never).
type bucketState struct{ tat, penaltyUntil int64 }

// decideBatch is the shared decision of Spend (book false) and Book for a
// batch, given each request's bucket state. It returns the decisions, the
// time the batch is the caller's (now when spent at once, the slot when
// booked, 0 when neither), and whether the stores must write the decisions'
// new TATs of the ModeSpend and ModeSpendNoCheck requests.
func decideBatch(reqs []Request, st []bucketState, now int64, book bool, latest int64) (ds []Decision, at int64, write bool) {
	ds = make([]Decision, len(reqs))
	all := true
	for i, r := range reqs {
		ds[i] = evaluate(r, st[i].tat, st[i].penaltyUntil, now)
		all = all && ds[i].Allowed
	}
	if all {
		return ds, now, true
	}
	if !book {
		return ds, 0, false
	}
	at = now
	for i, r := range reqs {
		if !ds[i].Allowed && st[i].penaltyUntil > now {
			return ds, 0, false
		}
		if r.Mode != ModeSpendNoCheck {
			// The earliest time at which the cost fits: max(tat, now) +
			// cost*interval - burst offset (the bucket's TAT is not moved by
			// the passage of time, so this holds at every later time).
			at = max(at, max(st[i].tat, now)+r.Limit.Interval()*r.Cost-r.Limit.BurstOffset())
		}
	}
	if latest != 0 && at > latest {
		return ds, 0, false
	}
	for i, r := range reqs {
		if r.Mode != ModeCheck {
			ds[i].newTAT = max(st[i].tat, at+int64(r.Lead)) + r.Limit.Interval()*r.Cost
		}
	}
	return ds, at, true
}
