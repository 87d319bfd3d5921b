package acmeissuer

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/testenv"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		in   string
		want time.Time
		ok   bool
	}{
		{"120", now.Add(2 * time.Minute), true},
		{" 0 ", now, true},
		{"Sun, 01 Mar 2026 13:00:00 GMT", now.Add(time.Hour), true},
		{"Sunday, 01-Mar-26 13:00:00 GMT", now.Add(time.Hour), true}, // RFC 850
		{"Sun Mar  1 13:00:00 2026", now.Add(time.Hour), true},       // asctime
		{"Sun, 01 Mar 2026 11:00:00 GMT", now, true},                 // past date: now
		{"999999999999999999999999", now.Add(MaxRetryAfter), true},   // overflow: capped
		{"31536000", now.Add(MaxRetryAfter), true},                   // a year: capped
		{"Sun, 01 Mar 2099 13:00:00 GMT", now.Add(MaxRetryAfter), true},
		{"", time.Time{}, false},
		{"-5", time.Time{}, false},
		{"1.5", time.Time{}, false},
		{"12abc", time.Time{}, false},
		{"soon", time.Time{}, false},
	}
	for _, c := range cases {
		got, ok := ParseRetryAfter(c.in, now)
		if ok != c.ok || !got.Equal(c.want) {
			t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

// The transport reports Retry-After of 429 and 503 responses, to the hook and
// to the capture of the request's context, and passes everything through.
func TestRetryAfterTransport(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/limited":
			w.Header().Set("Retry-After", "120")
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = io.WriteString(w, `{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many"}`)
		case "/limited-date":
			w.Header().Set("Retry-After", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat))
			w.WriteHeader(http.StatusTooManyRequests)
		case "/limited-bare":
			w.WriteHeader(http.StatusTooManyRequests)
		case "/unavailable":
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			w.Header().Set("Retry-After", "999") // ignored on a 200
			_, _ = io.WriteString(w, "ok")
		}
	}))
	defer srv.Close()
	now := time.Now()
	type call struct {
		path   string
		status int
		until  time.Time
	}
	var mu sync.Mutex
	var calls []call
	tr := &RetryAfterTransport{Clock: clock.NewFake(now), OnRetryAfter: func(r *http.Request, status int, until time.Time) {
		mu.Lock()
		calls = append(calls, call{r.URL.Path, status, until})
		mu.Unlock()
	}}
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	get := func(ctx context.Context, path string) *http.Response {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if path == "/limited" && !strings.Contains(string(body), "rateLimited") {
			t.Errorf("body not passed through: %q", body)
		}
		return resp
	}
	ctx, c := withCapture(context.Background())
	if resp := get(ctx, "/limited"); resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "120" {
		t.Fatalf("response altered: %d %v", resp.StatusCode, resp.Header)
	}
	if last, limited, till, _ := c.snapshot(); last != 429 || !limited || !till.Equal(now.Add(2*time.Minute)) {
		t.Fatalf("capture = %d %v %v", last, limited, till)
	}
	get(ctx, "/ok")
	if last, limited, _, _ := c.snapshot(); last != 200 || !limited {
		t.Fatalf("capture after 200 = %d %v; want last 200, still limited", last, limited)
	}
	get(context.Background(), "/limited-date")
	get(context.Background(), "/limited-bare")
	ctx2, c2 := withCapture(context.Background())
	get(ctx2, "/unavailable")
	if last, limited, _, unavail := c2.snapshot(); last != 503 || limited || !unavail.Equal(now.Add(30*time.Second)) {
		t.Fatalf("503 capture = %d %v %v", last, limited, unavail)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 4 {
		t.Fatalf("hook calls = %+v; want 4 (not for the 200)", calls)
	}
	if d := calls[1].until.Sub(now.Add(time.Hour)); d < -2*time.Second || d > 2*time.Second {
		t.Errorf("HTTP-date Retry-After = %v; want ~now+1h", calls[1].until)
	}
	if !calls[2].until.IsZero() {
		t.Errorf("bare 429 reported %v; want zero", calls[2].until)
	}
	if calls[3].status != 503 {
		t.Errorf("503 reported as %d", calls[3].status)
	}
}

// faultInjector answers requests to one path with a canned response and
// forwards everything else.
type faultInjector struct {
	next  http.RoundTripper
	path  string
	hits  atomic.Int64
	build func() *http.Response
}

