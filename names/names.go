// Package names validates and canonicalises the identifiers that certfleet
// puts into certificates (subjectAltName dNSName entries). It is the only
// package that decides what a valid identifier is: events, the scheduler,
// the CLI, ratelimit and acmeissuer call it instead of parsing names
// themselves.
//
// It owns the rules for what counts as an acceptable certificate name: IDNA
// (UTS #46 non-transitional mapping, so "faß.example" is
// "xn--fa-hia.example", not IDNA2003's "fass.example"; RFC 5891 label rules,
// the Bidi rule, CONTEXTJ and, on the decoded form of every xn-- label,
// RFC 5892's IDNA2008 code point rules), the RFC 1035 lengths (253 octets
// per name, 63 per label), letters-digits-hyphen labels, a wildcard only as
// the whole leftmost label, at least two labels, no name (or wildcard base)
// that is itself an ICANN public suffix, and a top-level domain delegated in
// the ICANN section of the public suffix list, not special-use (.test,
// .example, .invalid, .localhost, .local, .onion, .alt, .internal, .arpa).
// The canonical form is the lower-case ASCII (A-label) form without a
// trailing dot. It also owns the public suffix list lookup
// (RegisteredDomain) that rate limits and DNS-01 zones are keyed by.
//
// Lab CAs (Pebble) issue for special-use names; a Policy lists the TLDs a
// deployment allows beyond the strict rules. The zero Policy is strict; the
// package-level functions use the process policy, which the binaries set
// once at start from -allow-special-names (SetProcessPolicy) and which is
// strict until then.
//
// IP address identifiers (RFC 8738) are refused, everywhere, with
// ErrIPAddress ("IP address identifiers are not supported: ..."): an address
// or an address prefix, bracketed or not. Let's Encrypt issues IP address
// certificates only on its short-lived profile, and nothing else in certfleet
// (the request contract, the certificate identity, the rate-limit buckets,
// DNS-01 and HTTP-01 solving) handles them; supporting them means changing
// this package first, and every caller then sees them.
//
// It is pure: no I/O, no clock. The events package uses it to validate SANs on
// the wire; the worker and the scheduler use it on their inputs. It does not
// decide policy that depends on a CA or a tenant (block lists).
package names

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/net/publicsuffix"
)

// Limits from RFC 1035 section 2.3.4, applied to the ASCII form.
const (
	MaxNameLength  = 253
	MaxLabelLength = 63
)

// Sentinel errors; every error returned by this package wraps exactly one of
// them inside a *NameError.
var (
	ErrEmpty        = errors.New("empty name")
	ErrNoNames      = errors.New("no SANs: at least one is required")
	ErrTooLong      = errors.New("name longer than 253 octets")
	ErrLabelTooLong = errors.New("label longer than 63 octets")
	ErrEmptyLabel   = errors.New("empty label")
	ErrTrailingDot  = errors.New("trailing dot")
	ErrInvalidLabel = errors.New("invalid label")
	ErrWildcard     = errors.New("wildcard is allowed only as the whole leftmost label")
	ErrIPAddress    = errors.New("IP address identifiers are not supported: certfleet issues certificates for DNS names only")
	ErrSingleLabel  = errors.New("name needs at least two labels")
	ErrPublicSuffix = errors.New("name is a public suffix")
	ErrIDNA         = errors.New("IDNA conversion failed")
	ErrNumericTLD   = errors.New("top-level label is all digits")
	ErrNotCanonical = errors.New("name is not in canonical form")
	ErrDuplicate    = errors.New("duplicate name")
	ErrInvalidUTF8  = errors.New("name is not valid UTF-8")
	ErrControl      = errors.New("name contains a control or space character")
	ErrTooManyNames = errors.New("too many names")
)

// NameError describes why one name was rejected. Name is the offending input,
// quoted with %q by Error so control characters cannot reach logs raw; Index is
// its position in a list, or -1 for a single name or the list as a whole.
type NameError struct {
	Name  string
	Index int
	Err   error
}

func (e *NameError) Error() string {
	name := e.Name
	if len(name) > 80 {
		name = name[:80] + "..."
	}
	switch {
	case e.Index >= 0:
		return fmt.Sprintf("names: name %d %q: %v", e.Index, name, e.Err)
	case e.Name == "" && e.Err != ErrEmpty:
		return "names: " + e.Err.Error() // about the list, not one name
	}
	return fmt.Sprintf("names: %q: %v", name, e.Err)
}

