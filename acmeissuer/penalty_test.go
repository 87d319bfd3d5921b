package acmeissuer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/ratelimit"
)

// Real problem details of Let's Encrypt's Boulder, current and historical.
// Current texts: ratelimits/limiter.go (the limit's sentence) plus
// errors/errors.go (": see <documentation link>"); older ones from the RA's
// own limit checks (ra/ra.go, ra/ra_test.go) and as clients logged them.
var boulderDetails = []struct {
	name, detail string
	limit        ratelimit.Name
	subject      string
}{
	// Current (the ratelimits package).
	{"new orders", "too many new orders (300) from this account in the last 3h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-orders-per-account",
		ratelimit.NewOrdersPerAccount, ""},
	{"certificates per registered domain", `too many certificates (50) already issued for "example.com" in the last 168h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-registered-domain`,
		ratelimit.CertificatesPerDomain, "example.com"},
	{"certificates per registered domain, multi-label suffix", `too many certificates (50) already issued for "example.co.uk" in the last 168h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-registered-domain`,
		ratelimit.CertificatesPerDomain, "example.co.uk"},
	{"certificates per IPv6 range", `too many certificates (50) already issued for "2001:db8::/64" in the last 168h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-registered-domain`,
		ratelimit.CertificatesPerDomain, "2001:db8::/64"},
	{"exact set of identifiers", "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-identifiers",
		ratelimit.CertificatesPerFQDNSet, ""},
	{"failed authorizations", `too many failed authorizations (5) for "www.example.com" in the last 1h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#authorization-failures-per-identifier-per-account`,
		ratelimit.FailedAuthorizationsPerDomainPerAccount, "www.example.com"},
	// Earlier versions of the same package: "domains", "hostname" anchors.
	{"exact set of domains, hostnames anchor", "too many certificates (5) already issued for this exact set of domains in the last 168h0m0s, retry after 2024-06-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-hostnames",
		ratelimit.CertificatesPerFQDNSet, ""},
	{"failed authorizations, hostname anchor", `too many failed authorizations (5) for "a.example.org" in the last 1h0m0s, retry after 2024-06-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#authorization-failures-per-hostname-per-account`,
		ratelimit.FailedAuthorizationsPerDomainPerAccount, "a.example.org"},
	// The RA's own checks (ra.go) before the ratelimits package: the
	// per-domain refusal linked the new-orders section; the sentence, not the
	// link, says which limit it is.
	{"RA per name, wrong anchor", `too many certificates already issued for "example.com". Retry after 1970-01-01T23:00:00Z: see https://letsencrypt.org/docs/rate-limits/#new-orders-per-account`,
		ratelimit.CertificatesPerDomain, "example.com"},
	{"RA per name, several", `too many certificates already issued for multiple names ("example.com" and 2 others). Retry after 1970-01-01T23:00:00Z: see https://letsencrypt.org/docs/rate-limits/#new-orders-per-account`,
		ratelimit.CertificatesPerDomain, ""},
	{"RA exact set, names listed", "too many certificates (3) already issued for this exact set of domains in the last 24 hours: over.example.com, retry after 2023-01-01T23:00:00Z: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-hostnames",
		ratelimit.CertificatesPerFQDNSet, ""},
	{"RA exact set, documented form", "too many certificates (5) already issued for this exact set of domains in the last 168 hours: example.com login.example.com: see https://letsencrypt.org/docs/duplicate-certificate-limit",
		ratelimit.CertificatesPerFQDNSet, ""},
	// Older still (ra.go), as clients logged them with Boulder's prefix.
	{"legacy new orders", "too many new orders recently", ratelimit.NewOrdersPerAccount, ""},
	{"legacy new orders, prefixed", "Error creating new order :: too many new orders recently: see https://letsencrypt.org/docs/rate-limits/",
		ratelimit.NewOrdersPerAccount, ""},
	{"legacy per name", "too many certificates already issued for: example.com", ratelimit.CertificatesPerDomain, "example.com"},
	{"legacy per name, capitalised, linked", "Error creating new order :: Too many certificates already issued for: example.com: see https://letsencrypt.org/docs/rate-limits/",
		ratelimit.CertificatesPerDomain, "example.com"},
	{"legacy per name, several", "too many certificates already issued for: example.com, example.net", ratelimit.CertificatesPerDomain, ""},
	{"legacy exact set", "Error creating new order :: too many certificates already issued for exact set of domains: quantonganh.com: see https://letsencrypt.org/docs/rate-limits/",
		ratelimit.CertificatesPerFQDNSet, ""},
	{"legacy exact set, capitalised", "Too many certificates already issued for exact set of domains: a.example.com,b.example.com", ratelimit.CertificatesPerFQDNSet, ""},
	{"legacy failed authorizations", "too many failed authorizations recently: see https://letsencrypt.org/docs/failed-validation-limit/",
		ratelimit.FailedAuthorizationsPerDomainPerAccount, ""},
	// Limits certfleet does not model: unknown.
	{"registrations per IP", "too many new registrations (10) from this IP address in the last 3h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-registrations-per-ip-address", "", ""},
	{"pending authorizations", "too many currently pending authorizations: 300", "", ""},
	{"total issuance", "Certificate issuance limit reached", "", ""},
}

