package caproxy

import (
	"fmt"
	"time"
)

// Boulder's rate-limit detail texts: the message from ratelimits/limiter.go
// (Decision.Result) followed by the documentation link its errors package
// appends (errors/errors.go NewOrdersPerAccountError,
// CertificatesPerDomainError, CertificatesPerFQDNSetError,
// RegistrationsPerIPAddressError). Arguments: the limit's burst, for
// CertificatesPerDomain the registered domain (%q), the limit's period
// (time.Duration's String, e.g. "168h0m0s"), and the retry-after instant in
// RetryAfterLayout (UTC).
//
// The exact-set link is the one Let's Encrypt serves today
// (#new-certificates-per-exact-set-of-identifiers); older Boulder releases
// linked #new-certificates-per-exact-set-of-hostnames.
const (
	DetailNewOrdersPerAccount          = "too many new orders (%d) from this account in the last %s, retry after %s: see https://letsencrypt.org/docs/rate-limits/#new-orders-per-account"
	DetailCertificatesPerDomain        = "too many certificates (%d) already issued for %q in the last %s, retry after %s: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-registered-domain"
	DetailCertificatesPerFQDNSet       = "too many certificates (%d) already issued for this exact set of identifiers in the last %s, retry after %s: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-identifiers"
	DetailNewRegistrationsPerIPAddress = "too many new registrations (%d) from this IP address in the last %s, retry after %s: see https://letsencrypt.org/docs/rate-limits/#new-registrations-per-ip-address"

	// RetryAfterLayout is how Boulder writes the retry-after instant in a
	// detail: now.UTC().Add(retryAfter).Format(RetryAfterLayout).
	RetryAfterLayout = "2006-01-02 15:04:05 MST"

	// RateLimitDocs is the Link rel="help" Boulder adds to rate-limit refusals.
	RateLimitDocs = "https://letsencrypt.org/docs/rate-limits"
)

// ACME problem types the proxy answers with.
const (
	ProblemRateLimited    = "urn:ietf:params:acme:error:rateLimited"
	ProblemServerInternal = "urn:ietf:params:acme:error:serverInternal"
	ProblemMalformed      = "urn:ietf:params:acme:error:malformed"
)

// Boulder's production defaults, used in the wording of injected 429s when the
// corresponding limit is not configured.
var (
	defaultOrdersPerAccount = Limit{Count: 300, Period: 3 * time.Hour}
	defaultOrdersPerFQDNSet = Limit{Count: 5, Period: 7 * 24 * time.Hour}
	defaultRegistrations    = Limit{Count: 10, Period: 3 * time.Hour}
)

// Detail renders Boulder's detail text for a refusal by the named limit (one
// of the Limit* constants): lim gives the burst and period, domain is the
// registered domain (CertificatesPerDomain only), retryAt the instant the
// client may come back. It returns "" for an unknown limit name.
func Detail(limitName string, lim Limit, domain string, retryAt time.Time) string {
	at := retryAt.UTC().Format(RetryAfterLayout)
	switch limitName {
	case LimitNewOrdersPerAccount:
		return fmt.Sprintf(DetailNewOrdersPerAccount, lim.Count, lim.Period, at)
	case LimitCertificatesPerDomain:
		return fmt.Sprintf(DetailCertificatesPerDomain, lim.Count, domain, lim.Period, at)
	case LimitCertificatesPerFQDNSet:
		return fmt.Sprintf(DetailCertificatesPerFQDNSet, lim.Count, lim.Period, at)
	case LimitNewRegistrationsPerIPAddress:
		return fmt.Sprintf(DetailNewRegistrationsPerIPAddress, lim.Count, lim.Period, at)
	}
	return ""
}

// retryAfterSeconds is the Retry-After the proxy sends for a wait of d: whole
// seconds rounded up, at least 1, so a client that honours it is never early.
func retryAfterSeconds(d time.Duration) int64 {
	s := int64((d + time.Second - 1) / time.Second)
	return max(s, 1)
}

// problem is an RFC 7807 document as Boulder writes it.
type problem struct {
	Type   string `json:"type"`
	Detail string `json:"detail"`
	Status int    `json:"status"`
}
