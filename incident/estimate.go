package incident

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/certfleet/certfleet/ratelimit"
)

// This file is pure: how long a batch of orders takes at the CA's allowed
// rate, and what would have to change to meet a deadline. No I/O, no clock.

// Load is one rate-limit bucket and how many of the batch's orders spend
// it (with check: a spend without check never holds an order back).
type Load struct {
	// Key is the bucket key (ratelimit.Transaction.Key), Name its limit
	// and Value its subject: a tenant (the account), a registered domain,
	// a SAN set hash, "*" for the fleet budget.
	Key   string
	Name  ratelimit.Name
	Value string
	// CA is the id of the CA whose bucket it is.
	CA string
	// Limit is the one in force: the catalogue's, or an override's
	// (Overridden).
	Limit      ratelimit.Limit
	Overridden bool
	// TAT is the bucket's stored theoretical arrival time (zero or past:
	// full); PenaltyUntil the end of a CA penalty on it (zero: none).
	TAT, PenaltyUntil time.Time
	// Orders is how many of the batch's orders spend the bucket.
	Orders int64
}

// Finish is when the last of l's orders can be spent at now: GCRA from the
// bucket's state, one order per emission interval after the burst, never
// before the penalty ends.
func (l Load) Finish(now time.Time) time.Time {
	start := now
	if l.PenaltyUntil.After(start) {
		start = l.PenaltyUntil
	}
	if l.Orders <= 0 || l.Limit.Count <= 0 {
		return start
	}
	interval := time.Duration(l.Limit.Interval())
	// The n-th spend fits when max(TAT, t) + n×interval − burst×interval ≤ t.
	base := start
	if l.TAT.After(base) {
		base = l.TAT
	}
	t := base.Add(time.Duration(l.Orders-l.Limit.Burst) * interval)
	if t.Before(start) {
		return start
	}
	return t
}

// Estimate is the up-front answer for a batch of orders.
type Estimate struct {
	Now    time.Time
	Orders int
	// Finish is when the last order can be placed at the allowed rate: the
	// latest Finish of any bucket (a lower bound: orders gated by several
	// buckets at once can take longer). Binding lists every bucket, latest
	// first (ties: most orders first).
	Finish  time.Time
	Binding []BucketEstimate
	// Deadline (zero: none) and whether Finish meets it.
	Deadline time.Time
	Meets    bool
	// Changes are what would let the batch meet the deadline, one per
	// bucket that finishes after it.
	Changes []Change
}

// Duration is Finish − Now.
func (e Estimate) Duration() time.Duration { return e.Finish.Sub(e.Now) }

// BucketEstimate is one bucket's share of an estimate.
type BucketEstimate struct {
	Load
	Finish time.Time
}

// Change is what one bucket needs for the deadline to be met.
type Change struct {
	Load
	// Need is the smallest limit over the same period (burst equal to the
	// count) that finishes the bucket's orders by the deadline, from a full
	// bucket. Zero Count: nothing can (a penalty lasts beyond the deadline).
	Need ratelimit.Limit
	// Accounts, for NewOrdersPerAccount: how many accounts at the current
	// limit would carry the tenant's orders by the deadline.
	Accounts int64
}

// Advice says in words what to do for c: the override to set (and to ask
// the CA for, for its published limits), or the catalogue change for the
// fleet budget.
func (c Change) Advice() string {
	if c.Need.Count == 0 {
		return fmt.Sprintf("%s %s: penalised by the CA until %s, after the deadline: ask the CA to lift it", c.Name, c.Value, c.PenaltyUntil.UTC().Format(time.RFC3339))
	}
	period := FormatPeriod(c.Need.Period)
	switch c.Name {
	case ratelimit.FleetOrdersPerSecond:
		return fmt.Sprintf("raise FleetOrdersPerSecond of CA %s to %d/%s in the workers' -limits catalogue (and the scheduler's -budget); now %d/%s",
			c.CA, c.Need.Count, period, c.Limit.Count, FormatPeriod(c.Limit.Period))
	case ratelimit.NewOrdersPerAccount:
		return fmt.Sprintf("ask CA %s for %d new orders per %s for account %s (now %d), then: certfleet override set --limit %s --key %s --count %d --period %s; or spread the tenant over %d accounts",
			c.CA, c.Need.Count, period, c.Value, c.Limit.Count, c.Name, c.Value, c.Need.Count, period, c.Accounts)
	default:
		return fmt.Sprintf("ask CA %s for %d per %s for %s %s (now %d), then: certfleet override set --limit %s --key %s --count %d --period %s",
			c.CA, c.Need.Count, period, c.Name, c.Value, c.Limit.Count, c.Name, c.Value, c.Need.Count, period)
	}
}

// Plan estimates orders spread over loads, at now, against deadline (zero:
// none).
func Plan(now time.Time, orders int, loads []Load, deadline time.Time) Estimate {
	e := Estimate{Now: now, Orders: orders, Finish: now, Deadline: deadline}
	for _, l := range loads {
		f := l.Finish(now)
		e.Binding = append(e.Binding, BucketEstimate{Load: l, Finish: f})
		if f.After(e.Finish) {
			e.Finish = f
		}
	}
	sort.SliceStable(e.Binding, func(i, j int) bool {
		if !e.Binding[i].Finish.Equal(e.Binding[j].Finish) {
			return e.Binding[i].Finish.After(e.Binding[j].Finish)
		}
		if e.Binding[i].Orders != e.Binding[j].Orders {
			return e.Binding[i].Orders > e.Binding[j].Orders
		}
		return e.Binding[i].Key < e.Binding[j].Key
	})
	if deadline.IsZero() {
		e.Meets = true
		return e
	}
	e.Meets = !e.Finish.After(deadline)
	for _, b := range e.Binding {
		if b.Finish.After(deadline) {
			e.Changes = append(e.Changes, change(b.Load, now, deadline))
		}
	}
	return e
}

// change computes the limit b needs: with count C per period P (burst C)
// from a full bucket, n orders take (n − C)×P/C, which is at most the time
// available A when C ≥ n×P/(A+P).
func change(l Load, now, deadline time.Time) Change {
	c := Change{Load: l}
	start := now
	if l.PenaltyUntil.After(start) {
		start = l.PenaltyUntil
	}
	avail := deadline.Sub(start)
	if avail < 0 {
		return c
	}
	p := l.Limit.Period
	need := int64(math.Ceil(float64(l.Orders) * float64(p) / float64(avail+p)))
	need = max(need, l.Limit.Count+1)
	c.Need = ratelimit.Limit{Count: need, Period: p, Burst: need}
	if l.Name == ratelimit.NewOrdersPerAccount && l.Limit.Count > 0 {
		c.Accounts = (need + l.Limit.Count - 1) / l.Limit.Count
	}
	return c
}

// FormatPeriod prints a period the way certfleet override takes it: whole
// days as "7d", else Go's duration syntax without zero units ("3h", "90s").
func FormatPeriod(d time.Duration) string {
	if d >= 24*time.Hour && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	s := d.String()
	for _, z := range []string{"0s", "0m"} {
		if len(s) > len(z)+1 && s[len(s)-len(z):] == z && (s[len(s)-len(z)-1] < '0' || s[len(s)-len(z)-1] > '9') {
			s = s[:len(s)-len(z)]
		}
	}
	return s
}