// Details a hostile or confused CA (or proxy) might send.
var hostileDetails = []struct {
	name, detail string
	limit        ratelimit.Name
	subject      string
}{
	{"empty", "", "", ""},
	{"other CA's words", "slow down", "", ""},
	{"only a link", "see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-identifiers", "", ""},
	{"two limits at once", `too many new orders (300) from this account; too many certificates (50) already issued for "example.com"`, "", ""},
	{"exact set and failed authorizations", "too many failed authorizations recently, too many certificates already issued for exact set of domains", "", ""},
	{"certificates without a reason", "too many certificates", "", ""},
	{"certificates issued, not for", "too many certificates already issued. Retry after 2026-03-01T00:00:00Z", "", ""},
	{"count not a number", `too many certificates (5x) already issued for "example.com"`, "", ""},
	{"escaped quote in name", `too many certificates (50) already issued for "evil\".com" in the last 168h0m0s`, ratelimit.CertificatesPerDomain, ""},
	{"unterminated quote", `too many certificates (50) already issued for "example.com`, ratelimit.CertificatesPerDomain, ""},
	{"space in name", `too many certificates (50) already issued for "example .com"`, ratelimit.CertificatesPerDomain, ""},
	{"control bytes in name", "too many certificates (50) already issued for \"exa\x00mple.com\"", ratelimit.CertificatesPerDomain, ""},
	{"non-ASCII name", `too many certificates (50) already issued for "bücher.de"`, ratelimit.CertificatesPerDomain, ""},
	{"empty name", `too many certificates (50) already issued for ""`, ratelimit.CertificatesPerDomain, ""},
	{"dots only", `too many certificates (50) already issued for ".."`, ratelimit.CertificatesPerDomain, ""},
	{"name too long", `too many certificates (50) already issued for "` + strings.Repeat("a", 300) + `.com"`, ratelimit.CertificatesPerDomain, ""},
	{"legacy list too long", "too many certificates already issued for: " + strings.Repeat("a", 300) + ".com", ratelimit.CertificatesPerDomain, ""},
	{"upper-case name", `TOO MANY CERTIFICATES (50) ALREADY ISSUED FOR "EXAMPLE.COM." IN THE LAST 168H0M0S`, ratelimit.CertificatesPerDomain, "example.com"},
	{"wildcard name", `too many failed authorizations (5) for "*.example.com" in the last 1h0m0s`, ratelimit.FailedAuthorizationsPerDomainPerAccount, "example.com"},
	{"name after a link, not in place", `too many failed authorizations recently: see "evil.example"`, ratelimit.FailedAuthorizationsPerDomainPerAccount, ""},
	{"new orders with a name", `too many new orders (300) for "example.com"`, ratelimit.NewOrdersPerAccount, ""},
	{"huge count", `too many certificates (123456789012345678901234567890) already issued for "example.com"`, "", ""},
	{"invalid UTF-8", "too many new orders \xff\xfe", ratelimit.NewOrdersPerAccount, ""},
}

