package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/mholt/acmez/v3/acme"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/caconfig"
	"github.com/certfleet/certfleet/ratelimit"
)

// want is what one record must lead to.
type want struct {
	events    []events.Type // types published to the events topic, in order
	retry     int           // records re-queued to the retry topic
	dlq       int           // records dead-lettered
	orders    int64         // Issuer.Obtain calls
	completes int           // Claims.Complete calls
	fails     int           // Claims.Fail calls
	releases  int           // Claims.Release calls
	refunds   int           // Tokens.Refund calls
}

// The job's decisions, one record each, through Worker.Run with a fake
// Fetcher: what is published where, what happens to the claim and the
// tokens, how often the CA is asked, and that the record is committed.
func TestJobDecisions(t *testing.T) {
	stored := storedObtained(t) // an outcome stored by an earlier success
	rateLimited := func(retryAfter time.Time) error {
		p := acme.Problem{Type: acme.ProblemTypeRateLimited, Status: 429,
			Detail: "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-identifiers"}
		return fmt.Errorf("obtaining certificate: %w", &acmeissuer.CAError{Status: 429, RetryAfter: retryAfter, Problem: p, Detail: p.Detail, Err: p})
	}
	for _, tc := range []struct {
		name  string
		req   func(r *events.IssuanceRequest)       // changes to the request
		fails int                                   // the record's failed attempts (HeaderFailures)
		setup func(h *harness)                      // state of the fakes
		want  want                                  //
		check func(t *testing.T, h *harness, r run) // further checks
	}{
		{
			name: "valid request: certificate obtained, stored, published",
			want: want{events: []events.Type{events.TypeCertObtained}, orders: 1, completes: 1},
			check: func(t *testing.T, h *harness, r run) {
				ob := r.events[0].Data.(*events.CertObtained)
				if ob.RequestID != r.req.RequestID || ob.Attempts != 1 || !slices.Equal(ob.SANs, r.req.SANs) || ob.Issuer == "" {
					t.Errorf("cert_obtained %+v does not describe the request", ob)
				}
				if r.events[0].ID != events.EventID(r.req.RequestID, events.TypeCertObtained, "") {
					t.Errorf("cert_obtained ce_id %s is not the request's stable id", r.events[0].ID)
				}
				row := h.claims.rows[r.req.RequestID]
				kept, err := decodeStored(row.outcome, h.topics.Events)
				if row.state != certstore.StateSucceeded || err != nil || !bytes.Equal(kept.Value, r.msgs[0].Value) {
					t.Errorf("claim in state %s, not completed with the published event (%v)", row.state, err)
				}
			},
		},
		{
			name: "already done: the stored event is re-published byte for byte, nothing ordered",
			setup: func(h *harness) {
				h.claims.script["req-1"] = certstore.ClaimResult{Done: true, State: certstore.StateSucceeded, Outcome: stored.raw}
			},
			want: want{events: []events.Type{events.TypeCertObtained}},
			check: func(t *testing.T, h *harness, r run) {
				got := r.msgs[0]
				if !bytes.Equal(got.Key, stored.msg.Key) || !bytes.Equal(got.Value, stored.msg.Value) || !slices.EqualFunc(got.Headers, stored.msg.Headers, func(a, b kafka.Header) bool {
					return a.Key == b.Key && bytes.Equal(a.Value, b.Value)
				}) {
					t.Errorf("re-published record differs from the stored one")
				}
				if spends, _ := h.tokens.counts(); spends != 0 {
					t.Errorf("%d token spends for a finished request", spends)
				}
			},
		},
		{
			name:  "busy on another worker: deferred InFlight until BusyRetry, claim untouched, no failure counted",
			fails: 4, // MaxAttempts is 5: a failure more would end it
			setup: func(h *harness) {
				h.claims.script["req-1"] = certstore.ClaimResult{Busy: true, State: certstore.StateOrdering, LeaseUntil: t0.Add(4 * time.Minute)}
			},
			want: want{events: []events.Type{events.TypeIssuanceDeferred}, retry: 1},
			check: func(t *testing.T, h *harness, r run) {
				checkDeferred(t, r, "InFlight", "req-1", t0.Add(5*time.Second))
				if spends, _ := h.tokens.counts(); spends != 0 {
					t.Errorf("%d token spends while another worker orders", spends)
				}
			},
		},
		{
			name: "busy with the lease ending sooner than BusyRetry: deferred to the lease end",
			setup: func(h *harness) {
				h.claims.script["req-1"] = certstore.ClaimResult{Busy: true, State: certstore.StateOrdering, LeaseUntil: t0.Add(2 * time.Second)}
			},
			want: want{events: []events.Type{events.TypeIssuanceDeferred}, retry: 1},
			check: func(t *testing.T, h *harness, r run) {
				checkDeferred(t, r, "InFlight", "req-1", t0.Add(3*time.Second))
			},
		},
		{
			name: "tokens denied: deferred naming the limit, retry at now+RetryIn, claim released",
			setup: func(h *harness) {
				h.tokens.deny = &ratelimit.Result{Decision: ratelimit.Decision{RetryIn: 90 * time.Second},
					Limiting: &ratelimit.Transaction{Name: ratelimit.CertificatesPerDomain, Value: "example.com"}}
			},
			want: want{events: []events.Type{events.TypeIssuanceDeferred}, retry: 1, releases: 1},
			check: func(t *testing.T, h *harness, r run) {
				checkDeferred(t, r, "CertificatesPerDomain", ":CertificatesPerDomain:example.com", t0.Add(90*time.Second))
			},
		},
		{
			name: "tokens denied briefly (fleet budget): waited out in place, then obtained; nothing re-queued",
			setup: func(h *harness) {
				h.tokens.deny = &ratelimit.Result{Decision: ratelimit.Decision{RetryIn: 20 * time.Millisecond},
					Limiting: &ratelimit.Transaction{Name: ratelimit.FleetOrdersPerSecond, Value: "*"}}
				h.tokens.denials = 2
			},
			want: want{events: []events.Type{events.TypeCertObtained}, orders: 1, completes: 1},
			check: func(t *testing.T, h *harness, r run) {
				if spends, _ := h.tokens.counts(); spends != 3 {
					t.Errorf("%d spends, want 3 (two denied, waited out, then allowed)", spends)
				}
			},
		},
		{
			name: "CA answers 429: tokens refunded, deferred to Retry-After; the buckets the CA named penalised until then",
			setup: func(h *harness) {
				h.issuer.obtain = func(_ context.Context, req acmeissuer.Request, _ int64) (*acmeissuer.Result, error) {
					return nil, rateLimited(t0.Add(10 * time.Minute))
				}
			},
			want: want{events: []events.Type{events.TypeIssuanceDeferred}, retry: 1, orders: 1, releases: 1, refunds: 1},
			check: func(t *testing.T, h *harness, r run) {
				checkDeferred(t, r, "CA", "https://ca.test/dir", t0.Add(10*time.Minute))
				// fakeLimits charges one domain bucket and the fleet budget; the
				// fleet budget is ours, not the CA's, and is never penalised.
				want := map[string]time.Time{":CertificatesPerDomain:www.example.com": t0.Add(10 * time.Minute)}
				if got := h.tokens.penalties; !maps.Equal(got, want) {
					t.Errorf("penalties %v; want %v", got, want)
				}
			},
		},
		{
			// Classify calls a bare rateLimited problem RateLimited without a
			// RetryAfter; the job must still defer to a real time.
			name: "CA answers rateLimited without Retry-After: deferred by RetryDelay",
			setup: func(h *harness) {
				h.issuer.obtain = func(context.Context, acmeissuer.Request, int64) (*acmeissuer.Result, error) {
					return nil, acme.Problem{Type: acme.ProblemTypeRateLimited, Status: 429}
				}
			},
			want: want{events: []events.Type{events.TypeIssuanceDeferred}, retry: 1, orders: 1, releases: 1, refunds: 1},
			check: func(t *testing.T, h *harness, r run) {
				checkDeferred(t, r, "CA", "https://ca.test/dir", t0.Add(30*time.Second))
			},
		},
		{
			name:  "CA answers 5xx: retried OrderRetries times, then cert_failed(retryable) and re-queued",
			req:   func(r *events.IssuanceRequest) { r.Attempt = 2 },
			fails: 2,
			setup: func(h *harness) {
				h.issuer.obtain = func(context.Context, acmeissuer.Request, int64) (*acmeissuer.Result, error) {
					return nil, &acmeissuer.CAError{Status: 503, Err: errors.New("service unavailable")}
				}
			},
			want: want{events: []events.Type{events.TypeCertFailed}, retry: 1, orders: 3, releases: 1},
			check: func(t *testing.T, h *harness, r run) {
				next := t0.Add(30 * time.Second << 2) // RetryDelay doubled per failed attempt
				f := r.events[0].Data.(*events.CertFailed)
				if !f.Retryable || !f.NextAttemptAt.Equal(next) || f.Attempt != 3 || f.ProblemType != "urn:certfleet:error:caUnavailable" {
					t.Errorf("cert_failed %+v, want retryable, next attempt at %s, attempt 3", f, next)
				}
				checkRetry(t, r, next, 3)
				if n := failuresOf(h.writer.on(h.topics.Retry)[0]); n != 3 {
					t.Errorf("retry record counts %d failures, want 3", n)
				}
			},
		},
		{
			// Deferrals are not failures: however often a request was
			// deferred (its attempt), the backoff after a failure is the
			// first one, and the retry record keeps counting failures only.
			name: "CA answers 5xx after many deferrals: the first backoff",
			req:  func(r *events.IssuanceRequest) { r.Attempt = 250 },
			setup: func(h *harness) {
				h.issuer.obtain = func(context.Context, acmeissuer.Request, int64) (*acmeissuer.Result, error) {
					return nil, &acmeissuer.CAError{Status: 503, Err: errors.New("service unavailable")}
				}
			},
			want: want{events: []events.Type{events.TypeCertFailed}, retry: 1, orders: 3, releases: 1},
			check: func(t *testing.T, h *harness, r run) {
				checkRetry(t, r, t0.Add(30*time.Second), 251)
				if n := failuresOf(h.writer.on(h.topics.Retry)[0]); n != 1 {
					t.Errorf("retry record counts %d failures, want 1", n)
				}
			},
		},
		{
			name: "CA answers 5xx once: the retry in place obtains it",
			setup: func(h *harness) {
				h.issuer.obtain = func(_ context.Context, req acmeissuer.Request, n int64) (*acmeissuer.Result, error) {
					if n == 1 {
						return nil, acme.Problem{Type: acme.ProblemTypeServerInternal, Status: 500}
					}
					return issueTest(req.SANs)
				}
			},
			want: want{events: []events.Type{events.TypeCertObtained}, orders: 2, completes: 1},
		},
		{
			name: "permanent ACME problem: cert_failed(not retryable), claim failed",
			setup: func(h *harness) {
				h.issuer.obtain = func(context.Context, acmeissuer.Request, int64) (*acmeissuer.Result, error) {
					return nil, fmt.Errorf("order: %w", acme.Problem{Type: acme.ProblemTypeRejectedIdentifier, Status: 400, Detail: "forbidden name"})
				}
			},
			want: want{events: []events.Type{events.TypeCertFailed}, orders: 1, fails: 1},
			check: func(t *testing.T, h *harness, r run) {
				f := r.events[0].Data.(*events.CertFailed)
				if f.Retryable || !f.NextAttemptAt.IsZero() || f.ProblemType != acme.ProblemTypeRejectedIdentifier || f.Detail != "forbidden name" {
					t.Errorf("cert_failed %+v, want the CA's permanent problem", f)
				}
				if h.claims.rows["req-1"].state != certstore.StateFailed {
					t.Errorf("claim state %s, want failed", h.claims.rows["req-1"].state)
				}
			},
		},
		{
			name: "validation failed (unauthorized): permanent, and a failed authorization spent for each name",
			setup: func(h *harness) {
				h.issuer.obtain = func(context.Context, acmeissuer.Request, int64) (*acmeissuer.Result, error) {
					return nil, fmt.Errorf("solving challenge: %w", acme.Problem{Type: acme.ProblemTypeUnauthorized, Status: 403, Detail: "wrong key authorization"})
				}
			},
			want: want{events: []events.Type{events.TypeCertFailed}, orders: 1, fails: 1},
			check: func(t *testing.T, h *harness, r run) {
				if spends, _ := h.tokens.counts(); spends != 2 {
					t.Errorf("%d spends, want 2: the order's tokens, then the failed authorizations", spends)
				}
			},
		},
		{
			// A CA's detail is foreign text: control and bidi characters, and
			// multi-byte runes cut by the length bound, must not make the
			// cert_failed event invalid (the record would be stuck).
			name: "permanent ACME problem with hostile detail: still cert_failed",
			setup: func(h *harness) {
				h.issuer.obtain = func(context.Context, acmeissuer.Request, int64) (*acmeissuer.Result, error) {
					return nil, acme.Problem{Type: acme.ProblemTypeCAA, Status: 403,
						Detail: "CAA forbids \u202egnp.exe\u0085 " + strings.Repeat("é", 600) + "\xff"}
				}
			},
			want: want{events: []events.Type{events.TypeCertFailed}, orders: 1, fails: 1},
		},
		{
			name:  "too many failed attempts: cert_failed without ordering, claim failed",
			req:   func(r *events.IssuanceRequest) { r.Attempt = 5 },
			fails: 5,
			want:  want{events: []events.Type{events.TypeCertFailed}, fails: 1},
			check: func(t *testing.T, h *harness, r run) {
				f := r.events[0].Data.(*events.CertFailed)
				if f.Retryable || f.ProblemType != "urn:certfleet:error:tooManyAttempts" || f.Attempt != 6 {
					t.Errorf("cert_failed %+v, want tooManyAttempts", f)
				}
				if spends, _ := h.tokens.counts(); spends != 0 {
					t.Errorf("%d token spends for a request given up", spends)
				}
			},
		},
		{
			// The attempt cap must not contradict a request that succeeded
			// meanwhile (its duplicate was faster than its retry record).
			name:  "too many failed attempts but already done: the stored event is re-published",
			req:   func(r *events.IssuanceRequest) { r.Attempt = 7 },
			fails: 7,
			setup: func(h *harness) {
				h.claims.script["req-1"] = certstore.ClaimResult{Done: true, State: certstore.StateSucceeded, Outcome: stored.raw}
			},
			want: want{events: []events.Type{events.TypeCertObtained}},
		},
		{
			name:  "database fails twice: Claim retried, then obtained; nothing dead-lettered",
			setup: func(h *harness) { h.claims.errs = 2 },
			want:  want{events: []events.Type{events.TypeCertObtained}, orders: 1, completes: 1},
			check: func(t *testing.T, h *harness, r run) {
				if claims, _, _, _ := h.claims.counts(); claims != 3 {
					t.Errorf("%d Claim calls, want 3", claims)
				}
			},
		},
		{
			name: "database refuses the request's data: dead-lettered at once, not retried for ever",
			setup: func(h *harness) {
				h.claims.err = &pgconn.PgError{Code: "22021", Message: "invalid byte sequence for encoding \"UTF8\": 0x00"}
			},
			want: want{dlq: 1, releases: 1},
			check: func(t *testing.T, h *harness, r run) {
				if claims, _, _, _ := h.claims.counts(); claims != 1 {
					t.Errorf("%d Claim calls, want 1", claims)
				}
				d, _ := events.ReadDeadLetter(h.writer.on(h.topics.DLQ)[0])
				if !strings.Contains(d.Reason, "22021") || !strings.Contains(d.Reason, "refused") {
					t.Errorf("dead-letter reason %q does not say the database refused the data", d.Reason)
				}
			},
		},
		{
			name: "every order the CA creates is charged: a second order inside one attempt spends NewOrdersPerAccount again, unchecked, under the CA's account key",
			setup: func(h *harness) {
				h.issuer.obtain = func(ctx context.Context, req acmeissuer.Request, _ int64) (*acmeissuer.Result, error) {
					// A failed validation's fallback: the CA created two orders.
					req.OnOrder(ctx, acmeissuer.PendingOrder{URL: "https://ca.test/order/1"})
					req.OnOrder(ctx, acmeissuer.PendingOrder{URL: "https://ca.test/order/2"})
					return issueTest(req.SANs)
				}
				h.accountKey = func(string) string { return "shared" }
			},
			want: want{events: []events.Type{events.TypeCertObtained}, orders: 1, completes: 1},
			check: func(t *testing.T, h *harness, r run) {
				if len(h.tokens.spent) != 2 {
					t.Fatalf("%d spends, want the order's and one for the second order", len(h.tokens.spent))
				}
				if acct := h.tokens.spent[0][0]; acct.Name != ratelimit.NewOrdersPerAccount || acct.Value != "shared" {
					t.Errorf("the order's first transaction is %s:%s, want NewOrdersPerAccount keyed by the CA's account key", acct.Name, acct.Value)
				}
				extra := h.tokens.spent[1]
				if len(extra) != 1 || extra[0].Name != ratelimit.NewOrdersPerAccount || extra[0].Mode != ratelimit.ModeSpendNoCheck || extra[0].Value != "shared" {
					t.Errorf("second spend %+v, want one NewOrdersPerAccount transaction, unchecked, key shared", extra)
				}
			},
		},
		{
			name:  "database busy (serialization failure): retried, then obtained",
			setup: func(h *harness) { h.claims.errs, h.claims.errCode = 2, "40001" },
			want:  want{events: []events.Type{events.TypeCertObtained}, orders: 1, completes: 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			if tc.setup != nil {
				tc.setup(h)
			}
			req := newRequest("req-1", "www.example.com")
			if tc.req != nil {
				tc.req(req)
			}
			m := record(t, h.topics.Requests, 3, 41, req)
			if tc.fails > 0 {
				m = withFailures(m, tc.fails)
			}
			r := runOne(t, h, m)
			r.req, r.fails = req, tc.fails
			checkWant(t, h, r, tc.want)
			if tc.check != nil && !t.Failed() {
				tc.check(t, h, r)
			}
		})
	}
}

