package ratelimit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Exemption says how a limit treats a renewal.
type Exemption string

const (
	// Enforce spends and checks the limit, as for a new order. The empty
	// string means Enforce too.
	Enforce Exemption = "enforce"
	// SpendOnly spends the limit without checking it: the CA counts the
	// certificate but does not refuse it (Let's Encrypt's
	// CertificatesPerDomain for a renewal of an existing SAN set).
	SpendOnly Exemption = "spend_only"
	// Skip neither checks nor spends the limit.
	Skip Exemption = "skip"
)

// LimitConfig is one limit of one CA: the rate and how renewals are treated.
type LimitConfig struct {
	Limit
	// Renewal applies to an order for exactly the SAN set of an existing
	// certificate.
	Renewal Exemption
	// ARIRenewal applies to a renewal the CA's ARI exempts (the order names
	// the certificate it replaces and falls inside the suggested window).
	ARIRenewal Exemption
}

// CA is the limit set of one ACME directory.
type CA struct {
	// ID is a short stable name used in bucket keys ("letsencrypt").
	ID string
	// Directory is the ACME directory URL.
	Directory string
	Limits    map[Name]LimitConfig
}

// Catalogue maps ACME directories to their limits. It is immutable after
// construction and safe for concurrent use.
type Catalogue struct {
	byDirectory map[string]*CA
	cas         []*CA // in the order given, for messages
}

// LetsEncryptLimits returns the default limit set, modelled on Let's
// Encrypt's published limits (the registration limits too: 10 accounts per
// 3 hours per IP address, 500 per 3 hours per IPv6 /48), plus a fleet budget
// of 10 orders per second.
func LetsEncryptLimits() map[Name]LimitConfig {
	week := 7 * 24 * time.Hour
	return map[Name]LimitConfig{
		NewOrdersPerAccount:                     {Limit: Limit{300, 3 * time.Hour, 300}, Renewal: Enforce, ARIRenewal: Skip},
		CertificatesPerDomain:                   {Limit: Limit{50, week, 50}, Renewal: SpendOnly, ARIRenewal: SpendOnly},
		CertificatesPerFQDNSet:                  {Limit: Limit{5, week, 5}, Renewal: Enforce, ARIRenewal: Enforce},
		FailedAuthorizationsPerDomainPerAccount: {Limit: Limit{5, time.Hour, 5}, Renewal: Enforce, ARIRenewal: Enforce},
		FleetOrdersPerSecond:                    {Limit: Limit{10, time.Second, 10}, Renewal: Enforce, ARIRenewal: Enforce},
		NewRegistrationsPerIPAddress:            {Limit: Limit{10, 3 * time.Hour, 10}, Renewal: Enforce, ARIRenewal: Enforce},
		NewRegistrationsPerIPv6Range:            {Limit: Limit{500, 3 * time.Hour, 500}, Renewal: Enforce, ARIRenewal: Enforce},
	}
}

// Let's Encrypt's ACME directories, the CAs of DefaultCatalogue.
const (
	LetsEncryptDirectory        = "https://acme-v02.api.letsencrypt.org/directory"
	LetsEncryptStagingDirectory = "https://acme-staging-v02.api.letsencrypt.org/directory"
)

// DefaultCatalogue returns the catalogue used when no file is configured:
// Let's Encrypt production (id "letsencrypt") and staging (id
// "letsencrypt-staging"), both with LetsEncryptLimits.
func DefaultCatalogue() *Catalogue {
	c, err := NewCatalogue(
		CA{ID: "letsencrypt", Directory: LetsEncryptDirectory, Limits: LetsEncryptLimits()},
		CA{ID: "letsencrypt-staging", Directory: LetsEncryptStagingDirectory, Limits: LetsEncryptLimits()},
	)
	if err != nil {
		panic("ratelimit: default catalogue is invalid: " + err.Error())
	}
	return c
}

// NewCatalogue builds a catalogue from validated CA definitions.
func NewCatalogue(cas ...CA) (*Catalogue, error) {
	c := &Catalogue{byDirectory: make(map[string]*CA, len(cas))}
	ids := map[string]bool{}
	for i := range cas {
		ca := cas[i]
		field := fmt.Sprintf("cas[%d]", i)
		if err := validateCA(field, ca); err != nil {
			return nil, err
		}
		if ids[ca.ID] {
			return nil, &FieldError{Field: field + ".id", Err: fmt.Errorf("duplicate id %q", ca.ID)}
		}
		if c.byDirectory[ca.Directory] != nil {
			return nil, &FieldError{Field: field + ".directory", Err: fmt.Errorf("duplicate directory %q", ca.Directory)}
		}
		ids[ca.ID] = true
		ca.Limits = maps(ca.Limits)
		c.byDirectory[ca.Directory] = &ca
		c.cas = append(c.cas, &ca)
	}
	return c, nil
}

