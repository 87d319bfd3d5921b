package scheduler

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"time"
)

// This file is pure: the renewal-time and retry decisions, no I/O, no clock
// (the caller passes now) and no global randomness (the caller passes a
// uniform draw, usually draw of the certificate's identity, so a decision can
// be recomputed and tested exactly).

// Basis says how a renewal time was chosen; stored in renewal_basis.
type Basis string

// Bases.
const (
	BasisNew       Basis = "new"       // no certificate yet: due at once
	BasisARI       Basis = "ari"       // a random point inside the CA's ARI window
	BasisLifetime  Basis = "lifetime"  // about two thirds into the lifetime, jittered
	BasisEmergency Basis = "emergency" // close to expiry: renew now, whatever the plan said
	BasisRetry     Basis = "retry"     // after a failure, on the escalating retry schedule
	// BasisIncident: the CA moved the certificate's ARI window into the past,
	// as it does to signal an incident revocation: reissue at once, in the
	// incident lane (IncidentDue), ahead of routine renewals.
	BasisIncident Basis = "incident"
)

// Policy tunes planning. The zero value of every field means its default.
type Policy struct {
	// LifetimeFraction is where in the lifetime a certificate without ARI
	// guidance is renewed. Default 2/3.
	LifetimeFraction float64
	// JitterFraction spreads lifetime-based renewals uniformly over
	// ±JitterFraction×lifetime around the nominal point, so certificates
	// issued together do not renew together. Default 1/30 (±3 days for 90-day
	// certificates, ±4.8 hours for 6-day ones).
	JitterFraction float64
	// EmergencyFraction: when less than this fraction of the lifetime is left,
	// renew at once whatever ARI or the lifetime rule said. Default 1/10.
	EmergencyFraction float64
	// RetryBase is the wait after the first failure; it doubles per further
	// consecutive failure up to RetryMax. Defaults 5 minutes and 6 hours.
	RetryBase, RetryMax time.Duration
	// ARIRecheckDefault is when to fetch the ARI window again if the CA sent
	// no Retry-After; ARIRecheckMin and ARIRecheckMax clamp a CA's value.
	// Defaults 6 hours, 1 minute and 24 hours.
	ARIRecheckDefault, ARIRecheckMin, ARIRecheckMax time.Duration
}

// WithDefaults returns p with every zero field set to its default.
func (p Policy) WithDefaults() Policy {
	f := func(v *float64, d float64) {
		if *v <= 0 {
			*v = d
		}
	}
	f(&p.LifetimeFraction, 2.0/3)
	f(&p.JitterFraction, 1.0/30)
	f(&p.EmergencyFraction, 1.0/10)
	d := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	d(&p.RetryBase, 5*time.Minute)
	d(&p.RetryMax, 6*time.Hour)
	d(&p.ARIRecheckDefault, 6*time.Hour)
	d(&p.ARIRecheckMin, time.Minute)
	d(&p.ARIRecheckMax, 24*time.Hour)
	return p
}

// Validate rejects a policy whose fields contradict each other, naming the field.
func (p Policy) Validate() error {
	p = p.WithDefaults()
	switch {
	case p.LifetimeFraction >= 1:
		return fmt.Errorf("scheduler: Policy.LifetimeFraction %v must be below 1", p.LifetimeFraction)
	case p.EmergencyFraction >= 1-p.LifetimeFraction:
		return fmt.Errorf("scheduler: Policy.EmergencyFraction %v must leave room after LifetimeFraction %v", p.EmergencyFraction, p.LifetimeFraction)
	case p.JitterFraction >= p.LifetimeFraction || p.LifetimeFraction+p.JitterFraction >= 1:
		return fmt.Errorf("scheduler: Policy.JitterFraction %v is too large for LifetimeFraction %v", p.JitterFraction, p.LifetimeFraction)
	case p.RetryMax < p.RetryBase:
		return fmt.Errorf("scheduler: Policy.RetryMax %v is below RetryBase %v", p.RetryMax, p.RetryBase)
	case p.ARIRecheckMax < p.ARIRecheckMin:
		return fmt.Errorf("scheduler: Policy.ARIRecheckMax %v is below ARIRecheckMin %v", p.ARIRecheckMax, p.ARIRecheckMin)
	}
	return nil
}

// certLife is what planning needs of the current certificate.
type certLife struct {
	NotBefore, NotAfter time.Time
}

// Window is an ARI suggested renewal window (RFC 9773 section 4.2).
type Window struct {
	Start, End time.Time
}

// Valid reports whether the window can be used: start strictly before end.
func (w Window) Valid() bool { return !w.Start.IsZero() && w.End.After(w.Start) }

// renewalPlan is a planned renewal.
type renewalPlan struct {
	RenewAt time.Time
	Basis   Basis
}

// dueAt is the next_renewal_at that carries p: its time, or IncidentDue for
// the incident lane (p.RenewAt is then the planned_at).
func (p renewalPlan) dueAt() time.Time {
	if p.Basis == BasisIncident {
		return IncidentDue
	}
	return p.RenewAt
}

