package acmeissuer

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/certfleet/certfleet/internal/clock"
)

// MaxRetryAfter caps how far in the future a Retry-After is believed, so a
// broken or hostile CA cannot stop the fleet for years. Let's Encrypt's longest
// window is 7 days.
const MaxRetryAfter = 8 * 24 * time.Hour

// RetryAfterTransport is an http.RoundTripper that reads what acmez drops: the
// Retry-After header of 429 (and 503) responses. For each such response it
// calls OnRetryAfter (when set), and, for requests made by an Issuer, records
// the time in a capture carried by the request's context, so Obtain can turn
// acmez's error into a *CAError. It also records the status of the
// last response, so a non-JSON 5xx is still classified as retryable. It does
// not alter requests or responses. New installs it around Config.HTTPClient.
type RetryAfterTransport struct {
	// Base performs the requests; nil means http.DefaultTransport.
	Base http.RoundTripper
	// Clock tells the time for relative Retry-After values; nil means the
	// wall clock.
	Clock clock.Clock
	// OnRetryAfter, when set, is called synchronously for every 429 or 503
	// response with the absolute time the server asked us to wait until (zero
	// when the header is absent or unparsable). It must be quick and safe for
	// concurrent use.
	OnRetryAfter func(req *http.Request, status int, until time.Time)
}

// RoundTrip implements http.RoundTripper.
func (t *RetryAfterTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	resp, err := base.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	c, _ := req.Context().Value(captureKey{}).(*capture)
	if c != nil {
		c.status(resp.StatusCode)
		if resp.StatusCode == http.StatusCreated && req.Method == http.MethodPost {
			c.created(req.URL.String(), resp.Header.Get("Location"))
		}
	}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		until, _ := ParseRetryAfter(resp.Header.Get("Retry-After"), clock.Or(t.Clock).Now())
		if c != nil {
			c.retryAfter(resp.StatusCode, until)
		}
		if t.OnRetryAfter != nil {
			t.OnRetryAfter(req, resp.StatusCode, until)
		}
	}
	return resp, nil
}

// ParseRetryAfter turns a Retry-After value (delay seconds or an HTTP date,
// RFC 9110 §10.2.3) into an absolute time, capped at now+MaxRetryAfter. It
// reports false for an empty or malformed value, or a negative delay. A date in
// the past yields now.
func ParseRetryAfter(v string, now time.Time) (time.Time, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return time.Time{}, false
	}
	var until time.Time
	if v[0] >= '0' && v[0] <= '9' {
		secs, err := strconv.ParseUint(v, 10, 64)
		if err != nil && !isRangeErr(err) {
			return time.Time{}, false
		}
		if err != nil || secs > uint64(MaxRetryAfter/time.Second) {
			return now.Add(MaxRetryAfter), true
		}
		until = now.Add(time.Duration(secs) * time.Second)
	} else {
		t, err := http.ParseTime(v)
		if err != nil {
			return time.Time{}, false
		}
		until = t
	}
	if until.Before(now) {
		until = now
	}
	if limit := now.Add(MaxRetryAfter); until.After(limit) {
		until = limit
	}
	return until, true
}

func isRangeErr(err error) bool {
	ne, ok := err.(*strconv.NumError)
	return ok && ne.Err == strconv.ErrRange
}

type captureKey struct{}

// capture is what RetryAfterTransport learnt during one ACME operation.
type capture struct {
	mu          sync.Mutex
	lastStatus  int
	limited     bool      // a 429 was seen
	limitedTill time.Time // its Retry-After (zero: none given)
	unavailTill time.Time // a 503's Retry-After

	newOrderURL string           // the directory's newOrder endpoint
	onOrder     func(url string) // called when newOrderURL answers 201 with a Location
}

// created reports a 201 to a POST: when it answered newOrder, the order
// exists at the CA and onOrder learns its URL (synchronously, before acmez
// goes on with the order).
func (c *capture) created(reqURL, location string) {
	c.mu.Lock()
	hook := c.onOrder
	match := c.newOrderURL != "" && reqURL == c.newOrderURL
	c.mu.Unlock()
	if hook != nil && match && location != "" {
		hook(location)
	}
}

func (c *capture) status(s int) {
	c.mu.Lock()
	c.lastStatus = s
	c.mu.Unlock()
}

func (c *capture) retryAfter(status int, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if status == http.StatusTooManyRequests {
		c.limited = true
		if until.After(c.limitedTill) {
			c.limitedTill = until
		}
	} else if until.After(c.unavailTill) {
		c.unavailTill = until
	}
}

func (c *capture) snapshot() (lastStatus int, limited bool, limitedTill, unavailTill time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastStatus, c.limited, c.limitedTill, c.unavailTill
}

// withCapture returns a context whose HTTP requests (through a
// RetryAfterTransport) record into the returned capture.
func withCapture(ctx context.Context) (context.Context, *capture) {
	c := &capture{}
	return context.WithValue(ctx, captureKey{}, c), c
}
