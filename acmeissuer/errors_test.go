package acmeissuer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

func problem(typ string, status int) acme.Problem {
	return acme.Problem{Type: acme.ProblemTypeNamespace + typ, Status: status, Detail: "detail of " + typ}
}

func TestClassify(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	wrap := func(err error) error { return fmt.Errorf("creating new order: attempt 1: https://ca/order: %w", err) }
	cases := []struct {
		name     string
		err      error
		class    Class
		typ      string
		retryAt  time.Time
		noDetail bool
	}{
		{"rate limited error", wrap(&CAError{Status: 429, RetryAfter: at, Problem: problem("rateLimited", 429), Err: problem("rateLimited", 429)}), RateLimited, "rateLimited", at, false},
		{"rateLimited problem without transport", wrap(problem("rateLimited", 429)), RateLimited, "rateLimited", time.Time{}, false},
		{"429 status, other type", wrap(problem("malformed", 429)), RateLimited, "malformed", time.Time{}, false},
		{"429 status error", &CAError{Status: 429, Err: errors.New("HTTP 429: slow down")}, RateLimited, "", time.Time{}, true},
		{"badNonce", wrap(problem("badNonce", 400)), Retry, "badNonce", time.Time{}, false},
		{"serverInternal", wrap(problem("serverInternal", 500)), Retry, "serverInternal", time.Time{}, false},
		{"503 problem with Retry-After", &CAError{Status: 503, RetryAfter: at, Err: problem("serverInternal", 503)}, Retry, "serverInternal", at, false},
		{"plain 502", &CAError{Status: 502, Err: errors.New("HTTP 502: <html>")}, Retry, "", time.Time{}, true},
		{"any 5xx problem", wrap(acme.Problem{Type: "about:blank", Status: 504}), Retry, "about:blank", time.Time{}, true},
		{"deadline", wrap(context.DeadlineExceeded), Retry, "", time.Time{}, true},
		{"canceled", context.Canceled, Retry, "", time.Time{}, true},
		{"network", wrap(&url.Error{Op: "Post", URL: "https://ca", Err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}}), Retry, "", time.Time{}, true},
		{"eof", fmt.Errorf("reading response body: %w", io.ErrUnexpectedEOF), Retry, "", time.Time{}, true},
		{"unknown", errors.New("something odd"), Retry, "", time.Time{}, true},
		{"invalid request", fmt.Errorf("x: %w", ErrInvalidRequest), Permanent, "", time.Time{}, true},
		{"malformed", wrap(problem("malformed", 400)), Permanent, "malformed", time.Time{}, false},
		{"unauthorized (validation)", fmt.Errorf("solving challenge: a.test: %w", problem("unauthorized", 403)), Permanent, "unauthorized", time.Time{}, false},
		{"caa", wrap(problem("caa", 403)), Permanent, "caa", time.Time{}, false},
		{"rejectedIdentifier", wrap(problem("rejectedIdentifier", 400)), Permanent, "rejectedIdentifier", time.Time{}, false},
		{"dns (validation could not resolve: transient)", wrap(problem("dns", 400)), Retry, "dns", time.Time{}, false},
		{"connection (validation could not connect: transient)", fmt.Errorf("solving challenge: a.test: %w", problem("connection", 400)), Retry, "connection", time.Time{}, false},
		{"tls (validation: misconfigured)", wrap(problem("tls", 400)), Permanent, "tls", time.Time{}, false},
		{"badCSR", wrap(problem("badCSR", 400)), Permanent, "badCSR", time.Time{}, false},
		{"accountDoesNotExist", wrap(problem("accountDoesNotExist", 400)), Permanent, "accountDoesNotExist", time.Time{}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Classify(c.err)
			wantType := c.typ
			if wantType != "" && wantType != "about:blank" {
				wantType = acme.ProblemTypeNamespace + wantType
			}
			if got.Class != c.class || got.ProblemType != wantType || !got.RetryAfter.Equal(c.retryAt) {
				t.Fatalf("Classify = %+v; want class %v type %q retry %v", got, c.class, wantType, c.retryAt)
			}
			if !c.noDetail && got.Detail == "" {
				t.Error("detail lost")
			}
		})
	}
	if got := Classify(nil); got != (Classification{}) {
		t.Errorf("Classify(nil) = %+v", got)
	}
}

