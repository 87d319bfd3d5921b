package acmeissuer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"time"

	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/dns01"
)

// ErrInvalidRequest means a Request (or the configuration it needs) is
// malformed; retrying it cannot help. Classify maps it to Permanent.
var ErrInvalidRequest = errors.New("acmeissuer: invalid request")

// Class is what the caller of an ACME operation should do about its error.
type Class int

const (
	// Retry: transient (5xx, network, timeout, bad nonce, unknown); try again
	// with backoff, after RetryAfter when the server gave one.
	Retry Class = iota + 1
	// RateLimited: the CA refused with 429/rateLimited; do not try before
	// RetryAfter. The caller records the fleet-wide penalty (package
	// ratelimit reads which buckets the CA's *CAError names).
	RateLimited
	// Permanent: the CA (or this package) rejected the request for a reason a
	// retry will not change; end the job as cert_failed with ProblemType.
	Permanent
)

func (c Class) String() string {
	switch c {
	case Retry:
		return "retry"
	case RateLimited:
		return "rate_limited"
	case Permanent:
		return "permanent"
	}
	return fmt.Sprintf("Class(%d)", int(c))
}

// Classification is Classify's verdict on an error.
type Classification struct {
	Class Class
	// RetryAfter is when the server allows a new attempt: always set for
	// RateLimited, set for Retry only when a 503 carried a Retry-After.
	RetryAfter time.Time
	// ProblemType and Detail come from the ACME problem document, when there
	// was one (Detail is the CA's text; it never holds key material).
	ProblemType string
	Detail      string
}

// CAError is what the CA answered when an ACME operation ended on a refusal
// this package's transport saw: a 429 (a rate limit), or a final 5xx
// (possibly one acmez reported as plain text). Obtain and Account return it
// wrapped; find it with errors.As. It reports what the CA said and nothing
// more: which of certfleet's rate-limit buckets a 429 is about is package
// ratelimit's reading of Detail (ratelimit.PenaltyTargets).
type CAError struct {
	// Status is the HTTP status: 429 for a rate limit (also when only the
	// problem document said rateLimited), else the 5xx the operation ended
	// on.
	Status int
	// Problem is the CA's problem document (zero when it sent none).
	Problem acme.Problem
	// Detail is the CA's own words about the refusal (Problem.Detail):
	// untrusted free text.
	Detail string
	// RetryAfter is when the CA allows a new attempt: its Retry-After, or,
	// for a 429 without one, now+Config.DefaultPenalty (then Guessed is
	// true). Zero for a 5xx without one.
	RetryAfter time.Time
	Guessed    bool
	Err        error
}

func (e *CAError) Error() string {
	if e.RateLimited() {
		return fmt.Sprintf("rate limited by the CA until %s: %v", e.RetryAfter.UTC().Format(time.RFC3339), e.Err)
	}
	return fmt.Sprintf("HTTP %d: %v", e.Status, e.Err)
}

func (e *CAError) Unwrap() error { return e.Err }

// RateLimited reports whether the CA refused with a rate limit (429 or a
// rateLimited problem).
func (e *CAError) RateLimited() bool {
	return e.Status == http.StatusTooManyRequests || e.Problem.Type == acme.ProblemTypeRateLimited
}