func TestParseRateLimitDetail(t *testing.T) {
	for _, set := range [][]struct {
		name, detail string
		limit        ratelimit.Name
		subject      string
	}{boulderDetails, hostileDetails} {
		for _, c := range set {
			t.Run(c.name, func(t *testing.T) {
				limit, subject := ParseRateLimitDetail(c.detail)
				if limit != c.limit || subject != c.subject {
					t.Errorf("ParseRateLimitDetail(%q) = %q, %q; want %q, %q", c.detail, limit, subject, c.limit, c.subject)
				}
			})
		}
	}
}

// The keys of one order for www.example.com and api.example.net, as
// pipeline derives them (ratelimit.Catalogue.OrderTransactions).
var orderKeys = []PenaltyKey{
	{Limit: ratelimit.NewOrdersPerAccount, Key: "le:NewOrdersPerAccount:t1"},
	{Limit: ratelimit.CertificatesPerDomain, Subject: "example.com", Key: "le:CertificatesPerDomain:example.com"},
	{Limit: ratelimit.CertificatesPerDomain, Subject: "example.net", Key: "le:CertificatesPerDomain:example.net"},
	{Limit: ratelimit.CertificatesPerFQDNSet, Key: "le:CertificatesPerFQDNSet:0f1e"},
	{Limit: ratelimit.FailedAuthorizationsPerDomainPerAccount, Subject: "www.example.com", Key: "le:FailedAuthorizationsPerDomainPerAccount:t1:www.example.com"},
	{Limit: ratelimit.FailedAuthorizationsPerDomainPerAccount, Subject: "api.example.net", Key: "le:FailedAuthorizationsPerDomainPerAccount:t1:api.example.net"},
}

func keysOf(ks []PenaltyKey) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = k.Key
	}
	return out
}

// penaltyRecorder is a PenaltyRecorder in memory, failing keys in fail.
type penaltyRecorder struct {
	mu    sync.Mutex
	until map[string]time.Time
	fail  map[string]bool
}

func (p *penaltyRecorder) Penalize(_ context.Context, key string, until time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail[key] {
		return errors.New("database down")
	}
	if p.until == nil {
		p.until = map[string]time.Time{}
	}
	p.until[key] = until
	return nil
}