// Records that can never succeed go to the DLQ, unchanged, with why and where
// from in the headers, and are committed; nothing is ordered.
func TestJobDeadLetters(t *testing.T) {
	h0 := newHarness(t)
	wrongType := &events.CertFailed{RequestID: "r", SANs: []string{"a.example"}, Tenant: "t", CA: "pebble",
		ProblemType: "urn:certfleet:error:x", Attempt: 1}
	unknownCA := newRequest("req-1", "www.example.com")
	unknownCA.CA = "no-such-ca"
	badSAN := record(t, h0.topics.Requests, 0, 0, newRequest("req-2", "ok.example"))
	badSAN.Value = bytes.Replace(badSAN.Value, []byte(`"ok.example"`), []byte(`"exa mple..com"`), 1)
	for _, tc := range []struct {
		name   string
		msg    kafka.Message
		reason string // a word the reason must contain
	}{
		{"malformed JSON", kafka.Message{Key: []byte("k"), Value: []byte("{not json"), Headers: record(t, "x", 0, 0, newRequest("r", "a.example")).Headers}, "json"},
		{"no CloudEvents headers", kafka.Message{Value: []byte(`{}`)}, "ce_"},
		{"oversized", kafka.Message{Value: make([]byte, 70<<10)}, "bytes"},
		{"wrong event type", record(t, "x", 0, 0, wrongType), "issuance.requested belongs"},
		{"unknown CA", record(t, "x", 0, 0, unknownCA), "unknown CA"},
		{"invalid SAN", badSAN, "sans"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			m := tc.msg
			m.Topic, m.Partition, m.Offset = h.topics.Retry, 2, 77
			r := runOne(t, h, m)
			checkWant(t, h, r, want{dlq: 1})
			if t.Failed() {
				return
			}
			dl := h.writer.on(h.topics.DLQ)[0]
			d, ok := events.ReadDeadLetter(dl)
			if !ok || d.Topic != h.topics.Retry || d.Partition != 2 || d.Offset != 77 || d.Group == "" || !d.Time.Equal(t0) {
				t.Errorf("dead letter %+v lacks its origin", d)
			}
			if !strings.Contains(strings.ToLower(d.Reason), strings.ToLower(tc.reason)) {
				t.Errorf("reason %q does not mention %q", d.Reason, tc.reason)
			}
			if !bytes.Equal(dl.Value, m.Value) || !bytes.Equal(dl.Key, m.Key) {
				t.Error("dead-lettered record is not the original")
			}
		})
	}
}

