package ratelimit

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/internal/clock"
)

// Real problem details of Let's Encrypt's Boulder, current and historical.
// Current texts: ratelimits/limiter.go (the limit's sentence) plus
// errors/errors.go (": see <documentation link>"); older ones from the RA's
// own limit checks (ra/ra.go, ra/ra_test.go) and as clients logged them.
var boulderDetails = []struct {
	name, detail string
	limit        Name
	subject      string
}{
	// Current (the ratelimits package).
	{"new orders", "too many new orders (300) from this account in the last 3h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-orders-per-account",
		NewOrdersPerAccount, ""},
	{"certificates per registered domain", `too many certificates (50) already issued for "example.com" in the last 168h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-registered-domain`,
		CertificatesPerDomain, "example.com"},
	{"certificates per registered domain, multi-label suffix", `too many certificates (50) already issued for "example.co.uk" in the last 168h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-registered-domain`,
		CertificatesPerDomain, "example.co.uk"},
	// An IP range names no bucket: IP address identifiers are not supported
	// (package names), so no order has one to narrow to.
	{"certificates per IPv6 range", `too many certificates (50) already issued for "2001:db8::/64" in the last 168h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-registered-domain`,
		CertificatesPerDomain, ""},
	{"exact set of identifiers", "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-identifiers",
		CertificatesPerFQDNSet, ""},
	{"failed authorizations", `too many failed authorizations (5) for "www.example.com" in the last 1h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#authorization-failures-per-identifier-per-account`,
		FailedAuthorizationsPerDomainPerAccount, "www.example.com"},
	// Earlier versions of the same package: "domains", "hostname" anchors.
	{"exact set of domains, hostnames anchor", "too many certificates (5) already issued for this exact set of domains in the last 168h0m0s, retry after 2024-06-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-hostnames",
		CertificatesPerFQDNSet, ""},
	{"failed authorizations, hostname anchor", `too many failed authorizations (5) for "a.example.org" in the last 1h0m0s, retry after 2024-06-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#authorization-failures-per-hostname-per-account`,
		FailedAuthorizationsPerDomainPerAccount, "a.example.org"},
	// The RA's own checks (ra.go) before the ratelimits package: the
	// per-domain refusal linked the new-orders section; the sentence, not the
	// link, says which limit it is.
	{"RA per name, wrong anchor", `too many certificates already issued for "example.com". Retry after 1970-01-01T23:00:00Z: see https://letsencrypt.org/docs/rate-limits/#new-orders-per-account`,
		CertificatesPerDomain, "example.com"},
	{"RA per name, several", `too many certificates already issued for multiple names ("example.com" and 2 others). Retry after 1970-01-01T23:00:00Z: see https://letsencrypt.org/docs/rate-limits/#new-orders-per-account`,
		CertificatesPerDomain, ""},
	{"RA exact set, names listed", "too many certificates (3) already issued for this exact set of domains in the last 24 hours: over.example.com, retry after 2023-01-01T23:00:00Z: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-hostnames",
		CertificatesPerFQDNSet, ""},
	{"RA exact set, documented form", "too many certificates (5) already issued for this exact set of domains in the last 168 hours: example.com login.example.com: see https://letsencrypt.org/docs/duplicate-certificate-limit",
		CertificatesPerFQDNSet, ""},
	// Older still (ra.go), as clients logged them with Boulder's prefix.
	{"legacy new orders", "too many new orders recently", NewOrdersPerAccount, ""},
	{"legacy new orders, prefixed", "Error creating new order :: too many new orders recently: see https://letsencrypt.org/docs/rate-limits/",
		NewOrdersPerAccount, ""},
	{"legacy per name", "too many certificates already issued for: example.com", CertificatesPerDomain, "example.com"},
	{"legacy per name, capitalised, linked", "Error creating new order :: Too many certificates already issued for: example.com: see https://letsencrypt.org/docs/rate-limits/",
		CertificatesPerDomain, "example.com"},
	{"legacy per name, several", "too many certificates already issued for: example.com, example.net", CertificatesPerDomain, ""},
	{"legacy exact set", "Error creating new order :: too many certificates already issued for exact set of domains: quantonganh.com: see https://letsencrypt.org/docs/rate-limits/",
		CertificatesPerFQDNSet, ""},
	{"legacy exact set, capitalised", "Too many certificates already issued for exact set of domains: a.example.com,b.example.com", CertificatesPerFQDNSet, ""},
	{"legacy failed authorizations", "too many failed authorizations recently: see https://letsencrypt.org/docs/failed-validation-limit/",
		FailedAuthorizationsPerDomainPerAccount, ""},
	{"registrations per IP", "too many new registrations (10) from this IP address in the last 3h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-registrations-per-ip-address",
		NewRegistrationsPerIPAddress, ""},
	{"registrations per IPv6 range", "too many new registrations (500) from this /48 subnet of IPv6 addresses in the last 3h0m0s, retry after 2026-03-01 12:34:56 UTC",
		NewRegistrationsPerIPv6Range, ""},
	// Limits certfleet does not model, or words it cannot place: unknown.
	{"registrations, unknown wording", "too many new registrations recently", "", ""},
	{"pending authorizations", "too many currently pending authorizations: 300", "", ""},
	{"total issuance", "Certificate issuance limit reached", "", ""},
}

