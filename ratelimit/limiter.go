package ratelimit

import (
	"context"
	"fmt"
	"time"

	"github.com/certfleet/certfleet/internal/clock"
)

// Limiter makes rate-limit decisions: it resolves each transaction's limit
// (override, else catalogue default) and asks the Store to spend, check or
// refund all of them at once. It is safe for concurrent use.
type Limiter struct {
	store     Store
	cat       *Catalogue
	overrides OverrideSource
	clock     clock.Clock
}

// LimiterConfig configures a Limiter. Store and Catalogue are required; the
// zero value of every other field means its documented default.
type LimiterConfig struct {
	// Store holds the buckets and penalties: NewMemStore for one process,
	// NewDBStore for the fleet.
	Store Store
	// Catalogue has the limits of every CA the limiter decides for.
	Catalogue *Catalogue
	// Overrides, when set, is consulted before the catalogue (typically an
	// OverrideCache over an OverrideStore). Default: no overrides.
	Overrides OverrideSource
	// Clock tells the time of every decision. Default: the wall clock.
	Clock clock.Clock
}

// NewLimiter returns a limiter configured by cfg.
func NewLimiter(cfg LimiterConfig) *Limiter {
	return &Limiter{store: cfg.Store, cat: cfg.Catalogue, overrides: cfg.Overrides, clock: clock.Or(cfg.Clock)}
}

// Result is the combined decision for a set of transactions.
type Result struct {
	// Decision combines the buckets: Allowed if all are, the longest
	// RetryIn and ResetIn, the smallest Remaining.
	Decision
	// Buckets holds each transaction's own decision, in order.
	Buckets []Decision
	// Limiting is the transaction with the longest RetryIn when denied.
	Limiting *Transaction
	// At is when the transactions are the caller's: the decision's time
	// when Allowed (spent now), the booked slot when Booked, zero otherwise.
	At time.Time
	// Booked reports that Book booked the transactions for At (Allowed is
	// false: nothing was allowed now, but the spend is made). The caller
	// goes ahead at At and must not spend them again.
	Booked bool
}

// Spend spends every transaction, all or nothing. ctx bounds the call; on
// error the outcome is unknown (see Store).
func (l *Limiter) Spend(ctx context.Context, txns []Transaction) (Result, error) {
	return l.do(ctx, txns, opSpend, 0)
}

// Check evaluates the transactions without spending anything.
func (l *Limiter) Check(ctx context.Context, txns []Transaction) (Result, error) {
	return l.do(ctx, txns, opCheck, 0)
}

// Book is Spend that queues instead of refusing (Store.Book): when the
// transactions fit now they are spent and the result is Allowed; when they
// are denied only because buckets are full (no penalty on a denied bucket)
// and the slot in which all of them fit is within horizon of now (any slot
// when horizon is zero), that slot is booked: the spend is made now, as a
// Spend at Result.At would make it, and the result is Booked. The n-th
// concurrent waiter on a bucket is told a distinct At, one interval after
// the (n-1)-th, in arrival order.
//
// Contract for the holder of a booking: it redeems the booking by going
// ahead (placing the order) at or after At, WITHOUT calling Spend or Book
// for the same transactions again: the booking is the spend. A holder that
// gives up calls Refund with the same transactions. Otherwise (a penalty, a
// slot beyond horizon) nothing is written and RetryIn says when to ask
// again.
func (l *Limiter) Book(ctx context.Context, txns []Transaction, horizon time.Duration) (Result, error) {
	return l.do(ctx, txns, opBook, horizon)
}

type op int

const (
	opSpend op = iota
	opCheck
	opBook
)

