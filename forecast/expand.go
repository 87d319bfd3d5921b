package forecast

import (
	"math"
	"sort"
	"time"

	"github.com/certfleet/certfleet/ratelimit"
)

// This file is pure: groups in, renewals per bucket, herds and the spread
// they need out. No I/O, no clock.

// Options shape a forecast. Zero fields take their defaults.
type Options struct {
	// Start of the forecast (renewals planned before it count at it) and
	// its length, whole hours. Default length 30 days.
	Start time.Time
	Hours int
	// Bucket is the chart's resolution: time.Hour or 24 hours (default).
	Bucket time.Duration
	// Lifetime, when set, is the lifetime of every certificate issued from
	// now on (what a CA moving to 45-day certificates does): renewals after
	// the planned one follow it. Zero: each SAN set keeps its current
	// certificate's lifetime (DefaultLifetime for one not issued yet).
	Lifetime, DefaultLifetime time.Duration
	// LifetimeFraction and JitterFraction are the scheduler's
	// (scheduler.Policy): a certificate is renewed at LifetimeFraction of
	// its lifetime, spread over ±JitterFraction of it. Defaults 2/3, 1/30.
	LifetimeFraction, JitterFraction float64
	// Budget returns a CA's fleet budget (its FleetOrdersPerSecond) for the
	// name the inventory uses; ok false: unknown (no herd is marked).
	Budget func(ca string) (l ratelimit.Limit, ok bool)
}

func (o Options) withDefaults() Options {
	if o.Hours <= 0 {
		o.Hours = 30 * 24
	}
	if o.Bucket <= 0 {
		o.Bucket = 24 * time.Hour
	}
	if o.DefaultLifetime <= 0 {
		o.DefaultLifetime = 90 * 24 * time.Hour
	}
	if o.LifetimeFraction <= 0 || o.LifetimeFraction >= 1 {
		o.LifetimeFraction = 2.0 / 3
	}
	if o.JitterFraction <= 0 {
		o.JitterFraction = 1.0 / 30
	}
	return o
}

// Forecast is the renewals of every CA over the window.
type Forecast struct {
	Start, End time.Time
	Bucket     time.Duration
	// Lifetime is Options.Lifetime (zero: the certificates' own).
	Lifetime time.Duration
	CAs      []CA
}

// CA is one CA's renewals.
type CA struct {
	Name string
	// Budget is its fleet budget (ok false: unknown) and PerBucket what it
	// allows in one bucket.
	Budget    ratelimit.Limit
	Known     bool
	PerBucket float64
	Buckets   []Bucket
	Herds     []Herd
	// Total renewals in the window; Overdue of the planned ones were due
	// before the start.
	Total, Overdue int64
}

// Bucket is one day (or hour).
type Bucket struct {
	Start    time.Time
	Renewals int64
	Over     bool // above the budget
}

// Herd is a run of buckets above the budget.
type Herd struct {
	Start, End     time.Time
	Renewals, Peak int64
	// Spread is how long its renewals need at the budget (at least one
	// bucket per budget's worth); the scheduler's jitter would have to be
	// ±Spread/2 around them to fit.
	Spread time.Duration
}

// Expand turns the inventory's groups into renewals per bucket per CA: the
// planned renewal in its hour, then one every LifetimeFraction of the
// lifetime (Options.Lifetime, else the group's), spread evenly over
// ±JitterFraction of it as the scheduler jitters, while inside the window.
func Expand(groups []Group, o Options) Forecast {
	o = o.withDefaults()
	hours := map[string][]float64{}
	overdue := map[string]int64{}
	for _, g := range groups {
		h := hours[g.CA]
		if h == nil {
			h = make([]float64, o.Hours)
			hours[g.CA] = h
		}
		overdue[g.CA] += g.Overdue
		first := max(g.Hour, 0)
		if first >= o.Hours {
			continue
		}
		h[first] += float64(g.Count)
		life := o.Lifetime
		if life <= 0 {
			life = g.Lifetime
		}
		if life <= 0 {
			life = o.DefaultLifetime
		}
		period := life.Hours() * o.LifetimeFraction
		jitter := life.Hours() * o.JitterFraction
		if period < 1 {
			period = 1
		}
		for t := float64(first) + 0.5 + period; t-jitter < float64(o.Hours); t += period {
			spread(h, t-jitter, t+jitter, float64(g.Count))
		}
	}
	f := Forecast{Start: o.Start, End: o.Start.Add(time.Duration(o.Hours) * time.Hour), Bucket: o.Bucket, Lifetime: o.Lifetime}
	per := int(o.Bucket / time.Hour)
	if per < 1 {
		per = 1
	}
	for name, h := range hours {
		ca := CA{Name: name, Overdue: overdue[name]}
		if o.Budget != nil {
			ca.Budget, ca.Known = o.Budget(name)
		}
		if ca.Known && ca.Budget.Period > 0 {
			ca.PerBucket = float64(ca.Budget.Count) * float64(o.Bucket) / float64(ca.Budget.Period)
		}
		for i := 0; i < len(h); i += per {
			var sum float64
			for _, v := range h[i:min(i+per, len(h))] {
				sum += v
			}
			b := Bucket{Start: o.Start.Add(time.Duration(i) * time.Hour), Renewals: int64(math.Round(sum))}
			b.Over = ca.Known && float64(b.Renewals) > ca.PerBucket
			ca.Total += b.Renewals
			ca.Buckets = append(ca.Buckets, b)
		}
		ca.Herds = herds(ca, o.Bucket)
		f.CAs = append(f.CAs, ca)
	}
	sort.Slice(f.CAs, func(i, j int) bool { return f.CAs[i].Name < f.CAs[j].Name })
	return f
}

// spread adds n evenly over the hours [from, to) of h (clipped to h), in
// proportion to how much of each hour the interval covers; a zero-width
// interval puts n in the hour of from.
func spread(h []float64, from, to, n float64) {
	if to-from < 1e-9 {
		if i := int(math.Floor(from)); i >= 0 && i < len(h) {
			h[i] += n
		}
		return
	}
	density := n / (to - from)
	for i := max(int(math.Floor(from)), 0); i < len(h) && float64(i) < to; i++ {
		lo, hi := math.Max(from, float64(i)), math.Min(to, float64(i+1))
		if hi > lo {
			h[i] += density * (hi - lo)
		}
	}
}

// herds finds the runs of buckets over the budget.
func herds(ca CA, bucket time.Duration) []Herd {
	var out []Herd
	var cur *Herd
	for _, b := range ca.Buckets {
		if !b.Over {
			cur = nil
			continue
		}
		if cur == nil {
			out = append(out, Herd{Start: b.Start})
			cur = &out[len(out)-1]
		}
		cur.End = b.Start.Add(bucket)
		cur.Renewals += b.Renewals
		cur.Peak = max(cur.Peak, b.Renewals)
	}
	for i := range out {
		need := math.Ceil(float64(out[i].Renewals) / ca.PerBucket)
		out[i].Spread = time.Duration(need) * bucket
	}
	return out
}
