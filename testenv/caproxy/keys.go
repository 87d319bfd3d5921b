package caproxy

import (
	"encoding/base64"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/net/publicsuffix"
)

// Limit names, as Boulder names them; they key Stats.RateLimitedByLimit and
// prefix the keys of penalties and violations (see Key).
const (
	LimitNewOrdersPerAccount    = "NewOrdersPerAccount"
	LimitCertificatesPerDomain  = "CertificatesPerDomain"
	LimitCertificatesPerFQDNSet = "CertificatesPerFQDNSet"
	// LimitNewRegistrationsPerIPAddress only names injected 429s on
	// newAccount (Faults.AllPOSTs); the proxy enforces no such limit.
	LimitNewRegistrationsPerIPAddress = "NewRegistrationsPerIPAddress"
)

// Key is the bucket, penalty and Violation key of value under a limit, e.g.
// Key(LimitCertificatesPerFQDNSet, FQDNSet(names)) or
// Key(LimitNewOrdersPerAccount, accountURL).
func Key(limit, value string) string { return limit + ":" + value }

// NormalizeIdentifier is how the proxy compares identifier values: trimmed,
// lower-cased, without a trailing dot.
func NormalizeIdentifier(v string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(v)), ".")
}

// FQDNSet is the exact-set key of an order's identifiers: normalized, sorted,
// de-duplicated and joined by ",". Wildcards stay as they are ("*.a.test" and
// "a.test" are different members, as for Boulder).
func FQDNSet(identifiers []string) string {
	set := make([]string, 0, len(identifiers))
	for _, v := range identifiers {
		set = append(set, NormalizeIdentifier(v))
	}
	slices.Sort(set)
	return strings.Join(slices.Compact(set), ",")
}

// RegisteredDomain is the CertificatesPerDomain key of one identifier: the
// public suffix list's eTLD+1 of the name with any "*." removed; the name
// itself when it has no eTLD+1 (a bare public suffix or single label); for an
// IP address, its /32 (IPv4) or /64 (IPv6) prefix, as Boulder counts them.
func RegisteredDomain(identifier string) string {
	v := strings.TrimPrefix(NormalizeIdentifier(identifier), "*.")
	if addr, err := netip.ParseAddr(v); err == nil {
		bits := 32
		if addr.Is6() && !addr.Is4In6() {
			bits = 64
		}
		return netip.PrefixFrom(addr.Unmap(), bits).Masked().String()
	}
	d, err := publicsuffix.EffectiveTLDPlusOne(v)
	if err != nil {
		return v
	}
	return d
}

// RegisteredDomains are the distinct registered domains of an order, sorted.
func RegisteredDomains(identifiers []string) []string {
	out := make([]string, 0, len(identifiers))
	for _, v := range identifiers {
		out = append(out, RegisteredDomain(v))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// orderKeys are the limiter's view of one newOrder.
type orderKeys struct {
	account string   // JWS kid
	domains []string // RegisteredDomains
	set     string   // FQDNSet
}

// keysOf derives an order's keys; ok is false when the JWS had no kid or no
// identifiers (Pebble will refuse it; the proxy lets it through uncounted).
func keysOf(j jwsInfo) (orderKeys, bool) {
	if j.kid == "" || len(j.identifiers) == 0 {
		return orderKeys{}, false
	}
	return orderKeys{account: j.kid, domains: RegisteredDomains(j.identifiers), set: FQDNSet(j.identifiers)}, true
}

// penaltyKeys are every key of the order a penalty can be on.
func (k orderKeys) penaltyKeys() []string {
	keys := []string{Key(LimitNewOrdersPerAccount, k.account)}
	for _, d := range k.domains {
		keys = append(keys, Key(LimitCertificatesPerDomain, d))
	}
	return append(keys, Key(LimitCertificatesPerFQDNSet, k.set))
}

// jwsInfo is what the proxy reads from a flattened JWS request body, without
// verifying its signature (Pebble does).
type jwsInfo struct {
	kid         string   // protected header "kid" (account URL); empty for jwk-signed requests
	identifiers []string // payload identifiers[].value, when the payload has any
	postAsGet   bool     // empty payload (RFC 8555 §6.3 POST-as-GET)
}

// parseJWS reads a flattened JSON JWS; ok is false when the body is not one.
func parseJWS(body []byte) (info jwsInfo, ok bool) {
	var flat struct {
		Protected string `json:"protected"`
		Payload   string `json:"payload"`
	}
	if err := json.Unmarshal(body, &flat); err != nil || flat.Protected == "" {
		return jwsInfo{}, false
	}
	var header struct {
		KID string `json:"kid"`
	}
	if err := decodeSegment(flat.Protected, &header); err != nil {
		return jwsInfo{}, false
	}
	info.kid = header.KID
	if flat.Payload == "" {
		info.postAsGet = true
		return info, true
	}
	var payload struct {
		Identifiers []struct {
			Type  string `json:"type"`
			Value string `json:"value"`
		} `json:"identifiers"`
	}
	if err := decodeSegment(flat.Payload, &payload); err != nil {
		return info, true // not an order payload; the kid is still good
	}
	for _, id := range payload.Identifiers {
		if id.Value != "" {
			info.identifiers = append(info.identifiers, id.Value)
		}
	}
	return info, true
}

// decodeSegment decodes one base64url JWS segment (padding tolerated) as JSON.
func decodeSegment(seg string, v any) error {
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(seg, "="))
	if err != nil {
		return err
	}
	return json.Unmarshal(raw, v)
}
