package caproxy

import (
	"math"
	"time"
)

// The Generic Cell Rate Algorithm as Boulder's ratelimits package runs it: a
// bucket is one timestamp, its theoretical arrival time (TAT). A request is
// allowed when, after adding one emission interval T = Period/Count to
// max(TAT, now), the TAT is no more than the burst offset (Count·T, about one
// Period) ahead of now. A TAT at or before now is a full bucket.

// emission returns the limit's emission interval, Period/Count rounded to the
// nearest nanosecond (Boulder's divThenRound). Count must be positive.
func (l Limit) emission() time.Duration {
	return time.Duration(math.Round(float64(l.Period) / float64(l.Count)))
}

// burstOffset is how far ahead of now a TAT may be: Count emission intervals.
func (l Limit) burstOffset() time.Duration { return l.emission() * time.Duration(l.Count) }

// gcraDecide decides one request of cost 1 against a bucket whose TAT is tat
// (zero for a bucket never used). When allowed, newTAT is the bucket's state
// after spending; when denied, retryIn is how long until one more would fit.
// l.Count must be positive.
func gcraDecide(l Limit, tat, now time.Time) (allowed bool, newTAT time.Time, retryIn time.Duration) {
	if tat.Before(now) {
		tat = now
	}
	newTAT = tat.Add(l.emission())
	if over := newTAT.Sub(now) - l.burstOffset(); over > 0 {
		return false, tat, over
	}
	return true, newTAT, 0
}

// gcraRefund gives back one request's cost: the TAT moves back one emission
// interval but never before now (a bucket cannot hold more than its burst).
func gcraRefund(l Limit, tat, now time.Time) time.Time {
	tat = tat.Add(-l.emission())
	if tat.Before(now) {
		return now
	}
	return tat
}