// A batch the limiter refuses as invalid (ratelimit.ErrInvalidRequest) fails
// the same way every time: the record is dead-lettered once, not retried for
// ever while it holds its partition's commits.
func TestInvalidSpendIsDeadLettered(t *testing.T) {
	h := newHarness(t)
	h.tokens.err = fmt.Errorf("deciding 6 buckets: %w: key appears twice", ratelimit.ErrInvalidRequest)
	r := runOne(t, h, record(t, h.topics.Requests, 0, 0, newRequest("req-inv", "www.example.com")))
	checkWant(t, h, r, want{dlq: 1, releases: 1})
	if spends, _ := h.tokens.counts(); spends != 1 {
		t.Errorf("%d spends, want 1 (no retry of a refused batch)", spends)
	}
	if dl := h.writer.on(h.topics.DLQ); len(dl) == 1 {
		if d, _ := events.ReadDeadLetter(dl[0]); !strings.Contains(d.Reason, "appears twice") {
			t.Errorf("reason %q does not say why", d.Reason)
		}
	}
}

// run is what a single-record Run produced.
type run struct {
	req    *events.IssuanceRequest
	msgs   []kafka.Message // on the events topic
	events []events.Event  // the same, decoded
	retry  []events.Event  // on the retry topic, decoded
	fails  int             // the record's failed attempts (HeaderFailures)
	raw    []kafka.Message // on the retry topic
}