func (p *penaltyRecorder) keys() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ks []string
	for k := range p.until {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func rateLimitedErr(detail string, until time.Time) error {
	p := acme.Problem{Type: acme.ProblemTypeRateLimited, Status: 429, Detail: detail}
	return fmt.Errorf("acmeissuer: obtaining a certificate for [www.example.com]: %w",
		&RateLimitedError{RetryAfter: until, Problem: p, Err: fmt.Errorf("creating new order: %w", p)})
}

// Which of an order's keys a 429 blocks, by the CA's detail.
func TestPenalizeTargetsTheNamedLimit(t *testing.T) {
	until := time.Date(2026, 3, 1, 12, 34, 56, 0, time.UTC)
	const (
		account  = "le:NewOrdersPerAccount:t1"
		domCom   = "le:CertificatesPerDomain:example.com"
		domNet   = "le:CertificatesPerDomain:example.net"
		set      = "le:CertificatesPerFQDNSet:0f1e"
		authzWWW = "le:FailedAuthorizationsPerDomainPerAccount:t1:www.example.com"
		authzAPI = "le:FailedAuthorizationsPerDomainPerAccount:t1:api.example.net"
	)
	all := keysOf(orderKeys)
	cases := []struct {
		name   string
		keys   []PenaltyKey
		detail string
		want   []string
	}{
		{"exact set: only the set's key, the account stays open", orderKeys,
			"too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-identifiers",
			[]string{set}},
		{"new orders: only the account's key", orderKeys,
			"too many new orders (300) from this account in the last 3h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-orders-per-account",
			[]string{account}},
		{"legacy new orders: only the account's key", orderKeys, "too many new orders recently", []string{account}},
		{"registered domain named: only its key", orderKeys,
			`too many certificates (50) already issued for "example.net" in the last 168h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-registered-domain`,
			[]string{domNet}},
		{"registered domain not in the order: every domain key", orderKeys,
			`too many certificates (50) already issued for "example.org" in the last 168h0m0s, retry after 2026-03-01 12:34:56 UTC`,
			[]string{domCom, domNet}},
		{"several names (older wording): every domain key", orderKeys,
			`too many certificates already issued for multiple names ("example.com" and 2 others). Retry after 1970-01-01T23:00:00Z`,
			[]string{domCom, domNet}},
		{"failed authorizations of one name: its key", orderKeys,
			`too many failed authorizations (5) for "www.example.com" in the last 1h0m0s, retry after 2026-03-01 12:34:56 UTC`,
			[]string{authzWWW}},
		{"legacy failed authorizations: every name's key", orderKeys, "too many failed authorizations recently", []string{authzWWW, authzAPI}},
		{"unknown words: every key", orderKeys, "slow down", all},
		{"no detail: every key", orderKeys, "", all},
		{"registrations per IP (not modelled): every key", orderKeys,
			"too many new registrations (10) from this IP address in the last 3h0m0s, retry after 2026-03-01 12:34:56 UTC", all},
		{"hostile mix of limits: every key", orderKeys,
			`too many new orders (300) from this account; too many certificates (50) already issued for "example.com"`, all},
		{"named limit not among the keys (exempt renewal): every key", orderKeys[1:], "too many new orders recently", keysOf(orderKeys[1:])},
		{"keys without limits (old callers): every key", []PenaltyKey{{Key: "a"}, {Key: "b"}}, "too many new orders recently", []string{"a", "b"}},
		{"subjects compared normalised", []PenaltyKey{
			{Limit: ratelimit.CertificatesPerDomain, Subject: "Example.COM.", Key: "x"},
			{Limit: ratelimit.CertificatesPerDomain, Subject: "example.net", Key: "y"}},
			`too many certificates (50) already issued for "example.com" in the last 168h0m0s`, []string{"x"}},
		{"no keys: nothing", nil, "too many new orders recently", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := &penaltyRecorder{}
			i := &Issuer{cfg: Config{Penalties: rec}}
			err := rateLimitedErr(c.detail, until)
			if got := i.penalize(context.Background(), Request{PenaltyKeys: c.keys}, err); !errors.Is(got, err) {
				t.Errorf("penalize returned %v; want the CA's error", got)
			}
			want := slices.Sorted(slices.Values(c.want))
			if got := rec.keys(); !slices.Equal(got, want) {
				t.Errorf("penalised %v; want %v", got, want)
			}
			for k, u := range rec.until {
				if !u.Equal(until) {
					t.Errorf("%s penalised until %v; want the CA's %v", k, u, until)
				}
			}
		})
	}
}

func TestPenalizeOnlyRateLimits(t *testing.T) {
	rec := &penaltyRecorder{fail: map[string]bool{"le:CertificatesPerFQDNSet:0f1e": true}}
	i := &Issuer{cfg: Config{Penalties: rec}}
	ctx := context.Background()
	req := Request{PenaltyKeys: orderKeys}

	// Not a 429: nothing is recorded, the error is returned as is.
	plain := fmt.Errorf("x: %w", acme.Problem{Type: acme.ProblemTypeMalformed, Status: 400, Detail: "too many new orders recently"})
	if got := i.penalize(ctx, req, plain); got != plain || len(rec.keys()) != 0 {
		t.Errorf("malformed: returned %v, penalised %v", got, rec.keys())
	}
	// A failure to record is joined to the CA's error, which stays findable.
	err := rateLimitedErr("too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s", time.Now().Add(time.Hour))
	got := i.penalize(ctx, req, err)
	var rl *RateLimitedError
	if !errors.As(got, &rl) || !strings.Contains(got.Error(), "le:CertificatesPerFQDNSet:0f1e") || !strings.Contains(got.Error(), "database down") {
		t.Errorf("failed penalty: %v", got)
	}
	// No recorder configured: nothing to do.
	if got := (&Issuer{}).penalize(ctx, req, err); got != err {
		t.Errorf("no recorder: %v", got)
	}
}

