package names

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"

	"golang.org/x/net/publicsuffix"
)

// Policy is the part of the name rules a deployment chooses: which
// top-level domains that no public CA issues under (special-use names such
// as .test, TLDs not delegated in the root zone) are accepted anyway, for a
// lab CA such as Pebble. The zero Policy is strict and is what production
// runs: a name must end in a TLD that the ICANN section of the public suffix
// list covers, and must not be under .onion or .arpa.
//
// The package-level functions (Normalize, Validate, ValidateList,
// NormalizeSet) use the process policy (SetProcessPolicy); the methods apply
// p itself.
type Policy struct {
	// AllowedSpecialUse lists top-level domains, one label each, lower
	// case, without the dot ("test", "example"), whose names are accepted
	// although public CAs refuse them. Each must be one the strict policy
	// refuses. Empty in production.
	AllowedSpecialUse []string
}

// Strict is the zero Policy: no special-use or undelegated TLD is allowed.
var Strict = Policy{}

// Sentinels of the TLD rules.
var (
	ErrSpecialUse   = errors.New("special-use top-level domain")
	ErrNotDelegated = errors.New("top-level domain not delegated")
)

// specialUse are the TLDs refused with a reason of their own: the
// special-use domain names of RFC 6761 and its successors, .internal, and
// .onion and .arpa, which the public suffix list's ICANN section lists
// although no public CA issues certificates under them.
var specialUse = map[string]string{
	"example":   "reserved for documentation (RFC 6761)",
	"invalid":   "reserved as never valid (RFC 6761)",
	"localhost": "reserved for the loopback host (RFC 6761)",
	"test":      "reserved for testing (RFC 6761)",
	"local":     "reserved for multicast DNS (RFC 6762)",
	"onion":     "reserved for Tor onion services (RFC 7686)",
	"alt":       "reserved for name systems other than the DNS (RFC 9476)",
	"internal":  "reserved by ICANN for private networks",
	"arpa":      "reserved for Internet infrastructure such as reverse DNS and home.arpa (RFC 3172, RFC 8375)",
}

// delegated reports whether tld (one lower-case ASCII label) is covered by
// a rule of the ICANN section of the public suffix list. A TLD listed only
// through a wildcard rule ("*.ck") matches no rule itself, so a label below
// it is tried too; "_" is a label no exact rule names.
func delegated(tld string) bool {
	if _, icann := publicsuffix.PublicSuffix(tld); icann {
		return true
	}
	_, icann := publicsuffix.PublicSuffix("_." + tld)
	return icann
}

// allows reports whether p lists tld.
func (p Policy) allows(tld string) bool { return slices.Contains(p.AllowedSpecialUse, tld) }

// checkTLD applies p to the top-level label of a canonical ASCII name.
func (p Policy) checkTLD(tld string) error {
	if p.allows(tld) {
		return nil
	}
	const hint = "; public CAs do not issue for it (a lab CA's TLDs are allowed with allow-special-names)"
	if why, ok := specialUse[tld]; ok {
		return fmt.Errorf("%w: .%s is %s%s", ErrSpecialUse, tld, why, hint)
	}
	if !delegated(tld) {
		return fmt.Errorf("%w: .%s is not in the ICANN section of the public suffix list%s", ErrNotDelegated, tld, hint)
	}
	return nil
}

// ParsePolicy reads a comma-separated list of TLDs to allow ("test,example";
// a leading dot and spaces are ignored, ASCII is lower-cased) into a Policy,
// as the binaries' -allow-special-names flag gives it. An empty list is
// Strict. Each entry must be one label that the strict policy refuses: a
// delegated TLD such as "com" needs no allowing, and is an error.
func ParsePolicy(list string) (Policy, error) {
	var p Policy
	for _, e := range strings.Split(list, ",") {
		e = strings.ToLower(strings.TrimPrefix(strings.TrimSpace(e), "."))
		if e == "" {
			continue
		}
		p.AllowedSpecialUse = append(p.AllowedSpecialUse, e)
	}
	slices.Sort(p.AllowedSpecialUse)
	p.AllowedSpecialUse = slices.Compact(p.AllowedSpecialUse)
	return p, p.Check()
}

// Check reports the first entry of p.AllowedSpecialUse that is not a TLD
// the strict policy refuses.
func (p Policy) Check() error {
	for _, tld := range p.AllowedSpecialUse {
		if err := checkLabel(tld); err != nil || tld == "" || strings.HasPrefix(tld, "xn--") || isDigits(tld) {
			return fmt.Errorf("names: allowed special-use TLD %q: want one lower-case label of letters, digits and hyphens", tld)
		}
		if Strict.checkTLD(tld) == nil {
			return fmt.Errorf("names: allowed special-use TLD %q: it is delegated, so public CAs issue under it; nothing to allow", tld)
		}
	}
	return nil
}

// String describes p for logs: "strict", or "strict but for .example, .test".
func (p Policy) String() string {
	if len(p.AllowedSpecialUse) == 0 {
		return "strict"
	}
	return "strict but for ." + strings.Join(p.AllowedSpecialUse, ", .")
}

var process atomic.Pointer[Policy]

// SetProcessPolicy makes p the policy of the package-level functions for the
// whole process, for every package that checks names through them (events,
// ratelimit, acmeissuer, the scheduler, the CLI). The binaries call it once
// at start from -allow-special-names (CERTFLEET_ALLOW_SPECIAL_NAMES), whose
// default is empty; tests that use lab names call it from TestMain. Until
// it is called the process policy is Strict. It refuses a policy that fails
// Check.
func SetProcessPolicy(p Policy) error {
	if err := p.Check(); err != nil {
		return err
	}
	c := Policy{AllowedSpecialUse: slices.Clone(p.AllowedSpecialUse)}
	process.Store(&c)
	return nil
}

// ProcessPolicy returns the policy set by SetProcessPolicy, Strict if none.
func ProcessPolicy() Policy {
	if p := process.Load(); p != nil {
		return *p
	}
	return Strict
}
