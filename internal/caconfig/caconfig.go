// Package caconfig is the one description of a certificate authority a
// certfleet process talks to: the name requests use for it and its ACME
// directory URL, parsed once from the binaries' -ca flag (CERTFLEET_CAS).
// The issuer-worker builds its issuers (pipeline.CA) and its rate-limit
// catalogue (ratelimit.CA, the limits view) from it, the scheduler its ARI
// directories. It owns nothing else: limits are ratelimit's, ordering is
// acmeissuer's.
package caconfig

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

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
}

// Check reports whether c has a name and an https directory URL with a host.
func (c CA) Check() error {
	u, err := url.Parse(c.Directory)
	if c.Name == "" || err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%s=%s: want a name and an https directory URL", c.Name, c.Directory)
	}
	return nil
}

// Limits is c as ratelimit sees it: its id in bucket keys and its
// directory, limits left to the catalogue (ratelimit.ServingCatalogue).
func (c CA) Limits() ratelimit.CA { return ratelimit.CA{ID: c.Name, Directory: c.Directory} }

// Parse reads a comma-separated list of name=directoryURL, the syntax of
// the -ca flag (blank items are skipped, spaces trimmed); an item without
// "=" is an error naming it. What the items say is CheckAll's to judge, so a
// binary reports it with the rest of its configuration.
func Parse(list string) ([]CA, error) {
	var cas []CA
	for _, item := range strings.Split(list, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		name, dir, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want name=directoryURL", item)
		}
		cas = append(cas, CA{Name: strings.TrimSpace(name), Directory: strings.TrimSpace(dir)})
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