// Details a hostile or confused CA (or proxy) might send.
var hostileDetails = []struct {
	name, detail string
	limit        Name
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
	{"escaped quote in name", `too many certificates (50) already issued for "evil\".com" in the last 168h0m0s`, CertificatesPerDomain, ""},
	{"unterminated quote", `too many certificates (50) already issued for "example.com`, CertificatesPerDomain, ""},
	{"space in name", `too many certificates (50) already issued for "example .com"`, CertificatesPerDomain, ""},
	{"control bytes in name", "too many certificates (50) already issued for \"exa\x00mple.com\"", CertificatesPerDomain, ""},
	{"non-ASCII name", `too many certificates (50) already issued for "bücher.de"`, CertificatesPerDomain, ""},
	{"empty name", `too many certificates (50) already issued for ""`, CertificatesPerDomain, ""},
	{"dots only", `too many certificates (50) already issued for ".."`, CertificatesPerDomain, ""},
	{"name too long", `too many certificates (50) already issued for "` + strings.Repeat("a", 300) + `.com"`, CertificatesPerDomain, ""},
	{"legacy list too long", "too many certificates already issued for: " + strings.Repeat("a", 300) + ".com", CertificatesPerDomain, ""},
	{"upper-case name", `TOO MANY CERTIFICATES (50) ALREADY ISSUED FOR "EXAMPLE.COM." IN THE LAST 168H0M0S`, CertificatesPerDomain, "example.com"},
	{"wildcard name", `too many failed authorizations (5) for "*.example.com" in the last 1h0m0s`, FailedAuthorizationsPerDomainPerAccount, "example.com"},
	{"name after a link, not in place", `too many failed authorizations recently: see "evil.example"`, FailedAuthorizationsPerDomainPerAccount, ""},
	{"new orders with a name", `too many new orders (300) for "example.com"`, NewOrdersPerAccount, ""},
	{"huge count", `too many certificates (123456789012345678901234567890) already issued for "example.com"`, "", ""},
	{"invalid UTF-8", "too many new orders \xff\xfe", NewOrdersPerAccount, ""},
}