func (l *Limiter) do(ctx context.Context, txns []Transaction, o op, horizon time.Duration) (Result, error) {
	now := l.clock.Now()
	reqs, err := l.requests(ctx, now, txns)
	if err != nil {
		return Result{}, err
	}
	var ds []Decision
	var at time.Time
	switch o {
	case opCheck:
		for i := range reqs {
			reqs[i].Mode = ModeCheck
		}
		ds, err = l.store.Spend(ctx, now, reqs)
	case opSpend:
		ds, err = l.store.Spend(ctx, now, reqs)
	case opBook:
		var latest time.Time
		if horizon > 0 {
			latest = now.Add(horizon)
		}
		ds, at, err = l.store.Book(ctx, now, reqs, latest)
	}
	if err != nil {
		return Result{}, fmt.Errorf("ratelimit: deciding %d buckets: %w", len(reqs), err)
	}
	res := Result{Decision: Decision{Allowed: true, Remaining: -1}, Buckets: ds}
	for i, d := range ds {
		res.Allowed = res.Allowed && d.Allowed
		if res.Remaining < 0 || d.Remaining < res.Remaining {
			res.Remaining = d.Remaining
		}
		res.ResetIn = max(res.ResetIn, d.ResetIn)
		if !d.Allowed && (res.Limiting == nil || d.RetryIn > res.RetryIn) {
			res.RetryIn, res.Limiting = d.RetryIn, &txns[i]
		}
	}
	res.Remaining = max(res.Remaining, 0)
	switch {
	case res.Allowed:
		res.At = now
	case !at.IsZero():
		res.At, res.Booked = at, true
		res.RetryIn = at.Sub(now)
	}
	return res, nil
}

// Refund gives back what Spend or Book took for txns (for an order that
// failed before the CA counted it, or a booking given up). Spend-without-check and check transactions
// are skipped: the CA counted the former, the latter spent nothing. A
// spend made with a lead gets its cost back, not the lead: the bucket stays
// up to Lead emptier than before the spend, which only delays, never
// over-spends.
func (l *Limiter) Refund(ctx context.Context, txns []Transaction) error {
	var spent []Transaction
	for _, t := range txns {
		if t.Mode == ModeSpend {
			spent = append(spent, t)
		}
	}
	if len(spent) == 0 {
		return nil
	}
	now := l.clock.Now()
	reqs, err := l.requests(ctx, now, spent)
	if err != nil {
		return err
	}
	return l.store.Refund(ctx, now, reqs)
}

// Penalize records that the CA refused t's bucket until until (a 429 and
// its Retry-After): every limiter sharing the store denies it until then,
// extending and never shortening a running penalty. The pipeline calls it
// for each bucket PenaltyTargets reads from the CA's 429.
func (l *Limiter) Penalize(ctx context.Context, t Transaction, until time.Time) error {
	return l.store.Penalize(ctx, t.Key(), until)
}

// SpendFailedAuthorizations mirrors the CA's count of failed
// authorizations after an order of o failed with the ACME problem type
// problemType: when the problem means a validation failed (countsAsFailedAuthorization),
// it spends, without check, one FailedAuthorizationsPerDomainPerAccount
// token per authorization host of the order (the problem does not reliably
// say which name failed; over-counting only delays retries), so the
// order's check of the same buckets defers further attempts before the CA
// would refuse them. Any other problem, or a CA without that limit, spends
// nothing. A denial needs no action: the bucket is already full.
func (l *Limiter) SpendFailedAuthorizations(ctx context.Context, o Order, problemType string) error {
	if !countsAsFailedAuthorization(problemType) {
		return nil
	}
	txns, err := l.cat.failedAuthorizationTransactions(o)
	if err != nil || len(txns) == 0 {
		return err
	}
	_, err = l.Spend(ctx, txns)
	return err
}

// requests resolves each transaction's limit: the override in force, else
// the catalogue default.
func (l *Limiter) requests(ctx context.Context, now time.Time, txns []Transaction) ([]Request, error) {
	var ovs []*Override
	if l.overrides != nil && len(txns) > 0 {
		var err error
		if ovs, err = l.overrides.Find(ctx, now, txns); err != nil {
			return nil, fmt.Errorf("ratelimit: resolving overrides: %w", err)
		}
	}
	reqs := make([]Request, len(txns))
	for i, t := range txns {
		lim, ok := l.cat.Default(t.Directory, t.Name)
		if !ok {
			return nil, fmt.Errorf("%w: CA %q has no limit %s", ErrInvalidRequest, t.Directory, t.Name)
		}
		if ovs != nil && ovs[i] != nil {
			lim = ovs[i].Limit
		}
		reqs[i] = Request{Key: t.Key(), Limit: lim, Cost: t.Cost, Mode: t.Mode, Lead: t.Lead}
	}
	return reqs, nil
}
