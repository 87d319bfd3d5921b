package events

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/maphash"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/certfleet/certfleet/names"
)

// Field patterns, mirrored by the JSON Schemas.
var (
	// Identifiers: request ids, tenants, idempotency keys.
	idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}$`)
	// Configured CA names and ACME profile names.
	namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	// ARI certificate ids: base64url(AKI) "." base64url(serial), no padding.
	ariPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,256}\.[A-Za-z0-9_-]{1,256}$`)
	// Serial numbers: lower-case hex, no leading zeros.
	serialPattern = regexp.MustCompile(`^(0|[1-9a-f][0-9a-f]{0,63})$`)
	// ACME problem types and certfleet's own.
	problemPattern = regexp.MustCompile(`^(urn:ietf:params:acme:error:|urn:certfleet:error:)[A-Za-z0-9]{1,64}$`)
	// Limit names, as in docs/contracts.md, "Rate limiting" ("CertificatesPerDomain").
	limitPattern = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.-]{0,63}$`)
)

const (
	maxTextLen  = 1024 // detail, issuer, limit_key
	maxCAURLLen = 512
	maxChainLen = 48 << 10
)

type checker struct{ err error }

// check records the first failure.
func (c *checker) check(field string, err error) {
	if c.err == nil && err != nil {
		var fe *FieldError
		if errors.As(err, &fe) {
			c.err = err
			return
		}
		c.err = fieldErr(field, err)
	}
}

// pattern checks a string field against re; match is re's language written
// out (fastcheck.go), asked first so the common valid value costs no regexp.
func pattern(re *regexp.Regexp, match func(string) bool, required bool) func(string) error {
	return func(s string) error {
		if s == "" {
			if required {
				return ErrMissingField
			}
			return nil
		}
		if match(s) {
			return nil
		}
		if err := checkText(s, 1024); err != nil {
			return err
		}
		return fmt.Errorf("%w: %s does not match %s", ErrInvalidField, quote(s), re)
	}
}

var (
	checkRequestID    = pattern(idPattern, matchID, true)
	checkRequestIDOpt = pattern(idPattern, matchID, false)
	checkTenant       = pattern(idPattern, matchID, true)
	checkIdemKey      = pattern(idPattern, matchID, false)
	checkProfile      = pattern(namePattern, matchName, false)
	checkARI          = pattern(ariPattern, matchARI, true)
	checkARIOpt       = pattern(ariPattern, matchARI, false)
	checkSerial       = pattern(serialPattern, matchSerial, true)
	checkProblem      = pattern(problemPattern, matchProblem, true)
	checkLimit        = pattern(limitPattern, matchLimit, true)
)

// checkText rejects invalid UTF-8, control characters (C0, DEL, C1 and the
// Unicode bidi overrides) and strings over max bytes.
func checkText(s string, max int) error {
	if plainText(s, max) {
		return nil
	}
	return checkTextFull(s, max)
}

// checkTextFull is checkText without the printable ASCII shortcut.
func checkTextFull(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidField, len(s), max)
	}
	if !utf8.ValidString(s) {
		return ErrInvalidUTF8
	}
	for _, r := range s {
		if unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) {
			return fmt.Errorf("%w %U", ErrControlChar, r)
		}
	}
	return nil
}

func checkRequiredText(s string, max int) error {
	if s == "" {
		return ErrMissingField
	}
	return checkText(s, max)
}

// checkCA accepts a configured CA name or an absolute https URL without user
// info or fragment.
func checkCA(s string) error {
	if s == "" {
		return ErrMissingField
	}
	if matchName(s) || plainHTTPSURL(s) {
		return nil
	}
	if err := checkText(s, maxCAURLLen); err != nil {
		return err
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return fmt.Errorf("%w: %s is neither a CA name nor an https directory URL", ErrInvalidField, quote(s))
	}
	return nil
}

func checkSANs(c *checker, sans []string) {
	if c.err != nil {
		return
	}
	if sansFast(sans) {
		return
	}
	if len(sans) > MaxSANs {
		c.err = fieldErrf("sans", ErrTooManySANs, "%d, at most %d", len(sans), MaxSANs)
		return
	}
	if err := names.ValidateList(sans, MaxSANs); err != nil {
		field := "sans"
		var ne *names.NameError
		if errors.As(err, &ne) && ne.Index >= 0 {
			field = fmt.Sprintf("sans[%d]", ne.Index)
		}
		c.err = &FieldError{Field: field, Err: fmt.Errorf("%w: %w", ErrInvalidSAN, err)}
	}
}

func requiredTime(t time.Time) error {
	if t.IsZero() {
		return ErrMissingField
	}
	return nil
}

func oneOf[T ~string](v T, allowed []T) error {
	if v == "" {
		return ErrMissingField
	}
	if !slices.Contains(allowed, v) {
		return fmt.Errorf("%w: %s is not one of %v", ErrInvalidField, quote(string(v)), allowed)
	}
	return nil
}

func intRange(v, lo, hi int) error {
	if v < lo || v > hi {
		return fmt.Errorf("%w: %d is outside [%d, %d]", ErrInvalidField, v, lo, hi)
	}
	return nil
}

const maxAttempt = 1 << 20

// Validate implements Payload.
func (p *IssuanceRequest) Validate() error {
	var c checker
	c.check("request_id", checkRequestID(p.RequestID))
	checkSANs(&c, p.SANs)
	c.check("tenant", checkTenant(p.Tenant))
	c.check("key_type", oneOf(p.KeyType, keyTypes))
	c.check("ca", checkCA(p.CA))
	c.check("profile", checkProfile(p.Profile))
	c.check("priority", intRange(p.Priority, 0, MaxPriority))
	c.check("reason", oneOf(p.Reason, reasons))
	c.check("replaces", checkARIOpt(p.Replaces))
	if p.Reason == ReasonNew && p.Replaces != "" {
		c.check("replaces", fmt.Errorf("%w: a request with reason %q replaces nothing", ErrInvalidField, ReasonNew))
	}
	c.check("idempotency_key", checkIdemKey(p.IdempotencyKey))
	c.check("attempt", intRange(p.Attempt, 0, maxAttempt))
	return c.err
}

// Validate implements Payload. Beyond the field rules it parses ChainPEM and
// checks that the leaf matches SANs, Serial, NotBefore and NotAfter.
func (p *CertObtained) Validate() error {
	var c checker
	c.check("request_id", checkRequestID(p.RequestID))
	checkSANs(&c, p.SANs)
	c.check("tenant", checkTenant(p.Tenant))
	c.check("ca", checkCA(p.CA))
	c.check("serial", checkSerial(p.Serial))
	c.check("not_before", requiredTime(p.NotBefore))
	c.check("not_after", requiredTime(p.NotAfter))
	if !p.NotAfter.After(p.NotBefore) {
		c.check("not_after", fmt.Errorf("%w: not after not_before", ErrInvalidField))
	}
	c.check("ari_cert_id", checkARI(p.ARICertID))
	c.check("issuer", checkRequiredText(p.Issuer, maxTextLen))
	c.check("replaces", checkARIOpt(p.Replaces))
	c.check("attempts", intRange(p.Attempts, 1, maxAttempt))
	if c.err == nil {
		c.check("chain_pem", p.checkChain())
	}
	return c.err
}

func (p *CertObtained) checkChain() error {
	if p.ChainPEM == "" {
		return ErrMissingField
	}
	if len(p.ChainPEM) > maxChainLen {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidField, len(p.ChainPEM), maxChainLen)
	}
	leaf, err := parseChain(p.ChainPEM)
	if err != nil {
		return err
	}
	if leaf.serial != p.Serial {
		return fmt.Errorf("%w: leaf serial %s, field serial %s", ErrInvalidField, leaf.serial, quote(p.Serial))
	}
	if !leaf.notBefore.Equal(p.NotBefore) || !leaf.notAfter.Equal(p.NotAfter) {
		return fmt.Errorf("%w: leaf validity %s..%s differs from not_before/not_after", ErrInvalidField,
			leaf.notBefore.UTC().Format(time.RFC3339), leaf.notAfter.UTC().Format(time.RFC3339))
	}
	var sans [64]byte
	identityHex(&sans, p.SANs)
	if sans != leaf.dnsIdentity || leaf.otherSANs {
		return fmt.Errorf("%w: leaf SANs differ from the sans field", ErrInvalidField)
	}
	return nil
}

// leafFacts is what checkChain compares of a chain's leaf certificate.
type leafFacts struct {
	serial              string // hex, as big.Int.Text(16)
	notBefore, notAfter time.Time
	dnsIdentity         [64]byte // identityHex of the dNSName SANs
	otherSANs           bool     // any IP address, email or URI SAN
}

// parseChain parses a chain of PEM CERTIFICATE blocks without headers,
// nothing but white space after the last, every certificate one
// x509.ParseCertificate accepts, and returns the facts of the first.
func parseChain(chain string) (leafFacts, error) {
	if f, ok := chainCache.get(chain); ok {
		return f, nil
	}
	rest := []byte(chain)
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if strings.Contains(b.Type, "PRIVATE KEY") {
			return leafFacts{}, ErrPrivateKey
		}
		if b.Type != "CERTIFICATE" || len(b.Headers) != 0 {
			return leafFacts{}, fmt.Errorf("%w: PEM block %s, only CERTIFICATE blocks without headers are allowed", ErrInvalidField, quote(b.Type))
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return leafFacts{}, fmt.Errorf("%w: certificate %d: %v", ErrInvalidField, len(certs), err)
		}
		certs = append(certs, cert)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return leafFacts{}, fmt.Errorf("%w: data after the last PEM block", ErrInvalidField)
	}
	if len(certs) == 0 {
		return leafFacts{}, fmt.Errorf("%w: no certificate", ErrInvalidField)
	}
	leaf := certs[0]
	f := leafFacts{
		serial:    leaf.SerialNumber.Text(16),
		notBefore: leaf.NotBefore,
		notAfter:  leaf.NotAfter,
		otherSANs: len(leaf.IPAddresses)+len(leaf.EmailAddresses)+len(leaf.URIs) != 0,
	}
	identityHex(&f.dnsIdentity, leaf.DNSNames)
	chainCache.put(chain, f)
	return f, nil
}

// chainSlots is the size of chainCache: at most this many chains of at
// most maxChainLen bytes are kept.
const chainSlots = 64

// chainCache holds the leaf facts of chains parseChain accepted, each with
// its chain. Parsing (PEM, then every certificate) is most of the cost of
// a cert.obtained: New validates the event, Encode validates it again, a
// consumer that re-publishes decodes and encodes it. A chain is taken from
// the cache only when equal, byte for byte, to the one asked about: the
// facts are what parsing those bytes gives, so every check still applies.
var chainCache = newFactsCache()

type factsEntry struct {
	chain string
	facts leafFacts
}

type factsCache struct {
	seed  maphash.Seed
	slots [chainSlots]atomic.Pointer[factsEntry]
}

func newFactsCache() *factsCache { return &factsCache{seed: maphash.MakeSeed()} }

func (c *factsCache) slot(chain string) *atomic.Pointer[factsEntry] {
	return &c.slots[maphash.String(c.seed, chain)&(chainSlots-1)]
}

func (c *factsCache) get(chain string) (leafFacts, bool) {
	if e := c.slot(chain).Load(); e != nil && e.chain == chain {
		return e.facts, true
	}
	return leafFacts{}, false
}

func (c *factsCache) put(chain string, f leafFacts) {
	c.slot(chain).Store(&factsEntry{chain: strings.Clone(chain), facts: f})
}

// Validate implements Payload.
func (p *CertFailed) Validate() error {
	var c checker
	c.check("request_id", checkRequestID(p.RequestID))
	checkSANs(&c, p.SANs)
	c.check("tenant", checkTenant(p.Tenant))
	c.check("ca", checkCA(p.CA))
	c.check("problem_type", checkProblem(p.ProblemType))
	c.check("detail", checkText(p.Detail, maxTextLen))
	if p.Retryable != !p.NextAttemptAt.IsZero() {
		c.check("next_attempt_at", fmt.Errorf("%w: set exactly when retryable is true", ErrInvalidField))
	}
	c.check("attempt", intRange(p.Attempt, 1, maxAttempt))
	return c.err
}

// Validate implements Payload.
func (p *IssuanceDeferred) Validate() error {
	var c checker
	c.check("request_id", checkRequestID(p.RequestID))
	checkSANs(&c, p.SANs)
	c.check("tenant", checkTenant(p.Tenant))
	c.check("ca", checkCA(p.CA))
	c.check("limit", checkLimit(p.Limit))
	c.check("limit_key", checkRequiredText(p.LimitKey, maxTextLen))
	c.check("retry_at", requiredTime(p.RetryAt))
	c.check("attempt", intRange(p.Attempt, 0, maxAttempt))
	return c.err
}

// Validate implements Payload.
func (p *RenewalScheduled) Validate() error {
	var c checker
	c.check("request_id", checkRequestID(p.RequestID))
	checkSANs(&c, p.SANs)
	c.check("tenant", checkTenant(p.Tenant))
	c.check("ca", checkCA(p.CA))
	c.check("replaces", checkARI(p.Replaces))
	c.check("renew_at", requiredTime(p.RenewAt))
	c.check("basis", oneOf(p.Basis, bases))
	if p.WindowStart.IsZero() != p.WindowEnd.IsZero() {
		c.check("window_end", fmt.Errorf("%w: window_start and window_end are set together", ErrInvalidField))
	}
	if !p.WindowStart.IsZero() && !p.WindowEnd.After(p.WindowStart) {
		c.check("window_end", fmt.Errorf("%w: window_end not after window_start", ErrInvalidField))
	}
	if p.Basis == BasisARI && p.WindowStart.IsZero() {
		c.check("window_start", fmt.Errorf("%w: required when basis is %q", ErrMissingField, BasisARI))
	}
	return c.err
}
