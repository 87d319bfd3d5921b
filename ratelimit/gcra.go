package ratelimit

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// This file is the pure Generic Cell Rate Algorithm: arithmetic on one
// theoretical arrival time (TAT) per bucket, no I/O, no clock. Every time is
// passed in as Unix nanoseconds so that the SQL in store_db.go can compute the
// same condition with nothing but BIGINT addition, subtraction, GREATEST and
// comparisons (no division, whose semantics differ between PostgreSQL and
// CockroachDB).

// maxBurstOffset caps interval*burst (the time a full bucket represents) so
// that TAT arithmetic near the present can never overflow an int64.
const maxBurstOffset = int64(100 * 365 * 24 * time.Hour)

// Limit is a GCRA rate: Count events per Period, with up to Burst events at
// once. The zero value is invalid; see Validate.
type Limit struct {
	Count  int64
	Period time.Duration
	Burst  int64
}

// ErrInvalidLimit is wrapped by every error from Limit.Validate.
var ErrInvalidLimit = errors.New("ratelimit: invalid limit")

// Validate reports whether the limit can be used. A limit whose emission
// interval rounds to zero or whose burst offset would overflow is rejected.
func (l Limit) Validate() error {
	switch {
	case l.Count <= 0:
		return fmt.Errorf("%w: count %d must be positive", ErrInvalidLimit, l.Count)
	case l.Period <= 0:
		return fmt.Errorf("%w: period %s must be positive", ErrInvalidLimit, l.Period)
	case l.Burst <= 0:
		return fmt.Errorf("%w: burst %d must be positive", ErrInvalidLimit, l.Burst)
	case l.Interval() <= 0:
		return fmt.Errorf("%w: period %s is shorter than count %d nanoseconds", ErrInvalidLimit, l.Period, l.Count)
	case l.Burst > maxBurstOffset/l.Interval():
		return fmt.Errorf("%w: burst %d times interval %s exceeds 100 years", ErrInvalidLimit, l.Burst, time.Duration(l.Interval()))
	}
	return nil
}

// Interval is the emission interval in nanoseconds: Period/Count, truncated.
func (l Limit) Interval() int64 { return int64(l.Period) / l.Count }

// BurstOffset is the time a full bucket represents, in nanoseconds.
func (l Limit) BurstOffset() int64 { return l.Interval() * l.Burst }

// String formats the limit as count/period burst b.
func (l Limit) String() string { return fmt.Sprintf("%d/%s burst %d", l.Count, l.Period, l.Burst) }

// Decision is the outcome of one GCRA evaluation.
type Decision struct {
	// Allowed reports whether the cost fits (and, for a spend, was spent).
	Allowed bool
	// Remaining is how many units of cost 1 the bucket still holds after the
	// decision.
	Remaining int64
	// RetryIn is how long to wait before the same cost could be allowed; zero
	// when Allowed.
	RetryIn time.Duration
	// ResetIn is how long until the bucket is full again.
	ResetIn time.Duration

	// newTAT is the bucket's TAT after the decision (Unix ns); stores persist
	// it when Allowed.
	newTAT int64
}

// NewTAT is the bucket's theoretical arrival time after the decision.
func (d Decision) NewTAT() time.Time { return time.Unix(0, d.newTAT) }

// nanos converts t to Unix nanoseconds, mapping the zero time (a bucket never
// used) to 0, which every present time exceeds.
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// Spend decides whether cost fits in a bucket whose TAT is tat at time now.
// When allowed, the decision's NewTAT is the TAT to store; when denied the
// bucket must be left unchanged. cost must be between 0 and the burst.
func Spend(l Limit, tat, now time.Time, cost int64) Decision {
	return decide(l, nanos(tat), nanos(now), cost, 0, true)
}

// SpendAhead is Spend for a cost the CA counts lead after now (a
// certificate counted at issuance, an order's latency after the order is
// placed): whether cost fits is decided at now, exactly as Spend does, but the
// spend is recorded at now+lead, so the new TAT is max(tat, now+lead) +
// cost*interval. The bucket then never runs ahead of a CA counting the same
// limit lead later; with lead 0 it is Spend. lead must not be negative.
func SpendAhead(l Limit, tat, now time.Time, cost int64, lead time.Duration) Decision {
	return decide(l, nanos(tat), nanos(now), cost, int64(lead), true)
}

