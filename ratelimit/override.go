package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/certfleet/certfleet/names"
)

// Override replaces the catalogue's limit for matching buckets. Key is either
// an exact key (a bucket value, an account id, or a domain) or a wildcard
// pattern "*.example.com", which matches example.com and every name below it.
// Lookup order for a bucket: an exact match on the bucket's value, account or
// domain (in that order), then the most specific matching wildcard, then the
// catalogue default. Only enabled rows valid at the time of the decision
// count; among several rows for the same key the one with the latest
// ValidFrom wins. An override replaces the default whether it is higher or
// lower.
type Override struct {
	ID         string
	Name       Name
	Key        string
	Limit      Limit
	ValidFrom  time.Time
	ValidUntil time.Time // zero: open ended
	Enabled    bool
	Comment    string
	CreatedBy  string
	Version    int64 // starts at 1, incremented by every change
	UpdatedAt  time.Time
}

// activeAt reports whether o applies at now.
func (o *Override) activeAt(now time.Time) bool {
	return o.Enabled && !now.Before(o.ValidFrom) && (o.ValidUntil.IsZero() || now.Before(o.ValidUntil))
}

// OverrideSource finds the overrides in force. Implementations must be safe
// for concurrent use; ctx bounds each call.
type OverrideSource interface {
	// Find returns, for each transaction in order, the override that
	// applies at now, or nil for the catalogue default. It reads every
	// transaction's candidates in one batch.
	Find(ctx context.Context, now time.Time, txns []Transaction) ([]*Override, error)
}

// Validation limits for overrides.
const (
	maxKeyLen       = 256
	maxCommentLen   = 1024
	maxCreatedByLen = 128
)

// ValidateOverride checks every field an operator supplies, returning a
// *FieldError naming the first bad one.
func ValidateOverride(o Override) error {
	if !o.Name.Valid() {
		return &FieldError{Field: "name", Err: fmt.Errorf("unknown limit name %q (known: %v)", truncate(string(o.Name), 64), Names)}
	}
	if err := ValidateOverrideKey(o.Key); err != nil {
		return &FieldError{Field: "key", Err: err}
	}
	if err := checkCount(o.Limit.Count); err != nil {
		return &FieldError{Field: "count", Err: err}
	}
	if err := checkPeriod(o.Limit.Period); err != nil {
		return &FieldError{Field: "period", Err: err}
	}
	if err := checkCount(o.Limit.Burst); err != nil {
		return &FieldError{Field: "burst", Err: err}
	}
	if err := o.Limit.Validate(); err != nil {
		return &FieldError{Field: "burst", Err: err}
	}
	if o.ValidFrom.IsZero() {
		return &FieldError{Field: "valid_from", Err: errors.New("is required")}
	}
	if !o.ValidUntil.IsZero() && !o.ValidUntil.After(o.ValidFrom) {
		return &FieldError{Field: "valid_until", Err: fmt.Errorf("%s is not after valid_from %s", o.ValidUntil.UTC().Format(time.RFC3339), o.ValidFrom.UTC().Format(time.RFC3339))}
	}
	if y := o.ValidFrom.Year(); y < 2000 || y > 2200 {
		return &FieldError{Field: "valid_from", Err: fmt.Errorf("year %d is out of range", y)}
	}
	if y := o.ValidUntil.Year(); !o.ValidUntil.IsZero() && y > 2200 {
		return &FieldError{Field: "valid_until", Err: fmt.Errorf("year %d is out of range", y)}
	}
	if err := checkText(o.Comment, maxCommentLen, false); err != nil {
		return &FieldError{Field: "comment", Err: err}
	}
	if o.CreatedBy == "" {
		return &FieldError{Field: "created_by", Err: errors.New("is required")}
	}
	if err := checkIdent(o.CreatedBy, maxCreatedByLen); err != nil {
		return &FieldError{Field: "created_by", Err: err}
	}
	return nil
}