// runOne runs a worker over m alone until it is finished, then stops it.
func runOne(t *testing.T, h *harness, m kafka.Message) run {
	t.Helper()
	rr := h.run(h.worker(nil), 5*time.Second, m)
	rr.waitIdle()
	rr.stop()
	if got := rr.f.committed(m.Partition); !slices.Equal(got, []int64{m.Offset}) {
		t.Errorf("commits %v, want the record's offset %d", got, m.Offset)
	}
	out := run{msgs: h.writer.on(h.topics.Events)}
	out.events = decoded(t, out.msgs)
	out.raw = h.writer.on(h.topics.Retry)
	out.retry = decoded(t, out.raw)
	for _, m := range h.writer.msgs {
		if bytes.Contains(m.Value, []byte("PRIVATE KEY")) {
			t.Fatalf("key material written to %s", m.Topic)
		}
	}
	return out
}

func checkWant(t *testing.T, h *harness, r run, w want) {
	t.Helper()
	var types []events.Type
	for _, e := range r.events {
		types = append(types, e.Type())
	}
	if !slices.Equal(types, w.events) {
		t.Errorf("events %v, want %v", types, w.events)
	}
	if len(r.retry) != w.retry {
		t.Errorf("%d retry records, want %d", len(r.retry), w.retry)
	}
	if n := len(h.writer.on(h.topics.DLQ)); n != w.dlq {
		t.Errorf("%d DLQ records, want %d", n, w.dlq)
	}
	if n := h.issuer.calls.Load(); n != w.orders {
		t.Errorf("%d orders, want %d", n, w.orders)
	}
	_, completes, fails, releases := h.claims.counts()
	if completes != w.completes || fails != w.fails || releases != w.releases {
		t.Errorf("claims completed/failed/released %d/%d/%d, want %d/%d/%d", completes, fails, releases, w.completes, w.fails, w.releases)
	}
	if _, refunds := h.tokens.counts(); refunds != w.refunds {
		t.Errorf("%d refunds, want %d", refunds, w.refunds)
	}
}