func (e *NameError) Unwrap() error { return e.Err }

// profile maps for lookup (case folding, width mapping, NFC), checks the RFC
// 5891 label rules (hyphens, CONTEXTJ), the Bidi rule and the DNS lengths,
// non-transitionally (ß, ς and the joiners are kept, as IDNA2008 does), and
// rejects anything outside letters, digits and hyphen in the ASCII range.
var profile = idna.New(
	idna.MapForLookup(),
	idna.BidiRule(),
	idna.VerifyDNSLength(true),
	idna.Transitional(false),
)

// Normalize returns the canonical form of a certificate DNS name under the
// process policy (see Policy.Normalize).
func Normalize(name string) (string, error) { return ProcessPolicy().Normalize(name) }

// Validate reports whether name is canonical under the process policy (see
// Policy.Validate).
func Validate(name string) error { return ProcessPolicy().Validate(name) }

// ValidateList checks a SAN list under the process policy (see
// Policy.ValidateList).
func ValidateList(list []string, max int) error { return ProcessPolicy().ValidateList(list, max) }

// NormalizeSet canonicalises a SAN set under the process policy (see
// Policy.NormalizeSet).
func NormalizeSet(list []string, max int) ([]string, error) {
	return ProcessPolicy().NormalizeSet(list, max)
}

// Normalize returns the canonical form of a certificate DNS name: IDNA
// A-labels, lower-case, no trailing dot. "*.Example.COM" becomes
// "*.example.com" and "bücher.example" becomes "xn--bcher-kva.example"
// (when p allows .example). It returns a *NameError for anything that is
// not an acceptable name.
func (p Policy) Normalize(name string) (string, error) {
	canon, err := p.normalize(name)
	if err != nil {
		return "", &NameError{Name: name, Index: -1, Err: err}
	}
	return canon, nil
}

// Validate reports whether name is already canonical (Normalize(name) ==
// name). Wire formats require canonical names so that every reader derives
// the same certificate identity without running IDNA itself. The error
// says what differs (upper case, the Unicode form) and gives the canonical
// form.
func (p Policy) Validate(name string) error {
	canon, err := p.Normalize(name)
	if err != nil {
		return err
	}
	if canon != name {
		return &NameError{Name: name, Index: -1, Err: notCanonical(name, canon)}
	}
	return nil
}

func notCanonical(name, canon string) error {
	switch {
	case strings.ToLower(name) == canon:
		return fmt.Errorf("%w: upper case; write %s", ErrNotCanonical, canon)
	case !isASCII(name):
		return fmt.Errorf("%w: Unicode form; write the A-label form %s", ErrNotCanonical, canon)
	}
	return fmt.Errorf("%w: write %s", ErrNotCanonical, canon)
}

// ValidateList checks a SAN list: between 1 and max names, each canonical,
// none repeated. Errors carry the index of the first bad name.
func (p Policy) ValidateList(list []string, max int) error {
	if len(list) == 0 {
		return &NameError{Index: -1, Err: ErrNoNames}
	}
	if len(list) > max {
		return &NameError{Index: -1, Err: fmt.Errorf("%w: %d, at most %d", ErrTooManyNames, len(list), max)}
	}
	seen := make(map[string]struct{}, len(list))
	for i, n := range list {
		if err := p.Validate(n); err != nil {
			ne := err.(*NameError)
			ne.Index = i
			return ne
		}
		if _, dup := seen[n]; dup {
			return &NameError{Name: n, Index: i, Err: ErrDuplicate}
		}
		seen[n] = struct{}{}
	}
	return nil
}

// NormalizeSet returns the canonical forms of list (see Normalize), sorted and
// without duplicates: the SAN set a certificate is for, whatever order and
// case its names were given in. It refuses an empty list and one of more than
// max distinct names; errors are *NameError values carrying the index of the
// first bad name.
func (p Policy) NormalizeSet(list []string, max int) ([]string, error) {
	if len(list) == 0 {
		return nil, &NameError{Index: -1, Err: ErrNoNames}
	}
	out := make([]string, 0, len(list))
	for i, n := range list {
		c, err := p.normalize(n)
		if err != nil {
			return nil, &NameError{Name: n, Index: i, Err: err}
		}
		out = append(out, c)
	}
	slices.Sort(out)
	out = slices.Compact(out)
	if len(out) > max {
		return nil, &NameError{Index: -1, Err: fmt.Errorf("%w: %d, at most %d", ErrTooManyNames, len(out), max)}
	}
	return out, nil
}

