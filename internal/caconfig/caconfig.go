// Package caconfig is the one description of a certificate authority a
// certfleet process talks to: the name requests use for it, its ACME
// directory URL and the External Account Binding its accounts are created
// with, parsed once from the binaries' -ca flag (CERTFLEET_CAS); and of the
// CA groups (-ca-group, CERTFLEET_CA_GROUPS) a request may name to be
// issued by the first available CA of an ordered list. The issuer-worker
// builds its issuers (pipeline.CA) and its rate-limit catalogue
// (ratelimit.CA, the limits view) from it, the scheduler its ARI
// directories. It owns nothing else: limits are ratelimit's, ordering is
// acmeissuer's, failover is the pipeline's.
package caconfig

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/certfleet/certfleet/internal/secretfile"
	"github.com/certfleet/certfleet/ratelimit"
)

// CA is one certificate authority.
type CA struct {
	// Name is what requests use in their "ca" field ("letsencrypt",
	// "pebble"), and the CA's id in rate-limit bucket keys when the limits
	// catalogue does not list its directory.
	Name string
	// Directory is the ACME directory URL (https); requests may also name
	// the CA by it.
	Directory string
	// EABKeyID and EABKeyFile are the CA's External Account Binding (RFC
	// 8555 §7.3.4): the key identifier the CA gave out and a secret file
	// holding its MAC key, base64url. Both or neither; with them every
	// account at this CA is created bound (see EAB).
	EABKeyID, EABKeyFile string
}

// The -ca options that follow a CA's name=URL item and apply to it.
const (
	optEABKeyID   = "eab-kid"
	optEABKeyFile = "eab-key-file"
)

// Check reports whether c has a name and an https directory URL with a host,
// and an External Account Binding that is whole (key id and key file) or
// absent. It does not read the key file: EAB does.
func (c CA) Check() error {
	u, err := url.Parse(c.Directory)
	if c.Name == "" || err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%s=%s: want a name and an https directory URL", c.Name, c.Directory)
	}
	if (c.EABKeyID == "") != (c.EABKeyFile == "") {
		return fmt.Errorf("%s: %s and %s go together (External Account Binding)", c.Name, optEABKeyID, optEABKeyFile)
	}
	return nil
}

// EAB returns the CA's External Account Binding: its key id and its MAC key,
// read from EABKeyFile (a secret file: only its owner may read it) and
// checked to be base64url (padding accepted and dropped), as acmez and RFC
// 8555 want it. ok is false when the CA has none. The error names the CA and
// the file, never the key.
func (c CA) EAB() (keyID, macKey string, ok bool, err error) {
	if c.EABKeyID == "" && c.EABKeyFile == "" {
		return "", "", false, nil
	}
	if err := c.Check(); err != nil {
		return "", "", false, err
	}
	b, err := secretfile.ReadTrimmed(c.EABKeyFile)
	if err != nil {
		return "", "", false, fmt.Errorf("CA %s: %s: %w", c.Name, optEABKeyFile, err)
	}
	key := strings.TrimRight(strings.TrimSpace(string(b)), "=")
	raw, err := base64.RawURLEncoding.DecodeString(key)
	if err != nil || len(raw) == 0 {
		return "", "", false, fmt.Errorf("CA %s: %s %s does not hold a base64url MAC key (as the CA hands it out)", c.Name, optEABKeyFile, c.EABKeyFile)
	}
	return c.EABKeyID, key, true, nil
}

// Limits is c as ratelimit sees it: its id in bucket keys and its
// directory, limits left to the catalogue (ratelimit.ServingCatalogue).
func (c CA) Limits() ratelimit.CA { return ratelimit.CA{ID: c.Name, Directory: c.Directory} }

// Parse reads a comma-separated list of name=directoryURL, the syntax of
// the -ca flag (blank items are skipped, spaces trimmed); an item without
// "=" is an error naming it. The options eab-kid=KEYID and
// eab-key-file=FILE, as items after a CA's name=directoryURL, set that CA's
// External Account Binding:
//
//	zerossl=https://acme.zerossl.com/v2/DV90,eab-kid=f1e2...,eab-key-file=/etc/certfleet/zerossl.eab,le=https://...
//
// An option before any CA, or given twice for one CA, is an error. What the
// items say is CheckAll's to judge, so a binary reports it with the rest of
// its configuration.
func Parse(list string) ([]CA, error) {
	var cas []CA
	for _, item := range strings.Split(list, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		name, val, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want name=directoryURL", item)
		}
		name, val = strings.TrimSpace(name), strings.TrimSpace(val)
		switch name {
		case optEABKeyID, optEABKeyFile:
			if len(cas) == 0 {
				return nil, fmt.Errorf("%s: an option of the CA before it; write it after name=directoryURL", name)
			}
			c := &cas[len(cas)-1]
			dst := &c.EABKeyID
			if name == optEABKeyFile {
				dst = &c.EABKeyFile
			}
			if *dst != "" {
				return nil, fmt.Errorf("%s given twice for CA %q", name, c.Name)
			}
			if val == "" {
				return nil, fmt.Errorf("%s of CA %q is empty", name, c.Name)
			}
			*dst = val
		default:
			cas = append(cas, CA{Name: name, Directory: val})
		}
	}
	return cas, nil
}

