// Package dns01 is what DNS-01 needs of DNS outside ACME: the DNS providers
// (libdns) a fleet writes its TXT records with, chosen per zone or per tenant
// by a configuration file; the zone of a record found by SOA lookup;
// `_acme-challenge` CNAMEs followed to the zone they delegate to (acme-dns
// style delegation); and the check that a record is visible on every
// authoritative server of its zone before the CA is asked to look.
//
// It owns no table and talks to no CA: package acmeissuer's DNS01Solver uses
// a Set to place, check and remove records, and records what it wrote.
// Credentials come from files read with internal/secretfile, never from the
// configuration itself. Errors that end a DNS-01 attempt are *Error, whose
// Kind and Permanent say what went wrong and whether a retry can help.
package dns01

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Config is the DNS-01 configuration file (JSON). Example:
//
//	{
//	  "resolvers": ["127.0.0.1:53"],
//	  "propagation_timeout": "60s",
//	  "providers": {
//	    "lab":  {"type": "rfc2136", "server": "ns1.example.net:53", "tsig_key_file": "lab.key"},
//	    "cf":   {"type": "cloudflare", "api_token_file": "cf.token"},
//	    "aws":  {"type": "route53", "region": "eu-west-1", "access_key_id": "AKIA...", "secret_access_key_file": "aws.secret"}
//	  },
//	  "zones": [
//	    {"zone": "example.net", "provider": "lab"},
//	    {"zone": "acme.example.net", "provider": "lab", "delegation": true}
//	  ],
//	  "tenants": {"gamma": "cf"},
//	  "default_provider": "aws"
//	}
//
// A record's provider is the one of the longest "zones" entry its zone is
// equal to or under; else the tenant's; else default_provider. File paths
// are relative to the configuration file's directory.
type Config struct {
	// Resolvers answer the SOA, CNAME, NS and address lookups (host:port,
	// recursion desired). Empty: the nameservers of /etc/resolv.conf.
	Resolvers []string `json:"resolvers"`
	// NameserverPort is the port of the authoritative servers found by NS
	// lookup, where a record's propagation is checked. Default 53.
	NameserverPort int `json:"nameserver_port"`
	// PropagationTimeout bounds the wait for a record to be visible on every
	// authoritative server of its zone (default 60s; it must fit in the
	// worker's -order-timeout); PropagationInterval is
	// the time between checks (default 2s). skip_propagation_check skips the
	// check (for a provider whose writes are visible at once).
	PropagationTimeout   Duration `json:"propagation_timeout"`
	PropagationInterval  Duration `json:"propagation_interval"`
	SkipPropagationCheck bool     `json:"skip_propagation_check"`
	// TTL of the TXT records written. Default 60s.
	TTL Duration `json:"ttl"`
	// QueryTimeout bounds one DNS query. Default 3s.
	QueryTimeout Duration `json:"query_timeout"`

	Providers       map[string]ProviderConfig `json:"providers"`
	Zones           []ZoneConfig              `json:"zones"`
	Tenants         map[string]string         `json:"tenants"`
	DefaultProvider string                    `json:"default_provider"`

	// dir is the configuration file's directory (relative paths).
	dir string
}

// ProviderConfig describes one DNS provider. Type is "rfc2136",
// "cloudflare" or "route53"; the other fields belong to one type each, and a
// field that does not belong to the type is refused.
type ProviderConfig struct {
	Type string `json:"type"`

	// rfc2136: the primary server taking signed updates (host:port) and a
	// TSIG key file in BIND's format (tsig-keygen's output:
	// key "name" { algorithm hmac-sha256; secret "..."; };).
	Server      string `json:"server,omitempty"`
	TSIGKeyFile string `json:"tsig_key_file,omitempty"`

	// cloudflare: a file holding an API token with Zone.DNS:Edit, and
	// optionally one holding a Zone:Read token (when the first is scoped to
	// one zone).
	APITokenFile  string `json:"api_token_file,omitempty"`
	ZoneTokenFile string `json:"zone_token_file,omitempty"`

	// route53: region, optional profile and hosted zone id; an access key
	// id with a file holding its secret (and optionally a session token
	// file), or neither to use the AWS default chain (environment, shared
	// configuration, instance or pod role).
	Region              string `json:"region,omitempty"`
	Profile             string `json:"profile,omitempty"`
	HostedZoneID        string `json:"hosted_zone_id,omitempty"`
	AccessKeyID         string `json:"access_key_id,omitempty"`
	SecretAccessKeyFile string `json:"secret_access_key_file,omitempty"`
	SessionTokenFile    string `json:"session_token_file,omitempty"`
}

// ZoneConfig routes the records of a zone (and every zone under it) to a
// provider. Delegation marks an acme-dns style delegation target: a zone the
// fleet controls that other domains' `_acme-challenge` names are CNAMEs into
// (see DelegationTarget); a name that has neither a provider nor a CNAME is
// refused with the CNAME to create.
type ZoneConfig struct {
	Zone       string `json:"zone"`
	Provider   string `json:"provider"`
	Delegation bool   `json:"delegation,omitempty"`
}

// Duration is a time.Duration written as a Go duration string ("90s").
type Duration time.Duration

// UnmarshalJSON reads "90s", "2m".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"90s\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Provider types.
const (
	TypeRFC2136    = "rfc2136"
	TypeCloudflare = "cloudflare"
	TypeRoute53    = "route53"
)

// LoadConfig reads and checks a configuration file (it reads no credentials:
// New does).
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("dns01: reading the configuration: %w", err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("dns01: %s: %w", path, err)
	}
	abs, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return Config{}, err
	}
	c.dir = abs
	return c, nil
}