func (p Policy) normalize(name string) (string, error) {
	if name == "" {
		return "", ErrEmpty
	}
	// Cheap bound before IDNA work: a U-label never gets shorter than a
	// quarter of its A-label, so 4x the limit is generous.
	if len(name) > 4*MaxNameLength {
		return "", ErrTooLong
	}
	if !utf8.ValidString(name) {
		return "", ErrInvalidUTF8
	}
	for _, r := range name {
		if unicode.IsControl(r) || unicode.IsSpace(r) || r == utf8.RuneError {
			return "", fmt.Errorf("%w: %U", ErrControl, r)
		}
	}
	if isIP(name) {
		return "", ErrIPAddress
	}
	wildcard := false
	base := name
	if strings.HasPrefix(name, "*.") {
		wildcard = true
		base = name[2:]
	}
	if strings.Contains(base, "*") {
		return "", ErrWildcard
	}
	if strings.HasSuffix(base, ".") && !strings.HasSuffix(base, "..") && base != "." {
		// An absolute name: SANs are written without the root's dot.
		trimmed := strings.TrimSuffix(name, ".")
		if canon, err := p.normalize(trimmed); err == nil {
			return "", fmt.Errorf("%w: write %s, not %s", ErrTrailingDot, canon, name)
		}
		return "", fmt.Errorf("%w: certificate names are written without it", ErrTrailingDot)
	}
	for _, l := range strings.Split(base, ".") {
		if l == "" {
			return "", ErrEmptyLabel
		}
	}
	ascii, err := profile.ToASCII(base)
	if err != nil {
		return "", classifyIDNA(base, err)
	}
	if ascii == "" {
		return "", ErrEmpty
	}
	labels := strings.Split(ascii, ".")
	for _, l := range labels {
		if err := checkLabel(l); err != nil {
			return "", err
		}
		if strings.HasPrefix(l, "xn--") {
			u, err := idna.Punycode.ToUnicode(l)
			if err != nil {
				return "", fmt.Errorf("%w: label %s is not valid Punycode", ErrIDNA, l)
			}
			if err := checkIDNA2008(l, u); err != nil {
				return "", err
			}
		}
	}
	tld := labels[len(labels)-1]
	if len(labels) < 2 && !wildcard {
		return "", ErrSingleLabel
	}
	if isDigits(tld) {
		// Also catches dotted-decimal forms netip does not parse, such as
		// "1.2.3.04" or "1.2.3".
		return "", ErrNumericTLD
	}
	if err := p.checkTLD(tld); err != nil {
		return "", err
	}
	suffix, icann := publicsuffix.PublicSuffix(ascii)
	switch {
	case wildcard && icann && suffix == ascii:
		return "", fmt.Errorf("%w: wildcard directly under the public suffix %s", ErrPublicSuffix, ascii)
	case wildcard && len(labels) < 2:
		return "", fmt.Errorf("%w: wildcard directly under the top-level domain %s", ErrSingleLabel, ascii)
	case icann && suffix == ascii:
		return "", fmt.Errorf("%w: names are registered below %s, not %s itself", ErrPublicSuffix, ascii, ascii)
	}
	out := ascii
	if wildcard {
		out = "*." + ascii
	}
	if len(out) > MaxNameLength {
		return "", ErrTooLong
	}
	return out, nil
}

func checkLabel(l string) error {
	if l == "" {
		return ErrEmptyLabel
	}
	if len(l) > MaxLabelLength {
		return ErrLabelTooLong
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-'
		if !ok {
			return fmt.Errorf("%w: character %q", ErrInvalidLabel, c)
		}
	}
	if l[0] == '-' || l[len(l)-1] == '-' {
		return fmt.Errorf("%w: leading or trailing hyphen", ErrInvalidLabel)
	}
	return nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// Profiles that each leave one rule of profile out, used only to tell which
// rule a failure broke.
var (
	lenient   = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.Transitional(false))
	noBidi    = idna.New(idna.MapForLookup(), idna.Transitional(false))
	noJoiners = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.Transitional(false), idna.CheckJoiners(false))
)