// checkDeferred checks the issuance_deferred event and the retry record.
func checkDeferred(t *testing.T, r run, limit, key string, at time.Time) {
	t.Helper()
	d := r.events[0].Data.(*events.IssuanceDeferred)
	if d.Limit != limit || d.LimitKey != key || !d.RetryAt.Equal(at) || d.Attempt != r.req.Attempt+1 {
		t.Errorf("issuance_deferred %+v, want limit %s key %s retry at %s", d, limit, key, at)
	}
	checkRetry(t, r, at, r.req.Attempt+1)
	if len(r.raw) == 0 {
		return // a run built from decoded records only
	}
	if n := failuresOf(r.raw[0]); n != r.fails {
		t.Errorf("the deferral's retry record counts %d failures, want %d: a deferral is not a failure", n, r.fails)
	}
}

// checkRetry checks the re-queued request: the same request, later.
func checkRetry(t *testing.T, r run, notBefore time.Time, attempt int) {
	t.Helper()
	next := r.retry[0].Data.(*events.IssuanceRequest)
	if !next.NotBefore.Equal(notBefore) || next.Attempt != attempt {
		t.Errorf("retry record not_before %s attempt %d, want %s and %d", next.NotBefore, next.Attempt, notBefore, attempt)
	}
	same := *next
	same.NotBefore, same.Attempt = r.req.NotBefore, r.req.Attempt
	if !same.NotBefore.Equal(r.req.NotBefore) || fmt.Sprint(same) != fmt.Sprint(*r.req) {
		t.Errorf("retry record %+v is not the request %+v", same, *r.req)
	}
}