// ParseConfig decodes a configuration strictly (unknown fields are errors),
// fills the defaults and checks it.
func ParseConfig(data []byte) (Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("decoding: %w", err)
	}
	if dec.More() {
		return Config{}, errors.New("decoding: more than one JSON value")
	}
	return c, c.check()
}

func (c *Config) check() error {
	if c.NameserverPort == 0 {
		c.NameserverPort = 53
	}
	if c.PropagationTimeout == 0 && !c.SkipPropagationCheck {
		c.PropagationTimeout = Duration(time.Minute)
	}
	if c.PropagationInterval == 0 {
		c.PropagationInterval = Duration(2 * time.Second)
	}
	if c.TTL == 0 {
		c.TTL = Duration(time.Minute)
	}
	if c.QueryTimeout == 0 {
		c.QueryTimeout = Duration(3 * time.Second)
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.NameserverPort < 1 || c.NameserverPort > 65535 {
		bad("nameserver_port %d: want 1 to 65535", c.NameserverPort)
	}
	if c.PropagationTimeout < 0 || c.PropagationInterval < 0 || c.TTL < 0 || c.QueryTimeout < 0 {
		bad("durations must not be negative")
	}
	if c.TTL > 0 && time.Duration(c.TTL) < time.Second {
		bad("ttl %s: want at least 1s", time.Duration(c.TTL))
	}
	for _, r := range c.Resolvers {
		if !hasPort(r) {
			bad("resolver %q: want host:port", r)
		}
	}
	if len(c.Providers) == 0 {
		bad("no providers")
	}
	for _, name := range slices.Sorted(maps.Keys(c.Providers)) {
		if err := c.Providers[name].check(); err != nil {
			bad("provider %q: %w", name, err)
		}
	}
	known := func(where, p string) {
		if _, ok := c.Providers[p]; !ok {
			bad("%s names provider %q, which is not in providers", where, p)
		}
	}
	seen := map[string]bool{}
	for i, z := range c.Zones {
		name := canonical(z.Zone)
		if name == "." || strings.Contains(strings.TrimSuffix(name, "."), "..") {
			bad("zones[%d]: zone %q is not a domain name", i, z.Zone)
			continue
		}
		if seen[name] {
			bad("zones[%d]: zone %s listed twice", i, name)
		}
		seen[name] = true
		c.Zones[i].Zone = name
		known(fmt.Sprintf("zones[%d] (%s)", i, name), z.Provider)
	}
	for _, t := range slices.Sorted(maps.Keys(c.Tenants)) {
		known(fmt.Sprintf("tenants[%q]", t), c.Tenants[t])
	}
	if c.DefaultProvider != "" {
		known("default_provider", c.DefaultProvider)
	}
	return errors.Join(errs...)
}

func (p ProviderConfig) check() error {
	type field struct {
		name string
		set  bool
	}
	var required, allowed []field
	all := []field{
		{"server", p.Server != ""}, {"tsig_key_file", p.TSIGKeyFile != ""},
		{"api_token_file", p.APITokenFile != ""}, {"zone_token_file", p.ZoneTokenFile != ""},
		{"region", p.Region != ""}, {"profile", p.Profile != ""}, {"hosted_zone_id", p.HostedZoneID != ""},
		{"access_key_id", p.AccessKeyID != ""}, {"secret_access_key_file", p.SecretAccessKeyFile != ""},
		{"session_token_file", p.SessionTokenFile != ""},
	}
	pick := func(names ...string) []field {
		var out []field
		for _, f := range all {
			if slices.Contains(names, f.name) {
				out = append(out, f)
			}
		}
		return out
	}
	switch p.Type {
	case TypeRFC2136:
		required, allowed = pick("server", "tsig_key_file"), pick("server", "tsig_key_file")
		if p.Server != "" && !hasPort(p.Server) {
			return fmt.Errorf("server %q: want host:port", p.Server)
		}
	case TypeCloudflare:
		required, allowed = pick("api_token_file"), pick("api_token_file", "zone_token_file")
	case TypeRoute53:
		allowed = pick("region", "profile", "hosted_zone_id", "access_key_id", "secret_access_key_file", "session_token_file")
		if (p.AccessKeyID == "") != (p.SecretAccessKeyFile == "") {
			return errors.New("access_key_id and secret_access_key_file go together (or neither, for the AWS default credentials)")
		}
		if p.SessionTokenFile != "" && p.AccessKeyID == "" {
			return errors.New("session_token_file needs access_key_id and secret_access_key_file")
		}
	case "":
		return fmt.Errorf("no type (want %s, %s or %s)", TypeRFC2136, TypeCloudflare, TypeRoute53)
	default:
		return fmt.Errorf("unknown type %q (want %s, %s or %s)", p.Type, TypeRFC2136, TypeCloudflare, TypeRoute53)
	}
	for _, f := range required {
		if !f.set {
			return fmt.Errorf("type %s needs %s", p.Type, f.name)
		}
	}
	for _, f := range all {
		if f.set && !slices.Contains(allowed, f) {
			return fmt.Errorf("%s does not apply to type %s", f.name, p.Type)
		}
	}
	return nil
}

func hasPort(hostport string) bool {
	i := strings.LastIndexByte(hostport, ':')
	return i > 0 && i < len(hostport)-1
}

// canonical is name in lower case with a trailing dot.
func canonical(name string) string {
	name = strings.ToLower(strings.TrimSpace(name))
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	return name
}

// under reports whether name is zone or a name below it (both canonical).
func under(name, zone string) bool {
	return name == zone || strings.HasSuffix(name, "."+zone)
}

// path resolves p against the configuration file's directory.
func (c Config) path(p string) string {
	if p == "" || filepath.IsAbs(p) || c.dir == "" {
		return p
	}
	return filepath.Join(c.dir, p)
}