// Classify maps an error from acmez (or from this package) to what the caller
// should do:
//
//   - a rate-limited *CAError, a problem of type rateLimited or status 429:
//     RateLimited.
//   - a *RegistrationLimitedError (the fleet's registration limits deferred
//     a new account; the CA was not asked): RateLimited until its RetryAt.
//   - ErrInvalidRequest: Permanent.
//   - a *dns01.Error (DNS-01's lookups, provider or propagation check
//     failed): Permanent when it says so, else Retry, with its problem type
//     (urn:certfleet:error:dns01Provider, ...) and message as the detail.
//   - badNonce, serverInternal, any 5xx (problem or *CAError): Retry.
//   - connection and dns validation problems (the CA could not reach or
//     resolve the name): Retry, bounded by the caller's attempts.
//   - any other ACME problem (malformed, unauthorized, caa, rejectedIdentifier,
//     failed validations, ...): Permanent, with its type and detail.
//   - context deadlines, network and I/O errors, and anything unrecognised:
//     Retry; the caller's attempt cap bounds unknown failures.
//
// Classify(nil) returns the zero Classification.
func Classify(err error) Classification {
	if err == nil {
		return Classification{}
	}
	var p acme.Problem
	hasProblem := errors.As(err, &p)
	out := Classification{ProblemType: p.Type, Detail: p.Detail}
	var ce *CAError
	hasStatus := errors.As(err, &ce)
	if hasStatus && ce.RateLimited() {
		out.Class, out.RetryAfter = RateLimited, ce.RetryAfter
		if ce.Problem.Type != "" {
			out.ProblemType, out.Detail = ce.Problem.Type, ce.Problem.Detail
		}
		return out
	}
	if errors.Is(err, ErrInvalidRequest) {
		out.Class = Permanent
		return out
	}
	var re *RegistrationLimitedError
	if errors.As(err, &re) {
		return registrationProblem(re)
	}
	var de *dns01.Error
	if errors.As(err, &de) {
		// The DNS side of a dns-01 challenge failed before the CA looked:
		// permanent when no retry can help (refused credentials, no
		// provider, a record that never propagated), else retried.
		out.Class, out.ProblemType, out.Detail = Retry, de.ProblemType(), de.Error()
		if de.Permanent() {
			out.Class = Permanent
		}
		return out
	}
	if hasStatus {
		out.RetryAfter = ce.RetryAfter
	}
	switch {
	case hasProblem && (p.Type == acme.ProblemTypeRateLimited || p.Status == http.StatusTooManyRequests):
		out.Class = RateLimited
	case hasProblem && (p.Type == acme.ProblemTypeBadNonce || p.Type == acme.ProblemTypeServerInternal || p.Status >= 500):
		out.Class = Retry
	case hasProblem && (p.Type == acme.ProblemTypeConnection || p.Type == acme.ProblemTypeDNS):
		// The CA could not reach or resolve the name while validating: often
		// transient (a DNS or network blip). Retrying costs a failed
		// authorization each time, which FailedAuthorizationsPerDomainPerAccount
		// bounds; a name that never resolves ends when the attempts run out.
		out.Class = Retry
	case hasStatus && ce.Status >= 500:
		out.Class = Retry
	case hasProblem:
		out.Class = Permanent
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		out.Class = Retry
	default: // network, I/O, unrecognised
		out.Class = Retry
	}
	return out
}

// annotate wraps an error of an ACME operation with what the transport saw
// as a *CAError: a 429 (with its Retry-After, or now+defaultPenalty), or a
// final 5xx.
func annotate(err error, c *capture, now time.Time, defaultPenalty time.Duration) error {
	if err == nil {
		return nil
	}
	last, limited, limitedTill, unavailTill := c.snapshot()
	var p acme.Problem
	isProblem := errors.As(err, &p)
	var e *CAError
	switch {
	case limited || (isProblem && (p.Type == acme.ProblemTypeRateLimited || p.Status == http.StatusTooManyRequests)):
		e = &CAError{Status: http.StatusTooManyRequests, RetryAfter: limitedTill, Err: err}
		if e.RetryAfter.IsZero() {
			e.RetryAfter, e.Guessed = now.Add(defaultPenalty), true
		}
	case last >= 500:
		e = &CAError{Status: last, RetryAfter: unavailTill, Err: err}
	default:
		return err
	}
	if isProblem {
		e.Problem, e.Detail = p, p.Detail
	}
	return e
}

// Unavailable reports whether err says the CA itself is unavailable rather
// than refusing the request: a 5xx (a *CAError or a problem with a 5xx
// status or type serverInternal), a connection that failed (refused, reset,
// a TLS or DNS failure on the way to the CA), or an operation that timed out
// (the caller's deadline, a network timeout). A problem about the request or
// its validation (connection and dns problems are the CA failing to reach
// the name, not the CA being down), a 429 and ErrInvalidRequest are not.
// The pipeline counts these in the CA's circuit breaker.
func Unavailable(err error) bool {
	if err == nil || errors.Is(err, ErrInvalidRequest) || errors.Is(err, context.Canceled) {
		return false
	}
	var ce *CAError
	if errors.As(err, &ce) {
		return !ce.RateLimited() && ce.Status >= 500
	}
	var p acme.Problem
	if errors.As(err, &p) {
		return p.Type == acme.ProblemTypeServerInternal || p.Status >= 500
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	var oe *net.OpError
	var ue *url.Error
	var de *net.DNSError
	return errors.As(err, &ne) || errors.As(err, &oe) || errors.As(err, &ue) || errors.As(err, &de) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

// Answered reports whether err carries an answer of the CA below 500: a
// problem document or a *CAError (a 429). The CA is up, whatever it thought
// of the request.
func Answered(err error) bool {
	var ce *CAError
	if errors.As(err, &ce) {
		return ce.Status < 500
	}
	var p acme.Problem
	return errors.As(err, &p) && p.Type != acme.ProblemTypeServerInternal && p.Status < 500
}
