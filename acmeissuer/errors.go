package acmeissuer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/ratelimit"
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
	// RetryAfter, and record a fleet-wide penalty.
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
	// Limit and LimitSubject say, for RateLimited, which of the CA's limits
	// the detail names and, for a per-domain limit, the name it counted (see
	// ParseRateLimitDetail). Both are empty when the CA did not say in words
	// this package knows.
	Limit        ratelimit.Name
	LimitSubject string
}

// RateLimitedError is returned (wrapped) by Obtain and Account when the CA
// answered 429. Find it with errors.As.
type RateLimitedError struct {
	// RetryAfter is the CA's Retry-After, or now+Config.DefaultPenalty when
	// the response had none (then Guessed is true).
	RetryAfter time.Time
	Guessed    bool
	// Problem is the CA's problem document (zero when the 429 had none).
	Problem acme.Problem
	Err     error
}

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("rate limited by the CA until %s: %v", e.RetryAfter.UTC().Format(time.RFC3339), e.Err)
}

func (e *RateLimitedError) Unwrap() error { return e.Err }

// StatusError records that an ACME operation ended on an HTTP 5xx response
// (possibly one acmez reported as plain text), with the server's Retry-After
// when a 503 carried one.
type StatusError struct {
	Status     int
	RetryAfter time.Time
	Err        error
}

func (e *StatusError) Error() string { return fmt.Sprintf("HTTP %d: %v", e.Status, e.Err) }

func (e *StatusError) Unwrap() error { return e.Err }

// Classify maps an error from acmez (or from this package) to what the caller
// should do:
//
//   - *RateLimitedError, a problem of type rateLimited or status 429:
//     RateLimited, with the limit the problem's detail names, if any.
//   - ErrInvalidRequest: Permanent.
//   - badNonce, serverInternal, any 5xx (problem or *StatusError): Retry.
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
	var rl *RateLimitedError
	if errors.As(err, &rl) {
		out.Class, out.RetryAfter = RateLimited, rl.RetryAfter
		if rl.Problem.Type != "" {
			out.ProblemType, out.Detail = rl.Problem.Type, rl.Problem.Detail
		}
		out.Limit, out.LimitSubject = ParseRateLimitDetail(out.Detail)
		return out
	}
	if errors.Is(err, ErrInvalidRequest) {
		out.Class = Permanent
		return out
	}
	var se *StatusError
	hasStatus := errors.As(err, &se)
	if hasStatus {
		out.RetryAfter = se.RetryAfter
	}
	switch {
	case hasProblem && (p.Type == acme.ProblemTypeRateLimited || p.Status == http.StatusTooManyRequests):
		out.Class = RateLimited
		out.Limit, out.LimitSubject = ParseRateLimitDetail(p.Detail)
	case hasStatus && se.Status == http.StatusTooManyRequests:
		out.Class = RateLimited
	case hasProblem && (p.Type == acme.ProblemTypeBadNonce || p.Type == acme.ProblemTypeServerInternal || p.Status >= 500):
		out.Class = Retry
	case hasProblem && (p.Type == acme.ProblemTypeConnection || p.Type == acme.ProblemTypeDNS):
		// The CA could not reach or resolve the name while validating: often
		// transient (a DNS or network blip). Retrying costs a failed
		// authorization each time, which FailedAuthorizationsPerDomainPerAccount
		// bounds; a name that never resolves ends when the attempts run out.
		out.Class = Retry
	case hasStatus && se.Status >= 500:
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

// annotate wraps an error of an ACME operation with what the transport saw:
// a 429 becomes *RateLimitedError, a final 5xx a *StatusError.
func annotate(err error, c *capture, now time.Time, defaultPenalty time.Duration) error {
	if err == nil {
		return nil
	}
	last, limited, limitedTill, unavailTill := c.snapshot()
	var p acme.Problem
	isProblem := errors.As(err, &p)
	if limited || (isProblem && (p.Type == acme.ProblemTypeRateLimited || p.Status == http.StatusTooManyRequests)) {
		e := &RateLimitedError{RetryAfter: limitedTill, Err: err}
		if isProblem {
			e.Problem = p
		}
		if e.RetryAfter.IsZero() {
			e.RetryAfter, e.Guessed = now.Add(defaultPenalty), true
		}
		return e
	}
	if last >= 500 {
		return &StatusError{Status: last, RetryAfter: unavailTill, Err: err}
	}
	return err
}
