package events

import (
	"hash/maphash"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/net/publicsuffix"

	"github.com/certfleet/certfleet/names"
)

// Fast paths of the field checks. Each one answers "certainly valid" for the
// common, canonical input without regexp, url.Parse or IDNA work, and
// otherwise defers to the full check, which decides and words the error. A
// fast path may only ever accept what the full check accepts
// (fastcheck_test.go holds each to its full check, by table and by fuzzing).

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
func isLowerAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
}

// ^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}$
func matchID(s string) bool {
	if len(s) == 0 || len(s) > 128 || !isAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case isAlnum(c), c == '.', c == '_', c == ':', c == '@', c == '/', c == '+', c == '=', c == '-':
		default:
			return false
		}
	}
	return true
}

// ^[a-z0-9][a-z0-9._-]{0,63}$
func matchName(s string) bool {
	if len(s) == 0 || len(s) > 64 || !isLowerAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isLowerAlnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// ^[A-Za-z0-9_-]{1,256}\.[A-Za-z0-9_-]{1,256}$
func matchARI(s string) bool {
	dot := strings.IndexByte(s, '.')
	if dot < 1 || dot > 256 || len(s)-dot-1 < 1 || len(s)-dot-1 > 256 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; i != dot && !isAlnum(c) && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// ^(0|[1-9a-f][0-9a-f]{0,63})$
func matchSerial(s string) bool {
	if s == "0" {
		return true
	}
	if len(s) == 0 || len(s) > 64 || s[0] == '0' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// ^(urn:ietf:params:acme:error:|urn:certfleet:error:)[A-Za-z0-9]{1,64}$
func matchProblem(s string) bool {
	rest, ok := strings.CutPrefix(s, "urn:ietf:params:acme:error:")
	if !ok {
		if rest, ok = strings.CutPrefix(s, "urn:certfleet:error:"); !ok {
			return false
		}
	}
	if len(rest) == 0 || len(rest) > 64 {
		return false
	}
	for i := 0; i < len(rest); i++ {
		if !isAlnum(rest[i]) {
			return false
		}
	}
	return true
}

// ^[A-Za-z][A-Za-z0-9_.-]{0,63}$
func matchLimit(s string) bool {
	if len(s) == 0 || len(s) > 64 || !(s[0] >= 'a' && s[0] <= 'z' || s[0] >= 'A' && s[0] <= 'Z') {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// plainText reports whether s is at most max bytes of printable ASCII
// (0x20-0x7e), which checkText certainly accepts.
func plainText(s string, max int) bool {
	if len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// isURIPlain: a URI-reference of unreserved characters and "/" only, which
// url.Parse always accepts: no scheme, query, fragment, user info, port or
// percent-escape to get wrong.
func isURIPlain(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '/' && c != '.' && c != '_' && c != '~' && c != '-' {
			return false
		}
	}
	return true
}

// plainHTTPSURL reports whether s is "https://" + a host of unreserved
// characters + an optional path of unreserved characters and "/": an
// absolute https URL with a host, without user info, port, query or
// fragment, as checkCA wants.
func plainHTTPSURL(s string) bool {
	rest, ok := strings.CutPrefix(s, "https://")
	if !ok || len(s) > maxCAURLLen || rest == "" || rest[0] == '/' {
		return false
	}
	for i := 0; i < len(rest); i++ {
		if c := rest[i]; !isAlnum(c) && c != '/' && c != '.' && c != '_' && c != '~' && c != '-' {
			return false
		}
	}
	return true
}

// sansFast reports whether sans is certainly a valid SAN list under the
// process policy: 1 to MaxSANs names, each canonical (canonicalFast), none
// repeated. false means "ask names.ValidateList".
func sansFast(sans []string) bool {
	if len(sans) == 0 || len(sans) > MaxSANs {
		return false
	}
	p := names.ProcessPolicy()
	for i, n := range sans {
		if !canonicalFast(p, n) {
			return false
		}
		if slices.Contains(sans[:i], n) {
			return false
		}
	}
	return true
}

// canonicalFast reports whether name is certainly canonical under p without
// IDNA processing. It accepts only names whose UTS #46 processing is the
// identity: lower-case letters, digits and hyphens, labels of 1-63 bytes
// that neither start nor end with a hyphen, have no hyphens in the third and
// fourth positions (so no A-label, "xn--", and nothing IDNA treats
// specially), at least two labels, at most 253 bytes in all (with an
// optional leading "*." label), under a top-level domain p accepts, not
// itself an ICANN public suffix, and not a wildcard directly over one. Such
// a name is not an IP address: its top label holds a letter.
func canonicalFast(p names.Policy, name string) bool {
	if len(name) > names.MaxNameLength {
		return false
	}
	base := strings.TrimPrefix(name, "*.")
	labels, start, letterInTLD := 0, 0, false
	for i := 0; i <= len(base); i++ {
		if i < len(base) && base[i] != '.' {
			c := base[i]
			if !isLowerAlnum(c) && c != '-' {
				return false
			}
			continue
		}
		l := base[start:i]
		if len(l) == 0 || len(l) > names.MaxLabelLength || l[0] == '-' || l[len(l)-1] == '-' ||
			len(l) >= 4 && l[2] == '-' && l[3] == '-' {
			return false
		}
		labels++
		letterInTLD = strings.IndexFunc(l, func(r rune) bool { return r >= 'a' && r <= 'z' }) >= 0
		start = i + 1
	}
	if labels < 2 || !letterInTLD {
		return false
	}
	if !tldAccepted(p, base[strings.LastIndexByte(base, '.')+1:]) {
		return false
	}
	// names refuses an ICANN public suffix, and a wildcard directly over one.
	return notICANNSuffix(base)
}

// suffixSlots is the size of the table of names known not to be ICANN
// public suffixes: at most this many names of at most 253 bytes are kept.
const suffixSlots = 2048

var (
	suffixSeed = maphash.MakeSeed()
	// suffixOK[h] holds the last name hashing to h that the public suffix
	// list said is not an ICANN public suffix; a name is taken from it only
	// when equal to the one asked about. The answer does not depend on the
	// policy, so the table is shared by all.
	suffixOK [suffixSlots]atomic.Pointer[string]
)

// notICANNSuffix reports whether the public suffix list's prevailing rule
// for name (LDH, at least two labels) does not make name itself an ICANN
// public suffix. The list lookup (a binary search per label, after an IP
// address parse that allocates its error) was a fifth of Encode's time for
// the common two-SAN event; a name asked about again, as every SAN is by
// New, Encode and every Decode of the events of its certificate, costs a
// hash and a comparison instead.
func notICANNSuffix(name string) bool {
	slot := &suffixOK[maphash.String(suffixSeed, name)&(suffixSlots-1)]
	if s := slot.Load(); s != nil && *s == name {
		return true
	}
	if suffix, icann := publicsuffix.PublicSuffix(name); icann && suffix == name {
		return false
	}
	c := strings.Clone(name)
	slot.Store(&c)
	return true
}

// tldVerdicts remembers, for one policy, the top-level domains it accepts.
// Only acceptances are kept, so the map is bounded by the TLDs that exist
// (and the policy's allowed ones), whatever records a reader is sent.
type tldVerdicts struct {
	allowed []string                            // the policy's AllowedSpecialUse
	ok      atomic.Pointer[map[string]struct{}] // copy on write
	mu      sync.Mutex                          // serialises writers
}

var tldCache atomic.Pointer[tldVerdicts]

// tldAccepted reports whether p accepts names under tld (one LDH label with
// a letter), asking names once per TLD and policy: "x.<tld>" is valid
// exactly when the TLD passes p's rules and "x.<tld>" is not itself a
// public suffix, so a yes is certain and a no only sends the caller to the
// full check.
func tldAccepted(p names.Policy, tld string) bool {
	c := tldCache.Load()
	if c == nil || !slices.Equal(c.allowed, p.AllowedSpecialUse) {
		c = &tldVerdicts{allowed: slices.Clone(p.AllowedSpecialUse)}
		c.ok.Store(&map[string]struct{}{})
		tldCache.Store(c)
	}
	if _, ok := (*c.ok.Load())[tld]; ok {
		return true
	}
	if p.Validate("x."+tld) != nil {
		return false
	}
	c.mu.Lock()
	next := maps.Clone(*c.ok.Load())
	next[strings.Clone(tld)] = struct{}{}
	c.ok.Store(&next)
	c.mu.Unlock()
	return true
}