// planRenewal decides when to renew. cert nil means there is no certificate
// yet: due now. ari, when valid, is the CA's window: the renewal is at a point
// r of the way through it (r uniform in [0,1)), or now when that point has
// passed; a window that has ended entirely is an incident (BasisIncident,
// now). Otherwise it is at LifetimeFraction of the lifetime, moved by
// jitter derived from r. Either way, once less than EmergencyFraction of the
// lifetime is left (or the plan would land there), it is now, as an emergency.
// The result is never before now.
func planRenewal(p Policy, now time.Time, cert *certLife, ari *Window, r float64) renewalPlan {
	p = p.WithDefaults()
	r = clamp01(r)
	if cert == nil || !cert.NotAfter.After(cert.NotBefore) {
		return renewalPlan{RenewAt: now, Basis: BasisNew}
	}
	if ari != nil && ari.Valid() && !ari.End.After(now) {
		// The whole window has passed: the CA wants the certificate replaced
		// now (RFC 9773 section 4.2), which is how it signals a revocation.
		return renewalPlan{RenewAt: now, Basis: BasisIncident}
	}
	life := cert.NotAfter.Sub(cert.NotBefore)
	emergency := cert.NotAfter.Add(-scale(life, p.EmergencyFraction))
	var plan renewalPlan
	if ari != nil && ari.Valid() {
		plan = renewalPlan{RenewAt: ari.Start.Add(scale(ari.End.Sub(ari.Start), r)), Basis: BasisARI}
	} else {
		nominal := cert.NotBefore.Add(scale(life, p.LifetimeFraction))
		jitter := scale(life, p.JitterFraction*(2*r-1)) // uniform in ±JitterFraction×life
		plan = renewalPlan{RenewAt: nominal.Add(jitter), Basis: BasisLifetime}
	}
	if !plan.RenewAt.Before(emergency) {
		// The plan lands in the last EmergencyFraction of the lifetime (a
		// window past expiry, say): renew at the emergency point instead, or
		// now when that has passed.
		plan = renewalPlan{RenewAt: emergency, Basis: BasisEmergency}
	}
	if plan.RenewAt.Before(now) {
		plan.RenewAt = now
		if !now.Before(emergency) {
			plan.Basis = BasisEmergency
		}
	}
	return plan
}

// keepARIPoint re-plans after a fresh ARI window arrived for a certificate
// already planned at prev: a point still inside the new window is kept (so a
// re-check that changes nothing moves nothing); otherwise a new point is
// drawn with planRenewal.
func keepARIPoint(p Policy, now time.Time, cert *certLife, w Window, prev time.Time, r float64) renewalPlan {
	if w.Valid() && !prev.Before(w.Start) && prev.Before(w.End) && !prev.Before(now) {
		plan := planRenewal(p, now, cert, &w, r)
		if plan.Basis == BasisARI {
			return renewalPlan{RenewAt: prev, Basis: BasisARI}
		}
		return plan
	}
	return planRenewal(p, now, cert, &w, r)
}

// nextRetryAt decides when to try again after failures consecutive failures (1
// for the first): RetryBase doubled per further failure, capped at RetryMax,
// with "equal jitter" (between half and all of that delay, from r) so failed
// batches do not retry in lockstep; never before caRetryAt (the CA's or the
// worker's retry-after, zero when none). cert, when known, caps the delay so
// the retry still happens before the certificate expires, but never below
// RetryBase: a failing certificate is never hammered.
func nextRetryAt(p Policy, now time.Time, failures int, caRetryAt time.Time, cert *certLife, r float64) time.Time {
	p = p.WithDefaults()
	if failures < 1 {
		failures = 1
	}
	delay := p.RetryBase
	for i := 1; i < failures && delay < p.RetryMax; i++ {
		delay *= 2
	}
	delay = min(delay, p.RetryMax)
	delay = delay/2 + scale(delay/2, clamp01(r))
	if cert != nil && cert.NotAfter.After(now) {
		// Leave at least three more tries before expiry.
		delay = min(delay, cert.NotAfter.Sub(now)/4)
	}
	delay = max(delay, p.RetryBase)
	at := now.Add(delay)
	if caRetryAt.After(at) {
		at = caRetryAt
	}
	return at
}

// ariRecheckAt is when to fetch a certificate's ARI window again: after the
// CA's Retry-After (zero: none sent), clamped to the policy's bounds.
func ariRecheckAt(p Policy, now time.Time, retryAfter time.Duration) time.Time {
	p = p.WithDefaults()
	if retryAfter <= 0 {
		retryAfter = p.ARIRecheckDefault
	}
	return now.Add(min(max(retryAfter, p.ARIRecheckMin), p.ARIRecheckMax))
}

// draw returns a uniform number in [0,1) derived from parts: the planning
// randomness of one certificate, stable across processes and re-runs, and
// independent between certificates (so a batch issued together spreads out).
func draw(parts ...string) float64 {
	h := sha256.New()
	for _, s := range parts {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	sum := h.Sum(nil)
	return float64(binary.BigEndian.Uint64(sum[:8])>>11) / (1 << 53)
}

func scale(d time.Duration, f float64) time.Duration {
	return time.Duration(math.Round(float64(d) * f))
}

func clamp01(r float64) float64 {
	if math.IsNaN(r) || r < 0 {
		return 0
	}
	if r >= 1 {
		return math.Nextafter(1, 0)
	}
	return r
}