func (f *faultInjector) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Path == f.path && f.build != nil {
		f.hits.Add(1)
		if req.Body != nil {
			_, _ = io.Copy(io.Discard, req.Body)
			req.Body.Close()
		}
		resp := f.build()
		resp.Request = req
		return resp, nil
	}
	return f.next.RoundTrip(req)
}

func cannedResponse(status int, header map[string]string, body string) func() *http.Response {
	return func() *http.Response {
		h := http.Header{"Replay-Nonce": {"bm9uY2U"}}
		for k, v := range header {
			h.Set(k, v)
		}
		return &http.Response{StatusCode: status, Status: http.StatusText(status), Header: h,
			Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body)), ProtoMajor: 1, ProtoMinor: 1}
	}
}

// A 429 from the CA on newOrder (injected in front of the real Pebble, which
// has no rate limits) reaches the caller as a rate-limited *CAError with the
// CA's problem, words and Retry-After, which is what the pipeline hands to
// ratelimit to penalise the buckets the CA named. Without a Retry-After the
// default penalty applies; a plain-text 502 is retryable.
func TestObtainCARateLimitAndServerErrors(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	inj := &faultInjector{path: "/order-plz"}
	iss := newTestIssuer(t, s, d, func(c *Config) {
		c.HTTPClient = pebbleHTTPClient(t, s, inj)
		c.DefaultPenalty = 7 * time.Minute
	})
	req := Request{SANs: []string{"limited-" + randomSuffix() + ".certfleet.test"}}

	problem := `{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many new orders (300) from this account in the last 3h0m0s, retry after 2026-01-01 03:00:00 UTC: see https://letsencrypt.org/docs/rate-limits/#new-orders-per-account","status":429}`
	inj.build = cannedResponse(429, map[string]string{"Retry-After": "3600", "Content-Type": "application/problem+json"}, problem)
	start := time.Now()
	_, err := iss.Obtain(ctx, req)
	var rl *CAError
	if !errors.As(err, &rl) || !rl.RateLimited() || rl.Status != http.StatusTooManyRequests {
		t.Fatalf("err = %v; want a rate-limited *CAError", err)
	}
	if d := rl.RetryAfter.Sub(start.Add(time.Hour)); d < -5*time.Second || d > 5*time.Second || rl.Guessed {
		t.Errorf("RetryAfter = %v (guessed %v); want ~now+1h from the header", rl.RetryAfter, rl.Guessed)
	}
	if rl.Problem.Type != acme.ProblemTypeRateLimited || !strings.Contains(rl.Problem.Detail, "too many new orders") || rl.Detail != rl.Problem.Detail {
		t.Errorf("problem = %+v, detail %q", rl.Problem, rl.Detail)
	}
	cl := Classify(err)
	if cl.Class != RateLimited || !cl.RetryAfter.Equal(rl.RetryAfter) || cl.ProblemType != acme.ProblemTypeRateLimited || cl.Detail != rl.Detail {
		t.Errorf("Classify = %+v", cl)
	}

	// A 429 without Retry-After, in words no one knows: the default
	// penalty.
	inj.build = cannedResponse(429, map[string]string{"Content-Type": "application/problem+json"},
		`{"type":"urn:ietf:params:acme:error:rateLimited","detail":"slow down","status":429}`)
	_, err = iss.Obtain(ctx, req)
	if !errors.As(err, &rl) || !rl.Guessed || rl.Detail != "slow down" {
		t.Fatalf("bare 429: err = %v", err)
	}
	if d := rl.RetryAfter.Sub(time.Now().Add(7 * time.Minute)); d < -5*time.Second || d > 5*time.Second {
		t.Errorf("bare 429 RetryAfter = %v; want ~now+DefaultPenalty", rl.RetryAfter)
	}

	inj.build = cannedResponse(502, map[string]string{"Content-Type": "text/html"}, "<html>bad gateway</html>")
	hits := inj.hits.Load()
	_, err = iss.Obtain(ctx, req)
	var se *CAError
	if !errors.As(err, &se) || se.Status != 502 || se.RateLimited() || Classify(err).Class != Retry {
		t.Fatalf("502: err = %v, class %v; want *CAError 502, Retry", err, Classify(err).Class)
	}
	t.Logf("502 attempts by acmez: %d", inj.hits.Load()-hits)

	// The fault gone, the same issuer obtains normally.
	inj.build = nil
	res, err := iss.Obtain(ctx, req)
	if err != nil {
		t.Fatalf("after faults: %v", err)
	}
	verify(t, s, res, req.SANs...)
}