// With returns a new catalogue holding c's CAs plus extra, validated as
// NewCatalogue does (ids and directories stay unique).
func (c *Catalogue) With(extra ...CA) (*Catalogue, error) {
	all := make([]CA, 0, len(c.byDirectory)+len(extra))
	for _, ca := range c.byDirectory {
		all = append(all, *ca)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
	return NewCatalogue(append(all, extra...)...)
}

func maps(m map[Name]LimitConfig) map[Name]LimitConfig {
	out := make(map[Name]LimitConfig, len(m))
	for k, v := range m {
		if v.Renewal == "" {
			v.Renewal = Enforce
		}
		if v.ARIRenewal == "" {
			v.ARIRenewal = Enforce
		}
		out[k] = v
	}
	return out
}

// CA returns the limit set of an ACME directory.
func (c *Catalogue) CA(directory string) (*CA, bool) {
	ca, ok := c.byDirectory[directory]
	return ca, ok
}

// Default returns the catalogue's limit for a bucket's name and CA, if the CA
// has that limit.
func (c *Catalogue) Default(directory string, n Name) (Limit, bool) {
	ca, ok := c.byDirectory[directory]
	if !ok {
		return Limit{}, false
	}
	lc, ok := ca.Limits[n]
	return lc.Limit, ok
}

var caIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

func validateCA(field string, ca CA) error {
	if !caIDPattern.MatchString(ca.ID) {
		return &FieldError{Field: field + ".id", Err: errors.New("must be 1-32 of a-z, 0-9, '-'")}
	}
	if !strings.HasPrefix(ca.Directory, "https://") && !strings.HasPrefix(ca.Directory, "http://") || len(ca.Directory) > 512 {
		return &FieldError{Field: field + ".directory", Err: errors.New("must be an http(s) URL of at most 512 bytes")}
	}
	for _, n := range sortedNames(ca.Limits) {
		lc := ca.Limits[n]
		f := field + ".limits." + string(n)
		if !n.Valid() {
			return &FieldError{Field: f, Err: fmt.Errorf("unknown limit name (known: %v)", Names)}
		}
		if err := checkCount(lc.Count); err != nil {
			return &FieldError{Field: f + ".count", Err: err}
		}
		if err := checkPeriod(lc.Period); err != nil {
			return &FieldError{Field: f + ".period", Err: err}
		}
		if err := checkCount(lc.Burst); err != nil {
			return &FieldError{Field: f + ".burst", Err: err}
		}
		if err := lc.Limit.Validate(); err != nil {
			return &FieldError{Field: f, Err: err}
		}
		if err := checkExemption(lc.Renewal); err != nil {
			return &FieldError{Field: f + ".renewal", Err: err}
		}
		if err := checkExemption(lc.ARIRenewal); err != nil {
			return &FieldError{Field: f + ".ari_renewal", Err: err}
		}
	}
	return nil
}

func checkExemption(e Exemption) error {
	switch e {
	case "", Enforce, SpendOnly, Skip:
		return nil
	}
	return fmt.Errorf("%q is not one of enforce, spend_only, skip", truncate(string(e), 32))
}

const (
	maxCount  = 1_000_000_000
	maxPeriod = 366 * 24 * time.Hour
)

func checkCount(n int64) error {
	if n <= 0 || n > maxCount {
		return fmt.Errorf("%d must be between 1 and %d", n, maxCount)
	}
	return nil
}

func checkPeriod(p time.Duration) error {
	if p < time.Second || p > maxPeriod {
		return fmt.Errorf("%s must be between 1s and %s", p, maxPeriod)
	}
	return nil
}

func sortedNames(m map[Name]LimitConfig) []Name {
	ns := make([]Name, 0, len(m))
	for n := range m {
		ns = append(ns, n)
	}
	sort.Slice(ns, func(i, j int) bool { return ns[i] < ns[j] })
	return ns
}

// FieldError is a configuration or validation error naming the field at fault.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return "ratelimit: " + e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// fileConfig is the on-disk form of a catalogue.
type fileConfig struct {
	CAs []fileCA `json:"cas"`
}

type fileCA struct {
	ID        string                `json:"id"`
	Directory string                `json:"directory"`
	Limits    map[string]*fileLimit `json:"limits"` // null: the CA has no such limit
}

type fileLimit struct {
	Count      int64     `json:"count"`
	Period     string    `json:"period"`
	Burst      int64     `json:"burst"`
	Renewal    Exemption `json:"renewal"`
	ARIRenewal Exemption `json:"ari_renewal"`
}

// LoadCatalogue reads a JSON catalogue file; see DecodeCatalogue.
func LoadCatalogue(path string) (*Catalogue, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("ratelimit: opening catalogue: %w", err)
	}
	defer f.Close()
	c, err := DecodeCatalogue(f)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return c, nil
}