// storedObtained is a cert_obtained record as the store keeps it.
func storedObtained(t *testing.T) (s struct {
	msg kafka.Message
	raw []byte
}) {
	res, err := issueTest([]string{"www.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	s.msg = record(t, "", 0, 0, &events.CertObtained{RequestID: "req-1", SANs: []string{"www.example.com"}, Tenant: "acme-corp",
		CA: "pebble", Serial: res.Serial, NotBefore: res.NotBefore, NotAfter: res.NotAfter, ChainPEM: string(res.ChainPEM),
		ARICertID: res.ARICertID, Issuer: res.Leaf.Issuer.String(), Attempts: 1})
	if s.raw, err = encodeStored(s.msg); err != nil {
		t.Fatal(err)
	}
	return s
}

// A record waiting for its not_before holds no order slot, so the records
// after it are ordered; at shutdown it is handed back (never committed) while
// the finished records before it are committed.
func TestNotBeforeWaitsAndIsHandedBackAtShutdown(t *testing.T) {
	h := newHarness(t)
	later := newRequest("req-later", "later.example.com")
	later.NotBefore = t0.Add(time.Hour)
	var msgs []kafka.Message
	for i, req := range []*events.IssuanceRequest{
		newRequest("req-a", "a.example.com"), newRequest("req-b", "b.example.com"), later, newRequest("req-c", "c.example.com"),
	} {
		msgs = append(msgs, record(t, h.topics.Requests, 0, int64(10+i), req))
	}
	r := h.run(h.worker(func(c *Config) { c.Concurrency = 1 }), 5*time.Second, msgs...)
	r.waitFor("the three due records to finish", func() bool { return r.f.isDrained() && r.pending() == 1 })
	if n := h.issuer.calls.Load(); n != 3 {
		t.Fatalf("%d orders, want 3 (the waiting record must not be ordered yet)", n)
	}
	r.stop()
	// 10 and 11 may finish in either order: [10 11] or [11].
	if got := r.f.committed(0); len(got) == 0 || got[len(got)-1] != 11 {
		t.Fatalf("commits %v, want up to 11: up to the waiting record, not past it", got)
	}
	if len(h.writer.on(h.topics.Retry)) != 0 || len(h.writer.on(h.topics.Events)) != 3 {
		t.Fatal("the waiting record was re-queued or published instead of handed back")
	}
}