func TestAnnotate(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := &capture{}
	plain := errors.New("x")
	if got := annotate(plain, c, now, time.Minute); got != plain {
		t.Errorf("nothing seen: %v", got)
	}
	c.status(502)
	var se *CAError
	if got := annotate(plain, c, now, time.Minute); !errors.As(got, &se) || se.Status != 502 || se.RateLimited() {
		t.Errorf("after 502: %v", got)
	}
	c.status(429)
	c.retryAfter(429, now.Add(time.Hour))
	var rl *CAError
	if got := annotate(plain, c, now, time.Minute); !errors.As(got, &rl) || !rl.RateLimited() || !rl.RetryAfter.Equal(now.Add(time.Hour)) || rl.Guessed {
		t.Errorf("after 429: %v", got)
	}
	// A rateLimited problem the transport never saw (no hook) gets the default.
	if got := annotate(problem("rateLimited", 429), &capture{}, now, time.Minute); !errors.As(got, &rl) || !rl.Guessed || !rl.RetryAfter.Equal(now.Add(time.Minute)) {
		t.Errorf("problem only: %v", got)
	}
}

// The typed error says what the CA said and nothing more: status, problem,
// its words and Retry-After, found with errors.As through any wrapping.
// Which limit those words name is ratelimit's reading; Classify hands the
// words on unchanged.
func TestCAErrorReportsWhatTheCASaid(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fqdn := "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s"
	c := &capture{}
	c.status(429)
	c.retryAfter(429, now.Add(time.Hour))
	p := acme.Problem{Type: acme.ProblemTypeRateLimited, Status: 429, Detail: fqdn}
	err := fmt.Errorf("acmeissuer: obtaining a certificate for [a.example.com]: %w", annotate(fmt.Errorf("creating new order: %w", p), c, now, time.Minute))
	var ce *CAError
	if !errors.As(err, &ce) {
		t.Fatalf("%v is not a *CAError", err)
	}
	if ce.Status != 429 || !ce.RateLimited() || ce.Problem.Type != p.Type || ce.Problem.Detail != fqdn || ce.Detail != fqdn || !ce.RetryAfter.Equal(now.Add(time.Hour)) || ce.Guessed {
		t.Errorf("CAError = %+v", ce)
	}
	var inner acme.Problem
	if !errors.As(err, &inner) || inner.Detail != fqdn || !strings.Contains(err.Error(), "rate limited by the CA until 2026-01-01T01:00:00Z") {
		t.Errorf("wrapping: %v", err)
	}
	if got := Classify(err); got.Class != RateLimited || got.Detail != fqdn || !got.RetryAfter.Equal(ce.RetryAfter) {
		t.Errorf("Classify = %+v", got)
	}

	// A final 5xx with a problem keeps the problem too; it is no rate limit.
	c = &capture{}
	c.status(503)
	c.retryAfter(503, now.Add(time.Minute))
	busy := acme.Problem{Type: acme.ProblemTypeServerInternal, Status: 503, Detail: "try later"}
	err = annotate(busy, c, now, time.Minute)
	if !errors.As(err, &ce) || ce.Status != 503 || ce.RateLimited() || ce.Detail != "try later" || !ce.RetryAfter.Equal(now.Add(time.Minute)) || err.Error() != "HTTP 503: "+busy.Error() {
		t.Errorf("503: %v (%+v)", err, ce)
	}
}

// Unavailable is what the CA's circuit breaker counts: the CA down or
// failing, never the CA refusing the request; Answered is the CA up.
func TestUnavailable(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("acmeissuer: obtaining a certificate for [a.test]: %w", err) }
	refused := &url.Error{Op: "Post", URL: "https://ca/new-order", Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}}
	for _, tc := range []struct {
		name                  string
		err                   error
		unavailable, answered bool
	}{
		{"nil", nil, false, false},
		{"connection refused", wrap(refused), true, false},
		{"order timeout", wrap(context.DeadlineExceeded), true, false},
		{"unexpected EOF", wrap(io.ErrUnexpectedEOF), true, false},
		{"500 problem", wrap(problem("serverInternal", 500)), true, false},
		{"503 CAError", wrap(&CAError{Status: 503, Err: errors.New("HTTP 503")}), true, false},
		{"429 CAError", wrap(&CAError{Status: 429, Err: problem("rateLimited", 429)}), false, true},
		{"unauthorized", wrap(problem("unauthorized", 403)), false, true},
		{"validation could not connect", wrap(problem("connection", 400)), false, true},
		{"invalid request", fmt.Errorf("%w: SANs", ErrInvalidRequest), false, false},
		{"shutdown", wrap(context.Canceled), false, false},
	} {
		if got := Unavailable(tc.err); got != tc.unavailable {
			t.Errorf("%s: Unavailable = %v, want %v", tc.name, got, tc.unavailable)
		}
		if got := Answered(tc.err); got != tc.answered {
			t.Errorf("%s: Answered = %v, want %v", tc.name, got, tc.answered)
		}
	}
}
