package events

import (
	"strconv"
	"time"
)

// Upper bounds on the times a message asks its reader to wait for. A reader
// that waits (a worker holding a request until not_before) or plans by them
// (the scheduler moving a renewal's watchdog past retry_at) must not be sent
// to year 9999 by one record: a time further ahead than its bound is refused
// and the record dead-lettered. The bounds are far above anything certfleet
// writes: a deferral lasts as long as a rate limit's refill (at most 7 days
// for Let's Encrypt's limits) or a CA's Retry-After (at most 8 days,
// acmeissuer.MaxRetryAfter).
const (
	// MaxNotBeforeAhead bounds an issuance request's not_before.
	MaxNotBeforeAhead = 90 * 24 * time.Hour
	// MaxRetryAhead bounds issuance_deferred's retry_at and cert_failed's
	// next_attempt_at.
	MaxRetryAhead = 30 * 24 * time.Hour
)

// CheckHorizon refuses an event whose not_before (issuance.requested),
// retry_at (issuance.deferred) or next_attempt_at (cert.failed) lies more
// than MaxNotBeforeAhead or MaxRetryAhead after now. It is not part of
// Validate, which does not tell the time: a reader calls it with its own
// clock. The error is a *FieldError wrapping ErrInvalidField that names the
// field, its value and the bound.
func CheckHorizon(e Event, now time.Time) error {
	check := func(field string, t time.Time, bound time.Duration) error {
		if t.IsZero() || !t.After(now.Add(bound)) {
			return nil
		}
		return fieldErrf(field, ErrInvalidField, "%s is more than %s days after now (%s)", t.UTC().Format(time.RFC3339),
			strconv.Itoa(int(bound/(24*time.Hour))), now.UTC().Format(time.RFC3339))
	}
	switch p := e.Data.(type) {
	case *IssuanceRequest:
		return check("not_before", p.NotBefore, MaxNotBeforeAhead)
	case *IssuanceDeferred:
		return check("retry_at", p.RetryAt, MaxRetryAhead)
	case *CertFailed:
		return check("next_attempt_at", p.NextAttemptAt, MaxRetryAhead)
	}
	return nil
}