// classifyIDNA maps an IDNA failure onto this package's sentinels and says
// which rule failed: x/net/idna's own message only quotes the label.
func classifyIDNA(base string, err error) error {
	if ascii, lerr := lenient.ToASCII(base); lerr == nil {
		if len(ascii) > MaxNameLength {
			return ErrTooLong
		}
		for _, l := range strings.Split(ascii, ".") {
			if len(l) > MaxLabelLength {
				return ErrLabelTooLong
			}
		}
	}
	for _, l := range strings.Split(base, ".") {
		text := l
		if isASCII(l) {
			l = strings.ToLower(l)
			if i := strings.IndexFunc(l, func(r rune) bool { return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') }); i >= 0 {
				return fmt.Errorf("%w: label %q: character %q; a label holds letters, digits and hyphens", ErrIDNA, l, l[i])
			}
			if strings.HasPrefix(l, "-") || strings.HasSuffix(l, "-") {
				return fmt.Errorf("%w: label %q starts or ends with a hyphen", ErrIDNA, l)
			}
			if !strings.HasPrefix(l, "xn--") {
				if len(l) >= 4 && l[2:4] == "--" {
					return fmt.Errorf("%w: label %q: hyphens in the third and fourth positions are reserved for A-labels (xn--)", ErrIDNA, l)
				}
				continue
			}
			u, e := idna.Punycode.ToUnicode(l)
			switch {
			case e != nil:
				return fmt.Errorf("%w: label %q is not valid Punycode", ErrIDNA, l)
			case isASCII(u):
				return fmt.Errorf("%w: label %q decodes to ASCII only, so it is not an A-label", ErrIDNA, l)
			}
			if a, e := profile.ToASCII(u); e == nil && a != l {
				return fmt.Errorf("%w: label %q decodes to text that UTS #46 maps (upper case, a compatibility or unnormalised form), so it is not canonical: write %s", ErrIDNA, l, a)
			}
			text = u
		}
		if err := unicodeLabelRule(l, text); err != nil {
			return err
		}
	}
	if _, e := noBidi.ToASCII(base); e == nil {
		return fmt.Errorf("%w: breaks the Bidi rule (RFC 5893): right-to-left text mixed with left-to-right text or digits in a way that can display as another name", ErrIDNA)
	}
	msg := err.Error()
	if len(msg) > 120 {
		msg = msg[:120] + "..."
	}
	return fmt.Errorf("%w: %s", ErrIDNA, msg)
}

// unicodeLabelRule names the RFC 5891 or UTS #46 rule the Unicode label text
// (label as written) breaks, if one label alone shows it.
func unicodeLabelRule(label, text string) error {
	r0, _ := utf8.DecodeRuneInString(text)
	if unicode.Is(unicode.M, r0) {
		return fmt.Errorf("%w: label %q begins with a combining mark (%U)", ErrIDNA, label, r0)
	}
	if strings.ContainsAny(text, "\u200c\u200d") {
		if _, e := noJoiners.ToASCII(text); e == nil {
			return fmt.Errorf("%w: label %q: a zero width joiner or non-joiner (U+200D, U+200C) outside the contexts IDNA2008 allows (RFC 5892 CONTEXTJ)", ErrIDNA, label)
		}
	}
	for _, r := range text {
		if r < utf8.RuneSelf {
			continue
		}
		if _, e := noBidi.ToASCII("a" + string(r) + "a"); e != nil {
			return fmt.Errorf("%w: label %q: %U is not allowed in a name (UTS #46)", ErrIDNA, label, r)
		}
	}
	return nil
}

// isIP reports whether s is an IP address (bracketed or not, with or
// without a zone) or an address prefix in CIDR notation.
func isIP(s string) bool {
	if _, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return true
	}
	_, err := netip.ParsePrefix(s)
	return err == nil
}

// RegisteredDomain returns the registered domain of name: its public suffix
// (by the whole public suffix list, ICANN and private sections) plus one
// label, as rate limits count domains ("www.example.co.uk" is in
// "example.co.uk", "foo.github.io" is its own). A leading "*." and a trailing
// dot are ignored and ASCII is lower-cased; name is not otherwise validated,
// so DNS-01 record names ("_acme-challenge.www.example.com") work too. A name
// that is itself a public suffix ("github.io", "co.uk") has no registered
// domain: the error wraps ErrPublicSuffix.
func RegisteredDomain(name string) (string, error) {
	host := strings.TrimPrefix(strings.TrimSuffix(strings.ToLower(name), "."), "*.")
	rd, err := publicsuffix.EffectiveTLDPlusOne(host)
	if err != nil {
		return "", &NameError{Name: name, Index: -1, Err: ErrPublicSuffix}
	}
	return rd, nil
}