// DecodeCatalogue decodes a catalogue strictly: unknown fields, unknown limit
// names, trailing data and invalid numbers are errors naming the field.
//
// Every CA starts from LetsEncryptLimits. Its "limits" object, when present,
// changes them limit by limit: a limit it lists replaces the default of that
// name (count and period required; burst defaults to count, renewal and
// ari_renewal to "enforce"), a limit it sets to null is removed (the CA has
// no such limit: nothing is spent or checked for it), and a limit it leaves
// out keeps Let's Encrypt's default. So a file that lists only
// NewOrdersPerAccount still has the fleet budget (FleetOrdersPerSecond, 10
// per second).
//
//	{"cas": [{"id": "letsencrypt",
//	          "directory": "https://acme.example/directory",
//	          "limits": {"NewOrdersPerAccount": {"count": 300, "period": "3h"},
//	                     "CertificatesPerDomain": null}}]}
func DecodeCatalogue(r io.Reader) (*Catalogue, error) {
	raw, err := io.ReadAll(io.LimitReader(r, 1<<20+1))
	if err != nil {
		return nil, fmt.Errorf("ratelimit: reading catalogue: %w", err)
	}
	if len(raw) > 1<<20 {
		return nil, errors.New("ratelimit: catalogue larger than 1 MiB")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var fc fileConfig
	if err := dec.Decode(&fc); err != nil {
		return nil, fmt.Errorf("ratelimit: decoding catalogue: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("ratelimit: decoding catalogue: trailing data after the top-level object")
	}
	if len(fc.CAs) == 0 {
		return nil, &FieldError{Field: "cas", Err: errors.New("at least one CA is required")}
	}
	cas := make([]CA, 0, len(fc.CAs))
	for i, fca := range fc.CAs {
		ca := CA{ID: fca.ID, Directory: fca.Directory, Limits: LetsEncryptLimits()}
		for name, fl := range fca.Limits {
			f := fmt.Sprintf("cas[%d].limits.%s", i, name)
			if !Name(name).Valid() {
				return nil, &FieldError{Field: f, Err: fmt.Errorf("unknown limit name (known: %v)", Names)}
			}
			if fl == nil {
				delete(ca.Limits, Name(name))
				continue
			}
			period, err := time.ParseDuration(fl.Period)
			if err != nil {
				return nil, &FieldError{Field: f + ".period", Err: fmt.Errorf("want a duration such as \"3h\": %w", err)}
			}
			burst := fl.Burst
			if burst == 0 {
				burst = fl.Count
			}
			ca.Limits[Name(name)] = LimitConfig{Limit: Limit{fl.Count, period, burst}, Renewal: fl.Renewal, ARIRenewal: fl.ARIRenewal}
		}
		cas = append(cas, ca)
	}
	return NewCatalogue(cas...)
}

// ServingCatalogue returns the catalogue of a worker ordering from the CAs
// in serving (ID: the worker's name for the CA; Directory: its ACME
// directory; Limits are not read): the catalogue file at path ("" for
// DefaultCatalogue), plus LetsEncryptLimits, under the worker's name, for
// every CA of serving the catalogue does not list.
//
// A file that lists a directory no CA of serving uses is refused, naming the
// directory: its limits would apply to nothing, while the CA they were meant
// for (a typo, a trailing slash) quietly got Let's Encrypt's.
func ServingCatalogue(path string, serving ...CA) (*Catalogue, error) {
	if path == "" {
		return DefaultCatalogue().Serving(serving...)
	}
	c, err := LoadCatalogue(path)
	if err != nil {
		return nil, err
	}
	used := make(map[string]bool, len(serving))
	var dirs []string
	for _, ca := range serving {
		used[ca.Directory] = true
		dirs = append(dirs, ca.Directory)
	}
	for i, ca := range c.cas {
		if !used[ca.Directory] {
			return nil, &FieldError{Field: fmt.Sprintf("cas[%d].directory", i),
				Err: fmt.Errorf("%q (id %q) is not the directory of any CA this worker orders from %q (in %s); its limits would apply to nothing", ca.Directory, ca.ID, dirs, path)}
		}
	}
	return c.Serving(serving...)
}

// Serving returns c plus LetsEncryptLimits, under the CA's ID, for every CA
// of serving (ID and Directory; Limits are not read) whose directory c does
// not list. It returns c itself when it lists them all.
func (c *Catalogue) Serving(serving ...CA) (*Catalogue, error) {
	var extra []CA
	for _, ca := range serving {
		if _, ok := c.CA(ca.Directory); !ok {
			extra = append(extra, CA{ID: ca.ID, Directory: ca.Directory, Limits: LetsEncryptLimits()})
		}
	}
	if len(extra) == 0 {
		return c, nil
	}
	return c.With(extra...)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