func TestParseRateLimitDetail(t *testing.T) {
	for _, set := range [][]struct {
		name, detail string
		limit        Name
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

// The buckets of one order for www.example.com and api.example.net, as
// OrderTransactions derives them, plus the fleet budget, which no 429 blocks.
var orderTxns = []Transaction{
	{Name: FleetOrdersPerSecond, Value: "*", caID: "le"},
	{Name: NewOrdersPerAccount, Value: "t1", caID: "le"},
	{Name: CertificatesPerDomain, Domain: "example.com", Value: "example.com", caID: "le"},
	{Name: CertificatesPerDomain, Domain: "example.net", Value: "example.net", caID: "le"},
	{Name: CertificatesPerFQDNSet, Value: "0f1e", caID: "le"},
	{Name: FailedAuthorizationsPerDomainPerAccount, Domain: "www.example.com", Value: "t1:www.example.com", caID: "le"},
	{Name: FailedAuthorizationsPerDomainPerAccount, Domain: "api.example.net", Value: "t1:api.example.net", caID: "le"},
}

func keysOf(txns []Transaction) []string {
	out := make([]string, len(txns))
	for i, t := range txns {
		out[i] = t.Key()
	}
	return out
}

// Which of an order's buckets a 429 blocks, by the CA's detail.
func TestPenaltyTargetsTheNamedLimit(t *testing.T) {
	const (
		account  = "le:NewOrdersPerAccount:t1"
		domCom   = "le:CertificatesPerDomain:example.com"
		domNet   = "le:CertificatesPerDomain:example.net"
		set      = "le:CertificatesPerFQDNSet:0f1e"
		authzWWW = "le:FailedAuthorizationsPerDomainPerAccount:t1:www.example.com"
		authzAPI = "le:FailedAuthorizationsPerDomainPerAccount:t1:api.example.net"
	)
	all := keysOf(orderTxns[1:]) // every bucket but the fleet budget
	cases := []struct {
		name   string
		txns   []Transaction
		detail string
		want   []string
	}{
		{"exact set: only the set's key, the account stays open", orderTxns,
			"too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-identifiers",
			[]string{set}},
		{"new orders: only the account's key", orderTxns,
			"too many new orders (300) from this account in the last 3h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-orders-per-account",
			[]string{account}},
		{"legacy new orders: only the account's key", orderTxns, "too many new orders recently", []string{account}},
		{"registered domain named: only its key", orderTxns,
			`too many certificates (50) already issued for "example.net" in the last 168h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-registered-domain`,
			[]string{domNet}},
		{"registered domain not in the order: every domain key", orderTxns,
			`too many certificates (50) already issued for "example.org" in the last 168h0m0s, retry after 2026-03-01 12:34:56 UTC`,
			[]string{domCom, domNet}},
		{"several names (older wording): every domain key", orderTxns,
			`too many certificates already issued for multiple names ("example.com" and 2 others). Retry after 1970-01-01T23:00:00Z`,
			[]string{domCom, domNet}},
		{"failed authorizations of one name: its key", orderTxns,
			`too many failed authorizations (5) for "www.example.com" in the last 1h0m0s, retry after 2026-03-01 12:34:56 UTC`,
			[]string{authzWWW}},
		{"legacy failed authorizations: every name's key", orderTxns, "too many failed authorizations recently", []string{authzWWW, authzAPI}},
		{"unknown words: every key", orderTxns, "slow down", all},
		{"no detail: every key", orderTxns, "", all},
		{"registration limit, not an order's: every key", orderTxns,
			"too many new registrations (10) from this IP address in the last 3h0m0s, retry after 2026-03-01 12:34:56 UTC", all},
		{"hostile mix of limits: every key", orderTxns,
			`too many new orders (300) from this account; too many certificates (50) already issued for "example.com"`, all},
		{"named limit not among the keys (exempt renewal): every key", slices.Delete(slices.Clone(orderTxns), 1, 2), "too many new orders recently", keysOf(orderTxns[2:])},
		{"keys without limits: every key", []Transaction{{Value: "a"}, {Value: "b"}}, "too many new orders recently", []string{"::a", "::b"}},
		{"subjects compared normalised", []Transaction{
			{Name: CertificatesPerDomain, Domain: "Example.COM.", Value: "x"},
			{Name: CertificatesPerDomain, Domain: "example.net", Value: "y"}},
			`too many certificates (50) already issued for "example.com" in the last 168h0m0s`, []string{":CertificatesPerDomain:x"}},
		{"only the fleet budget: nothing", orderTxns[:1], "slow down", nil},
		{"no keys: nothing", nil, "too many new orders recently", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := keysOf(PenaltyTargets(c.txns, c.detail)); !slices.Equal(got, c.want) {
				t.Errorf("PenaltyTargets = %v; want %v", got, c.want)
			}
		})
	}
}

// A 429 read into buckets and penalised through the Limiter, on an order's
// real buckets (Let's Encrypt's limits): a 429 about the exact SAN set leaves
// the account (and every other order of it) free, one about the account
// blocks the account, a per-domain one only that registered domain, and one
// in words nobody knows every bucket but the fleet budget.
func TestPenaltyTargetsOfAnOrder(t *testing.T) {
	const dir = "https://ca.test/dir"
	cat, err := NewCatalogue(CA{ID: "le", Directory: dir, Limits: LetsEncryptLimits()})
	if err != nil {
		t.Fatal(err)
	}
	txns, err := cat.OrderTransactions(Order{Directory: dir, Account: "acme-corp",
		SANs: []string{"www.example.com", "api.example.net", "*.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	byLimit := map[Name][]string{}
	for _, tx := range txns {
		byLimit[tx.Name] = append(byLimit[tx.Name], tx.Key())
	}
	const (
		account  = "le:NewOrdersPerAccount:acme-corp"
		domCom   = "le:CertificatesPerDomain:example.com"
		domNet   = "le:CertificatesPerDomain:example.net"
		authzWWW = "le:FailedAuthorizationsPerDomainPerAccount:acme-corp:www.example.com"
	)
	if !slices.Equal(byLimit[NewOrdersPerAccount], []string{account}) ||
		!slices.Equal(byLimit[CertificatesPerDomain], []string{domCom, domNet}) ||
		len(byLimit[CertificatesPerFQDNSet]) != 1 || len(byLimit[FailedAuthorizationsPerDomainPerAccount]) != 3 {
		t.Fatalf("the order's buckets by limit = %v", byLimit)
	}
	set := byLimit[CertificatesPerFQDNSet][0]
	var all []string
	for _, tx := range txns {
		if tx.Name != FleetOrdersPerSecond {
			all = append(all, tx.Key())
		}
	}
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	until := t0.Add(time.Hour)
	for _, c := range []struct {
		name, detail string
		want         []string
	}{
		{"exact set: the account stays free",
			"too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-identifiers",
			[]string{set}},
		{"account: the account is blocked",
			"too many new orders (300) from this account in the last 3h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-orders-per-account",
			[]string{account}},
		{"registered domain: that domain only",
			`too many certificates (50) already issued for "example.net" in the last 168h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-registered-domain`,
			[]string{domNet}},
		{"failed authorizations of a name: that name only",
			`too many failed authorizations (5) for "www.example.com" in the last 1h0m0s, retry after 2026-03-01 12:34:56 UTC: see https://letsencrypt.org/docs/rate-limits/#authorization-failures-per-identifier-per-account`,
			[]string{authzWWW}},
		{"unknown words: every bucket", "slow down", all},
	} {
		t.Run(c.name, func(t *testing.T) {
			targets := PenaltyTargets(txns, c.detail)
			if got := keysOf(targets); !slices.Equal(got, c.want) {
				t.Fatalf("penalised %v; want %v", got, c.want)
			}
			l := NewLimiter(LimiterConfig{Store: NewMemStore(), Catalogue: cat, Clock: clock.NewFake(t0)})
			ctx := context.Background()
			for _, tx := range targets {
				if err := l.Penalize(ctx, tx, until); err != nil {
					t.Fatal(err)
				}
			}
			for _, tx := range txns {
				r, err := l.Check(ctx, []Transaction{tx})
				if err != nil {
					t.Fatal(err)
				}
				if blocked := slices.Contains(c.want, tx.Key()); r.Allowed == blocked || blocked && r.RetryIn != time.Hour {
					t.Errorf("%s after the 429: %+v; want blocked %v until the CA's Retry-After", tx.Key(), r.Decision, blocked)
				}
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
	known := map[Name]bool{"": true, NewOrdersPerAccount: true, CertificatesPerDomain: true,
		CertificatesPerFQDNSet: true, FailedAuthorizationsPerDomainPerAccount: true,
		NewRegistrationsPerIPAddress: true, NewRegistrationsPerIPv6Range: true}
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
		got := keysOf(penaltyTargets(orderTxns, limit, subject))
		if len(got) == 0 {
			t.Fatal("no key penalised")
		}
		for _, k := range got {
			if !slices.Contains(keysOf(orderTxns[1:]), k) {
				t.Fatalf("penalised %q, not a key of the order but the fleet budget", k)
			}
		}
	})
}