// When a later record of a partition finishes first, only the contiguous
// finished prefix is committed; other partitions are independent.
func TestOutOfOrderCompletionCommitsThePrefix(t *testing.T) {
	h := newHarness(t)
	gate := make(chan struct{})
	h.issuer.obtain = func(ctx context.Context, req acmeissuer.Request, _ int64) (*acmeissuer.Result, error) {
		if req.SANs[0] == "slow.example.com" {
			select {
			case <-gate:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return issueTest(req.SANs)
	}
	msgs := []kafka.Message{
		record(t, h.topics.Requests, 0, 0, newRequest("req-slow", "slow.example.com")),
		record(t, h.topics.Requests, 0, 1, newRequest("req-1", "one.example.com")),
		record(t, h.topics.Requests, 0, 2, newRequest("req-2", "two.example.com")),
		record(t, h.topics.Requests, 1, 5, newRequest("req-3", "three.example.com")),
	}
	r := h.run(h.worker(func(c *Config) { c.Concurrency = 4 }), 5*time.Second, msgs...)
	r.waitFor("all but the slow record to finish", func() bool { return r.f.isDrained() && r.pending() == 1 })
	// Commits are sent in the background, shortly after the record finished.
	r.waitFor("partition 1's commit", func() bool { return len(r.f.committed(1)) > 0 })
	if got := r.f.committed(0); len(got) != 0 {
		t.Fatalf("partition 0 committed %v while offset 0 is unfinished", got)
	}
	if got := r.f.committed(1); !slices.Equal(got, []int64{5}) {
		t.Fatalf("partition 1 commits %v, want [5]", got)
	}
	close(gate)
	r.waitIdle()
	r.stop()
	if got := r.f.committed(0); !slices.Equal(got, []int64{2}) {
		t.Fatalf("partition 0 commits %v, want [2]: the whole prefix once offset 0 finished", got)
	}
}

// An order in flight at shutdown gets the grace to finish and is committed;
// one that cannot finish within it is abandoned: claim released, record not
// committed (so it is redelivered).
func TestShutdownGrace(t *testing.T) {
	for _, finish := range []bool{true, false} {
		t.Run(fmt.Sprintf("finishes=%v", finish), func(t *testing.T) {
			h := newHarness(t)
			started, gate := make(chan struct{}), make(chan struct{})
			h.issuer.obtain = func(ctx context.Context, req acmeissuer.Request, _ int64) (*acmeissuer.Result, error) {
				close(started)
				select {
				case <-gate:
					return issueTest(req.SANs)
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			grace := 10 * time.Second
			if !finish {
				grace = 50 * time.Millisecond
			}
			r := h.run(h.worker(nil), grace, record(t, h.topics.Requests, 0, 3, newRequest("req-1", "www.example.com")))
			<-started
			r.cancel() // shutdown begins with the order in flight
			if finish {
				close(gate)
			}
			r.stop()
			_, completes, _, releases := h.claims.counts()
			got := r.f.committed(0)
			if finish && (!slices.Equal(got, []int64{3}) || completes != 1) {
				t.Fatalf("commits %v, completes %d; want the finished record committed", got, completes)
			}
			if !finish && (len(got) != 0 || releases != 1 || completes != 0) {
				t.Fatalf("commits %v, releases %d; want the abandoned record uncommitted and its claim released", got, releases)
			}
		})
	}
}

// Many records on several partitions at once, with duplicates and hostile
// records among them: one order per request, every valid request ends with
// cert_obtained (or, for a duplicate that met its twin in flight, a
// deferral), every partition is committed to its end. Run with -race.
func TestConcurrentRecords(t *testing.T) {
	h := newHarness(t)
	h.issuer.obtain = func(_ context.Context, req acmeissuer.Request, _ int64) (*acmeissuer.Result, error) {
		time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond) // workload, not synchronisation
		return issueTest(req.SANs)
	}
	const parts, perPart = 4, 60
	var msgs []kafka.Message
	ids := map[string]bool{}
	for p := 0; p < parts; p++ {
		for o := 0; o < perPart; o++ {
			i := rand.IntN(parts * perPart * 3 / 4) // some ids twice
			id := fmt.Sprintf("req-%d", i)
			m := record(t, h.topics.Requests, p, int64(o), newRequest(id, fmt.Sprintf("www.site%d.example", i)))
			if o%17 == 5 {
				m.Value = []byte("{hostile")
			} else {
				ids[id] = true
			}
			msgs = append(msgs, m)
		}
	}
	// Interleave partitions as a consumer would see them.
	rand.Shuffle(len(msgs), func(i, j int) {
		if msgs[i].Partition != msgs[j].Partition {
			msgs[i], msgs[j] = msgs[j], msgs[i]
		}
	})
	slices.SortStableFunc(msgs, func(a, b kafka.Message) int {
		if a.Partition == b.Partition {
			return int(a.Offset - b.Offset)
		}
		return 0
	})
	r := h.run(h.worker(func(c *Config) { c.Concurrency = 8; c.MaxPending = 32 }), 5*time.Second, msgs...)
	r.waitIdle()
	r.stop()
	for p := 0; p < parts; p++ {
		got := r.f.committed(p)
		if len(got) == 0 || got[len(got)-1] != perPart-1 || !slices.IsSorted(got) {
			t.Errorf("partition %d commits %v, want ascending up to %d", p, got, perPart-1)
		}
	}
	obtained := map[string]map[string]bool{}
	for _, ev := range decoded(t, h.writer.on(h.topics.Events)) {
		if ob, ok := ev.Data.(*events.CertObtained); ok {
			if obtained[ob.RequestID] == nil {
				obtained[ob.RequestID] = map[string]bool{}
			}
			obtained[ob.RequestID][ev.ID] = true
		}
	}
	if int(h.issuer.calls.Load()) != len(ids) || len(obtained) != len(ids) {
		t.Errorf("%d orders and %d requests obtained, want %d of each", h.issuer.calls.Load(), len(obtained), len(ids))
	}
	for id, ceIDs := range obtained {
		if len(ceIDs) != 1 {
			t.Errorf("request %s published with %d different ce_ids", id, len(ceIDs))
		}
	}
	if n := len(h.writer.on(h.topics.DLQ)); n != parts*4 {
		t.Errorf("%d dead letters, want %d", n, parts*4)
	}
}

// New rejects bad configurations with errors that name the fields.
func TestNewValidation(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		name   string
		mod    func(c *Config)
		fields []string // each must be named; nil: valid
	}{
		{"valid", func(c *Config) {}, nil},
		{"zero value", func(c *Config) { *c = Config{} }, []string{"Owner", "Claims", "Tokens", "Limits", "Writer", "Sealer", "CAs"}},
		{"no owner", func(c *Config) { c.Owner = "" }, []string{"Owner"}},
		{"CA without issuer", func(c *Config) { c.CAs[0].Issuer = nil }, []string{"CAs[0]"}},
		{"CA twice", func(c *Config) {
			c.CAs = append(c.CAs, CA{CA: caconfig.CA{Name: "pebble", Directory: "https://other/dir"}, Issuer: h.issuer})
		}, []string{"CAs[1]"}},
		{"directory twice", func(c *Config) {
			c.CAs = append(c.CAs, CA{CA: caconfig.CA{Name: "other", Directory: "https://ca.test/dir"}, Issuer: h.issuer})
		}, []string{"CAs[1]"}},
		{"negative concurrency", func(c *Config) { c.Concurrency = -1 }, []string{"Concurrency"}},
		{"negative max pending", func(c *Config) { c.MaxPending = -1 }, []string{"MaxPending"}},
		{"negative retries and attempts", func(c *Config) { c.OrderRetries, c.MaxAttempts = -1, -2 }, []string{"OrderRetries", "MaxAttempts"}},
		{"max pending below concurrency", func(c *Config) { c.Concurrency, c.MaxPending = 8, 4 }, []string{"MaxPending"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := h.config()
			cfg.CAs = slices.Clone(cfg.CAs)
			tc.mod(&cfg)
			w, err := New(cfg)
			if tc.fields == nil {
				if err != nil || w == nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("New accepted the configuration")
			}
			for _, f := range tc.fields {
				if !strings.Contains(err.Error(), "field "+f) {
					t.Errorf("error %q does not name field %s", err, f)
				}
			}
		})
	}
}