// Repeats reports whether c has the name or the directory of a CA of
// earlier: a CA is configured once, under one name.
func (c CA) Repeats(earlier []CA) error {
	for _, e := range earlier {
		switch {
		case e.Name == c.Name:
			return fmt.Errorf("%q configured twice", c.Name)
		case e.Directory == c.Directory:
			return fmt.Errorf("directory %q configured twice (as %q and %q)", c.Directory, e.Name, c.Name)
		}
	}
	return nil
}

// CheckAll checks every CA (Check) and that none repeats an earlier one
// (Repeats); the errors, joined, name the CA.
func CheckAll(cas []CA) error {
	var errs []error
	for i, c := range cas {
		errs = append(errs, c.Check(), c.Repeats(cas[:i]))
	}
	return errors.Join(errs...)
}

// Group is an ordered list of CAs that requests name by the group's name in
// their "ca" field: the worker orders from the first CA of the list that is
// available (its circuit breaker closed, its limits not deferring the
// request beyond the worker's bound) and falls back to the next.
type Group struct {
	Name string
	CAs  []string // CA names (of -ca), most preferred first
}

// groupName is what a request's "ca" field may hold (its schema's pattern
// for a configured name), so a group is reachable by requests.
var groupName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// ParseGroups reads the -ca-group flag: comma-separated NAME=CA1+CA2[+...],
// each CA a -ca name, most preferred first:
//
//	any=letsencrypt+zerossl,eu=zerossl+letsencrypt
//
// What the groups say is CheckGroups's to judge.
func ParseGroups(list string) ([]Group, error) {
	var gs []Group
	for _, item := range strings.Split(list, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		name, members, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want name=CA1+CA2", item)
		}
		g := Group{Name: strings.TrimSpace(name)}
		for _, m := range strings.Split(members, "+") {
			g.CAs = append(g.CAs, strings.TrimSpace(m))
		}
		gs = append(gs, g)
	}
	return gs, nil
}

// CheckGroups checks every group against the CAs: a name a request may carry
// and that no CA or earlier group has, at least one member, every member a
// CA of cas named once. The errors, joined, name the group.
func CheckGroups(groups []Group, cas []CA) error {
	known := map[string]bool{}
	for _, c := range cas {
		known[c.Name] = true
	}
	var errs []error
	seen := map[string]bool{}
	for _, g := range groups {
		switch {
		case !groupName.MatchString(g.Name):
			errs = append(errs, fmt.Errorf("group %q: want a name of lower-case letters, digits, '.', '_' or '-' (what a request's ca field may hold)", g.Name))
		case known[g.Name]:
			errs = append(errs, fmt.Errorf("group %q: a CA has that name", g.Name))
		case seen[g.Name]:
			errs = append(errs, fmt.Errorf("group %q configured twice", g.Name))
		}
		seen[g.Name] = true
		members := map[string]bool{}
		for _, m := range g.CAs {
			switch {
			case m == "":
				errs = append(errs, fmt.Errorf("group %q: an empty CA name (want name=CA1+CA2)", g.Name))
			case !known[m]:
				errs = append(errs, fmt.Errorf("group %q: CA %q is not configured (-ca)", g.Name, m))
			case members[m]:
				errs = append(errs, fmt.Errorf("group %q: CA %q listed twice", g.Name, m))
			}
			members[m] = true
		}
	}
	return errors.Join(errs...)
}

// Directories maps each CA's name to its directory.
func Directories(cas []CA) map[string]string {
	m := make(map[string]string, len(cas))
	for _, c := range cas {
		m[c.Name] = c.Directory
	}
	return m
}

// LimitsView is every CA's Limits, in order.
func LimitsView(cas []CA) []ratelimit.CA {
	out := make([]ratelimit.CA, 0, len(cas))
	for _, c := range cas {
		out = append(out, c.Limits())
	}
	return out
}
