package ratelimit

import (
	"strings"

	"github.com/certfleet/certfleet/names"
)

// This file reads a CA's 429: which of certfleet's limits the problem
// detail names, in Let's Encrypt's (Boulder's) wording, and so which buckets
// of an order the CA's Retry-After blocks.

// PenaltyTargets returns the buckets of an order (its transactions, as
// OrderTransactions derived them) that a CA's 429 with this problem detail
// blocks. The fleet budget is never among them: it is certfleet's own, the
// CA knows nothing of it. Of the others, by what ParseRateLimitDetail reads:
//
//   - no limit (the CA did not say, or said it in words we do not know):
//     every bucket, as waiting too long is cheaper than hammering the CA;
//   - otherwise the buckets of that limit, narrowed for CertificatesPerDomain
//     and FailedAuthorizationsPerDomainPerAccount to the bucket whose Domain
//     is the name the CA counted, when one is (else every bucket of the limit);
//   - a limit none of the buckets belongs to (an exempt renewal): every
//     bucket again.
//
// The result is never empty unless the order has no bucket but the fleet
// budget.
func PenaltyTargets(txns []Transaction, detail string) []Transaction {
	limit, subject := ParseRateLimitDetail(detail)
	return penaltyTargets(txns, limit, subject)
}

func penaltyTargets(txns []Transaction, limit Name, subject string) []Transaction {
	subject = normalizeSubject(subject)
	var all, ofLimit, ofSubject []Transaction
	for _, t := range txns {
		if t.Name == FleetOrdersPerSecond {
			continue
		}
		all = append(all, t)
		if limit == "" || t.Name != limit {
			continue
		}
		ofLimit = append(ofLimit, t)
		if subject != "" && perDomain(limit) && normalizeSubject(t.Domain) == subject {
			ofSubject = append(ofSubject, t)
		}
	}
	switch {
	case len(ofSubject) > 0:
		return ofSubject
	case len(ofLimit) > 0:
		return ofLimit
	}
	return all
}

func perDomain(n Name) bool {
	return n == CertificatesPerDomain || n == FailedAuthorizationsPerDomainPerAccount
}

// ParseRateLimitDetail reads which limit a rateLimited problem's detail
// names, in Let's Encrypt's (Boulder's) wording, and for a per-domain limit
// the name it counted:
//
//	too many new orders (%d) from this account in the last %s, ...            NewOrdersPerAccount
//	too many new orders recently                                              (older)
//	too many certificates (%d) already issued for %q in the last %s, ...      CertificatesPerDomain, subject %q
//	too many certificates already issued for "example.com". Retry after ...   (older)
//	too many certificates already issued for multiple names (...)             (older; no subject)
//	too many certificates already issued for: example.com                     (oldest)
//	too many certificates (%d) already issued for this exact set of identifiers in the last %s, ...
//	too many certificates (%d) already issued for this exact set of domains ...
//	too many certificates already issued for exact set of domains: ...        CertificatesPerFQDNSet
//	too many failed authorizations (%d) for %q in the last %s, ...            FailedAuthorizationsPerDomainPerAccount, subject %q
//	too many failed authorizations recently                                   (older; no subject)
//	too many new registrations (%d) from this IP address in the last %s, ...  NewRegistrationsPerIPAddress
//	too many new registrations (%d) from this /48 subnet of IPv6 addresses ... NewRegistrationsPerIPv6Range
//
// The detail is the CA's free text, untrusted: matching ignores ASCII case
// and leading text (older Boulder prefixed "Error creating new order :: "),
// anything else (another CA, another limit, two of these phrases at once)
// yields an empty limit, and a subject is returned only when it is a
// canonical DNS name by package names once lower-cased and stripped of a
// trailing dot and a "*." prefix; otherwise (an IP address or range among
// them: certfleet has no such buckets) it is empty. The documentation link at the
// end of the detail is ignored: Boulder has sent the wrong one (a
// per-domain refusal linking #new-orders-per-account).
func ParseRateLimitDetail(detail string) (limit Name, subject string) {
	l := asciiLower(detail)
	var found []Name
	if strings.Contains(l, "too many new orders") {
		found = append(found, NewOrdersPerAccount)
	}
	if _, rest, ok := strings.Cut(l, "too many new registrations"); ok {
		switch rest = skipCount(rest); {
		case strings.HasPrefix(rest, " from this ip address"):
			found = append(found, NewRegistrationsPerIPAddress)
		case strings.HasPrefix(rest, " from this /48 subnet"):
			found = append(found, NewRegistrationsPerIPv6Range)
		default:
			return "", "" // registrations, but which limit: unknown
		}
	}
	if _, rest, ok := strings.Cut(l, "too many failed authorizations"); ok {
		found = append(found, FailedAuthorizationsPerDomainPerAccount)
		rest = skipCount(rest)
		if q, ok := strings.CutPrefix(rest, " for "); ok {
			subject = quoted(q)
		}
	}
	if _, rest, ok := strings.Cut(l, "too many certificates"); ok {
		rest = skipCount(rest)
		if rest, ok = strings.CutPrefix(rest, " already issued for"); ok {
			switch {
			case strings.HasPrefix(rest, " this exact set of"), strings.HasPrefix(rest, " exact set of"):
				found = append(found, CertificatesPerFQDNSet)
			default:
				found = append(found, CertificatesPerDomain)
				subject = issuedFor(rest)
			}
		}
	}
	if len(found) != 1 {
		return "", ""
	}
	if !perDomain(found[0]) {
		subject = ""
	}
	return found[0], subject
}