// ValidateOverrideKey accepts a wildcard "*.<name>" whose name is a
// canonical DNS name (package names) at or below a registered domain (so
// "*", "*.com", "*.co.uk" and "*.github.io" are rejected as over-broad), or
// an exact key: a canonical DNS name that is not a public suffix, or an
// identifier of letters, digits and ._:/@+- (account ids, "account:domain",
// SAN set hashes). An IP address or prefix is refused with names' reason: no
// bucket is keyed by one, as IP address identifiers are not supported.
func ValidateOverrideKey(k string) error {
	if k == "" || len(k) > maxKeyLen {
		return fmt.Errorf("must be 1-%d bytes", maxKeyLen)
	}
	if rest, ok := strings.CutPrefix(k, "*."); ok {
		if names.Validate(rest) != nil || strings.HasPrefix(rest, "*.") {
			return fmt.Errorf("wildcard %q must be *. followed by a lower-case DNS name", truncate(k, 64))
		}
		if _, err := names.RegisteredDomain(rest); err != nil {
			return fmt.Errorf("wildcard %q is over-broad: %q is a public suffix", k, rest)
		}
		return nil
	}
	if strings.Contains(k, "*") {
		return fmt.Errorf("%q: a wildcard is only allowed as a leading \"*.\"", truncate(k, 64))
	}
	nameErr := names.Validate(k)
	if errors.Is(nameErr, names.ErrIPAddress) {
		return nameErr
	}
	if err := checkIdent(k, maxKeyLen); err != nil {
		return err
	}
	if looksLikeDomain(k) {
		if nameErr != nil {
			return fmt.Errorf("domain %q must be a lower-case DNS name", truncate(k, 64))
		}
		if _, err := names.RegisteredDomain(k); err != nil {
			return fmt.Errorf("%q is a public suffix", k)
		}
	}
	return nil
}

// looksLikeDomain: dotted, no characters a domain cannot have.
func looksLikeDomain(k string) bool {
	return strings.Contains(k, ".") && !strings.ContainsAny(k, ":/@+_")
}

func checkIdent(s string, maxLen int) error {
	if len(s) > maxLen {
		return fmt.Errorf("longer than %d bytes", maxLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._:/@+-", c) >= 0) {
			return fmt.Errorf("byte %d (%q) is not one of letters, digits and ._:/@+-", i, c)
		}
	}
	return nil
}

// checkText accepts valid UTF-8 without control or format characters.
func checkText(s string, maxLen int, required bool) error {
	if required && s == "" {
		return errors.New("is required")
	}
	if len(s) > maxLen {
		return fmt.Errorf("longer than %d bytes", maxLen)
	}
	if !utf8.ValidString(s) {
		return errors.New("is not valid UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return fmt.Errorf("contains control or format character %U", r)
		}
	}
	return nil
}

// overrideCandidates lists the keys an override may have to apply to t, most
// specific first: exact value, account, domain, then wildcards from the
// domain itself up to its registered domain.
func overrideCandidates(t Transaction) []string {
	var out []string
	add := func(s string) {
		if s != "" && len(s) <= maxKeyLen {
			for _, o := range out {
				if o == s {
					return
				}
			}
			out = append(out, s)
		}
	}
	add(t.Value)
	add(t.Account)
	add(t.Domain)
	if rd, err := names.RegisteredDomain(t.Domain); t.Domain != "" && err == nil {
		for d := t.Domain; d != ""; _, d, _ = strings.Cut(d, ".") {
			add("*." + d)
			if d == rd {
				break
			}
		}
	}
	return out
}

// pickOverride chooses among rows (all for t's limit name and active) the
// one for the most specific candidate; for one key the latest ValidFrom.
func pickOverride(cands []string, rows []*Override) *Override {
	for _, c := range cands {
		var best *Override
		for _, o := range rows {
			if o.Key != c {
				continue
			}
			if best == nil || o.ValidFrom.After(best.ValidFrom) || o.ValidFrom.Equal(best.ValidFrom) && o.ID > best.ID {
				best = o
			}
		}
		if best != nil {
			return best
		}
	}
	return nil
}

// newID returns a random (version 4) UUID in canonical text form.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