// Check is Spend without the spend: the decision tells whether cost would
// fit, and its NewTAT always equals the current TAT.
func Check(l Limit, tat, now time.Time, cost int64) Decision {
	return decide(l, nanos(tat), nanos(now), cost, 0, false)
}

// SpendNoCheck spends cost whether or not it fits ("spend without the check",
// for limits the CA counts but does not enforce, such as Let's Encrypt's
// CertificatesPerDomain for renewals). It is always allowed; the bucket may
// go into debt, which later spends then have to wait out.
func SpendNoCheck(l Limit, tat, now time.Time, cost int64) Decision {
	return spendNoCheck(l, nanos(tat), nanos(now), cost, 0)
}

// Refund gives cost back to a bucket, never leaving it fuller than full
// (the returned TAT is never before now). It returns the TAT to store.
func Refund(l Limit, tat, now time.Time, cost int64) time.Time {
	return time.Unix(0, refund(l, nanos(tat), nanos(now), cost))
}

// decide is the GCRA decision at now; an allowed spend is recorded at
// now+lead (see SpendAhead).
func decide(l Limit, tat, now, cost, lead int64, spend bool) Decision {
	interval := l.Interval()
	burstOffset := interval * l.Burst
	counted := max(tat, now+lead) // where the spend is recorded
	if tat < now {
		tat = now
	}
	newTAT := tat + interval*cost
	// allowAt is the earliest time at which newTAT fits within the burst.
	allowAt := newTAT - burstOffset
	if allowAt <= now {
		if !spend {
			return describeAllowed(interval, burstOffset, tat, now, tat)
		}
		newTAT = counted + interval*cost
		return describeAllowed(interval, burstOffset, newTAT, now, newTAT)
	}
	return Decision{
		Allowed:   false,
		Remaining: remaining(interval, burstOffset, tat, now),
		RetryIn:   time.Duration(allowAt - now),
		ResetIn:   time.Duration(tat - now),
		newTAT:    tat,
	}
}

func spendNoCheck(l Limit, tat, now, cost, lead int64) Decision {
	interval := l.Interval()
	newTAT := max(tat, now+lead) + interval*cost
	return describeAllowed(interval, l.BurstOffset(), newTAT, now, newTAT)
}

// describeAllowed builds the decision for an allowed request: remaining and
// reset are measured from after, the TAT the bucket will hold.
func describeAllowed(interval, burstOffset, newTAT, now, after int64) Decision {
	return Decision{
		Allowed:   true,
		Remaining: remaining(interval, burstOffset, after, now),
		ResetIn:   time.Duration(after - now),
		newTAT:    newTAT,
	}
}

// remaining is how many cost-1 spends fit in a bucket with TAT tat (>= now).
func remaining(interval, burstOffset, tat, now int64) int64 {
	free := now - (tat - burstOffset)
	if free <= 0 {
		return 0
	}
	return free / interval
}

func refund(l Limit, tat, now, cost int64) int64 {
	if tat <= now {
		return now
	}
	inc := l.Interval() * cost
	if inc > tat-now {
		return now
	}
	return tat - inc
}

// withPenalty overlays a CA penalty ("blocked until until") on a decision
// made at now: while the penalty lasts the request is denied and nothing is
// spent. Decisions for spend-without-check requests are left alone.
func withPenalty(d Decision, tat, now, until int64) Decision {
	if until <= now {
		return d
	}
	wait := time.Duration(until - now)
	if !d.Allowed {
		d.RetryIn = max(d.RetryIn, wait)
		return d
	}
	tat = max(tat, now)
	return Decision{
		Allowed:   false,
		Remaining: 0,
		RetryIn:   wait,
		ResetIn:   time.Duration(max(tat, until) - now),
		newTAT:    tat,
	}
}

// checkCost validates a request's cost against its limit.
func checkCost(l Limit, cost int64) error {
	if cost < 0 {
		return fmt.Errorf("%w: cost %d is negative", ErrInvalidRequest, cost)
	}
	if cost > l.Burst {
		return fmt.Errorf("%w: cost %d exceeds burst %d, it could never be allowed", ErrInvalidRequest, cost, l.Burst)
	}
	if cost > math.MaxInt64/max(l.Interval(), 1) {
		return fmt.Errorf("%w: cost %d overflows", ErrInvalidRequest, cost)
	}
	return nil
}