// skipCount drops a leading " (123)", Boulder's count of the limit.
func skipCount(s string) string {
	r, ok := strings.CutPrefix(s, " (")
	if !ok {
		return s
	}
	i := 0
	for i < len(r) && i < 20 && r[i] >= '0' && r[i] <= '9' {
		i++
	}
	if i == 0 || i >= len(r) || r[i] != ')' {
		return s
	}
	return r[i+1:]
}

// issuedFor reads the domain after "already issued for": ` "example.com"`,
// or `: example.com` (oldest wording; several names are joined by ", ",
// which names no single domain).
func issuedFor(s string) string {
	if q, ok := strings.CutPrefix(s, " "); ok && strings.HasPrefix(q, `"`) {
		return quoted(q)
	}
	list, ok := strings.CutPrefix(s, ": ")
	if !ok {
		return ""
	}
	i := 0
	for i < len(list) && i <= maxSubject+2 && (isDNSChar(list[i]) || list[i] == '*') {
		i++
	}
	if i < len(list) && list[i] == ',' {
		return "" // several names
	}
	return plausibleName(list[:i])
}

// quoted reads a Go-%q-quoted name at the start of s. A name needing escapes
// is no name this package can match.
func quoted(s string) string {
	s, ok := strings.CutPrefix(s, `"`)
	if !ok {
		return ""
	}
	end := strings.IndexByte(s, '"')
	if end < 0 || end > maxSubject+2 {
		return ""
	}
	return plausibleName(s[:end])
}

const maxSubject = 253

// plausibleName returns the normalised name (see normalizeSubject) when
// name, from a detail, is a canonical DNS name by package names; otherwise "".
func plausibleName(name string) string {
	name = normalizeSubject(name)
	if names.Validate(name) != nil {
		return ""
	}
	return name
}

// normalizeSubject returns the comparable form of a bucket subject or a name
// from a detail: lower case, no trailing dot, no "*." prefix; "" for a name
// longer than any DNS name.
func normalizeSubject(s string) string {
	s = strings.TrimPrefix(strings.TrimSuffix(asciiLower(s), "."), "*.")
	if len(s) > maxSubject {
		return ""
	}
	return s
}

func isDNSChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-'
}

// asciiLower lower-cases ASCII letters only, so byte offsets stay those of s
// (strings.ToLower may change the length of invalid or non-ASCII text).
func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}