func TestClassifyNamesTheLimit(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fqdn := "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s"
	domain := `too many certificates (50) already issued for "example.com" in the last 168h0m0s`
	cases := []struct {
		name    string
		err     error
		limit   ratelimit.Name
		subject string
	}{
		{"rate limited error", rateLimitedErr(fqdn, at), ratelimit.CertificatesPerFQDNSet, ""},
		{"rateLimited problem without transport", fmt.Errorf("x: %w", acme.Problem{Type: acme.ProblemTypeRateLimited, Status: 429, Detail: domain}),
			ratelimit.CertificatesPerDomain, "example.com"},
		{"unknown detail", rateLimitedErr("slow down", at), "", ""},
		{"429 without a problem", &StatusError{Status: 429, Err: errors.New("HTTP 429: " + fqdn)}, "", ""},
		{"not rate limited", fmt.Errorf("x: %w", acme.Problem{Type: acme.ProblemTypeMalformed, Status: 400, Detail: fqdn}), "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Classify(c.err)
			if got.Limit != c.limit || got.LimitSubject != c.subject {
				t.Errorf("Classify = %+v; want limit %q subject %q", got, c.limit, c.subject)
			}
		})
	}
}

// FuzzParseRateLimitDetail feeds the decoder of the CA's free text anything:
// it must not panic, must name only a limit it knows (a subject only for a
// per-domain limit, and only a plausible normalised name), must ignore ASCII
// case, and PenaltyTargets must then block a non-empty subset of the keys.
func FuzzParseRateLimitDetail(f *testing.F) {
	for _, c := range boulderDetails {
		f.Add(c.detail)
	}
	for _, c := range hostileDetails {
		f.Add(c.detail)
	}
	known := map[ratelimit.Name]bool{"": true, ratelimit.NewOrdersPerAccount: true, ratelimit.CertificatesPerDomain: true,
		ratelimit.CertificatesPerFQDNSet: true, ratelimit.FailedAuthorizationsPerDomainPerAccount: true}
	f.Fuzz(func(t *testing.T, detail string) {
		limit, subject := ParseRateLimitDetail(detail)
		if !known[limit] {
			t.Fatalf("limit %q is not one the parser may name", limit)
		}
		if subject != "" {
			if !perDomain(limit) {
				t.Fatalf("subject %q for limit %q", subject, limit)
			}
			if len(subject) > 253 || strings.HasPrefix(subject, "*.") || strings.HasSuffix(subject, ".") || strings.Contains(subject, "..") {
				t.Fatalf("subject %q is not normalised", subject)
			}
			for _, c := range []byte(subject) {
				if !isDNSChar(c) && c != ':' && c != '/' {
					t.Fatalf("subject %q has byte %q", subject, c)
				}
			}
		}
		if l2, s2 := ParseRateLimitDetail(strings.ToUpper(detail)); !strings.ContainsFunc(detail, func(r rune) bool { return r > 0x7f }) && (l2 != limit || s2 != subject) {
			t.Fatalf("upper-cased %q parses as %q, %q; lower as %q, %q", detail, l2, s2, limit, subject)
		}
		got := PenaltyTargets(orderKeys, limit, subject)
		if len(got) == 0 {
			t.Fatal("no key penalised")
		}
		for _, k := range got {
			if !slices.Contains(keysOf(orderKeys), k) {
				t.Fatalf("penalised %q, not a key of the order", k)
			}
		}
	})
}
