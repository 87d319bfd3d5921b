package acmeissuer

import (
	"strings"

	"github.com/certfleet/certfleet/ratelimit"
)

// PenaltyKey is one rate-limit bucket a CA's 429 may block.
type PenaltyKey struct {
	// Limit is the bucket's limit (ratelimit.Transaction.Name).
	Limit ratelimit.Name
	// Subject is the name a per-domain bucket counts
	// (ratelimit.Transaction.Domain): the registered domain (or IP address,
	// or IPv6 /64) of CertificatesPerDomain, the host name of
	// FailedAuthorizationsPerDomainPerAccount. Empty for other limits.
	Subject string
	// Key is the bucket key Config.Penalties blocks
	// (ratelimit.Transaction.Key()).
	Key string
}

// PenaltyTargets returns the keys a 429 about limit (and, for a per-domain
// limit, subject; see ParseRateLimitDetail) blocks:
//
//   - limit empty (the CA did not say, or said it in words we do not know):
//     every key, as waiting too long is cheaper than hammering the CA;
//   - otherwise the keys of that limit, narrowed for CertificatesPerDomain
//     and FailedAuthorizationsPerDomainPerAccount to the key whose Subject is
//     subject when one is (else every key of the limit);
//   - a limit none of keys belongs to: every key again.
//
// The result is never empty unless keys is.
func PenaltyTargets(keys []PenaltyKey, limit ratelimit.Name, subject string) []string {
	subject = normalizeSubject(subject)
	all := make([]string, 0, len(keys))
	var ofLimit, ofSubject []string
	for _, k := range keys {
		all = append(all, k.Key)
		if limit == "" || k.Limit != limit {
			continue
		}
		ofLimit = append(ofLimit, k.Key)
		if subject != "" && perDomain(limit) && normalizeSubject(k.Subject) == subject {
			ofSubject = append(ofSubject, k.Key)
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

func perDomain(n ratelimit.Name) bool {
	return n == ratelimit.CertificatesPerDomain || n == ratelimit.FailedAuthorizationsPerDomainPerAccount
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
//
// The detail is the CA's free text, untrusted: matching ignores ASCII case
// and leading text (older Boulder prefixed "Error creating new order :: "),
// anything else (another CA, another limit, two of these phrases at once)
// yields an empty limit, and a subject is returned only when it is a
// plausible host name, IP address or CIDR, lower-cased, without a trailing
// dot or a "*." prefix; otherwise it is empty. The documentation link at the
// end of the detail is ignored: Boulder has sent the wrong one (a
// per-domain refusal linking #new-orders-per-account).
func ParseRateLimitDetail(detail string) (limit ratelimit.Name, subject string) {
	l := asciiLower(detail)
	var found []ratelimit.Name
	if strings.Contains(l, "too many new orders") {
		found = append(found, ratelimit.NewOrdersPerAccount)
	}
	if _, rest, ok := strings.Cut(l, "too many failed authorizations"); ok {
		found = append(found, ratelimit.FailedAuthorizationsPerDomainPerAccount)
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
				found = append(found, ratelimit.CertificatesPerFQDNSet)
			default:
				found = append(found, ratelimit.CertificatesPerDomain)
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
	return plausibleName(list[:i], false)
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
	return plausibleName(s[:end], true)
}

const maxSubject = 253

// plausibleName returns the normalised name (see normalizeSubject) when
// name, from a detail, is a host name (optionally "*."-prefixed), or with
// addresses an IP address or CIDR; otherwise "".
func plausibleName(name string, addresses bool) string {
	name = normalizeSubject(name)
	if name == "" || strings.Contains(name, "..") || strings.ContainsAny(name[:1]+name[len(name)-1:], ".-") {
		return ""
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !isDNSChar(c) && !(addresses && (c == ':' || c == '/')) {
			return ""
		}
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
