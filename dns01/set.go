package dns01

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Set is a loaded configuration: its providers built with their
// credentials, its routing rules and its resolver. Safe for concurrent use.
type Set struct {
	cfg       Config
	providers map[string]Provider
	resolver  *Resolver
}

// Load reads the configuration file at path and builds its providers
// (reading their credential files).
func Load(path string) (*Set, error) {
	c, err := LoadConfig(path)
	if err != nil {
		return nil, err
	}
	s, err := New(c, nil)
	if err != nil {
		return nil, fmt.Errorf("dns01: %s: %w", path, err)
	}
	return s, nil
}

// New builds the providers of c. A provider in override (tests, or one
// built elsewhere) replaces the one c describes under that name; c must
// still describe it. Resolvers default to /etc/resolv.conf's nameservers.
func New(c Config, override map[string]Provider) (*Set, error) {
	if c.NameserverPort == 0 { // a Config not from ParseConfig
		if err := c.check(); err != nil {
			return nil, err
		}
	}
	s := &Set{cfg: c, providers: map[string]Provider{}}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(c.Providers)) {
		if p, ok := override[name]; ok {
			s.providers[name] = p
			continue
		}
		p, err := c.newProvider(c.Providers[name])
		if err != nil {
			errs = append(errs, fmt.Errorf("provider %q: %w", name, err))
			continue
		}
		s.providers[name] = p
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	servers := c.Resolvers
	if len(servers) == 0 {
		rc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("no resolvers configured and /etc/resolv.conf unreadable: %w", err)
		}
		for _, sv := range rc.Servers {
			servers = append(servers, hostPort(sv, rc.Port))
		}
	}
	s.resolver = &Resolver{Servers: servers, NameserverPort: c.NameserverPort, Timeout: time.Duration(c.QueryTimeout)}
	return s, nil
}

func hostPort(host, port string) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]:" + port
	}
	return host + ":" + port
}

// Resolver is the set's resolver.
func (s *Set) Resolver() *Resolver { return s.resolver }

// PropagationTimeout is the bound of WaitPropagated (0 when the check is
// skipped).
func (s *Set) PropagationTimeout() time.Duration {
	if s.cfg.SkipPropagationCheck {
		return 0
	}
	return time.Duration(s.cfg.PropagationTimeout)
}

// TTL is the TTL of the records written.
func (s *Set) TTL() time.Duration { return time.Duration(s.cfg.TTL) }

// Provider returns the provider configured under name.
func (s *Set) Provider(name string) (Provider, bool) {
	p, ok := s.providers[name]
	return p, ok
}

// Target is where a DNS-01 record goes.
type Target struct {
	Name         string   // absolute name the TXT record is written at (after CNAMEs)
	Zone         string   // absolute zone holding Name (by SOA lookup)
	Chain        []string // the names from the challenge's name to Name (one when there was no CNAME)
	ProviderName string   // the configuration's name for the provider
	ProviderType string   // rfc2136, cloudflare, route53
	Provider     Provider
}

// Route says where the TXT record for fqdn (the challenge's
// `_acme-challenge.<domain>.`) is written for tenant: CNAMEs from fqdn are
// followed, the zone of the name they end at is found by SOA lookup, and
// the provider is the one of the longest zones entry holding that zone, else
// the tenant's, else the default.
func (s *Set) Route(ctx context.Context, tenant, fqdn string) (Target, error) {
	name := canonical(fqdn)
	final, chain, err := s.resolver.FollowCNAME(ctx, name)
	if err != nil {
		return Target{}, &Error{Kind: KindLookup, Record: name, Err: err, permanent: isLoop(err)}
	}
	zone, err := s.resolver.FindZone(ctx, final)
	if err != nil {
		return Target{}, &Error{Kind: KindLookup, Record: final, Err: err, permanent: strings.HasPrefix(err.Error(), "no zone holds")}
	}
	t := Target{Name: final, Zone: zone, Chain: chain}
	pname, why := s.pick(tenant, zone)
	if pname == "" {
		return Target{}, &Error{Kind: KindNoProvider, Record: final, Zone: zone, permanent: true, Err: errors.New(s.noProviderHint(tenant, name, len(chain) > 1, why))}
	}
	t.ProviderName, t.ProviderType, t.Provider = pname, s.cfg.Providers[pname].Type, s.providers[pname]
	return t, nil
}

// pick chooses the provider for a zone and tenant.
func (s *Set) pick(tenant, zone string) (name, why string) {
	best := -1
	for i, z := range s.cfg.Zones {
		if under(zone, z.Zone) && (best < 0 || len(z.Zone) > len(s.cfg.Zones[best].Zone)) {
			best = i
		}
	}
	if best >= 0 {
		return s.cfg.Zones[best].Provider, ""
	}
	if p, ok := s.cfg.Tenants[tenant]; ok {
		return p, ""
	}
	if s.cfg.DefaultProvider != "" {
		return s.cfg.DefaultProvider, ""
	}
	return "", fmt.Sprintf("no provider for zone %s: no zones entry holds it, tenant %q has none and there is no default_provider", zone, tenant)
}

func (s *Set) noProviderHint(tenant, name string, cnamed bool, why string) string {
	if cnamed {
		return why
	}
	for _, z := range s.cfg.Zones {
		if z.Delegation {
			domain := strings.TrimPrefix(name, "_acme-challenge.")
			return fmt.Sprintf("%s; to delegate it, create %s CNAME %s", why, name, DelegationTarget(domain, z.Zone))
		}
	}
	return why
}

func isLoop(err error) bool {
	return strings.Contains(err.Error(), "CNAME loop") || strings.Contains(err.Error(), "more than")
}

// DelegationTarget is the name in delegation zone zone that domain's
// `_acme-challenge` is to be a CNAME of (acme-dns style): one label derived
// from the domain (26 characters of base32 SHA-256), so an operator can tell
// a customer the CNAME to create and no two domains share a record.
func DelegationTarget(domain, zone string) string {
	sum := sha256.Sum256([]byte(strings.TrimSuffix(strings.ToLower(domain), ".")))
	label := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:16]))
	return label + "." + canonical(zone)
}

// WaitPropagated returns once the TXT record value at t.Name is served by
// every authoritative server of t.Zone (asked without recursion), checking
// every PropagationInterval; after PropagationTimeout it returns an *Error
// of KindPropagation naming the record and what each server still answers.
// With skip_propagation_check it returns at once.
func (s *Set) WaitPropagated(ctx context.Context, t Target, value string) error {
	if s.cfg.SkipPropagationCheck {
		return nil
	}
	timeout, interval := time.Duration(s.cfg.PropagationTimeout), time.Duration(s.cfg.PropagationInterval)
	start := time.Now()
	deadline := start.Add(timeout)
	var servers []Nameserver
	pending := map[string]string{} // addr -> what it answered last
	var lastErr error
	for {
		if servers == nil {
			ns, err := s.resolver.Nameservers(ctx, t.Zone)
			if err != nil {
				lastErr = err
			} else {
				servers = ns
				for _, n := range ns {
					pending[n.Addr] = "not asked yet"
				}
			}
		}
		for _, n := range servers {
			if _, ok := pending[n.Addr]; !ok {
				continue
			}
			ok, why, err := s.resolver.HasTXT(ctx, n.Addr, t.Name, value)
			switch {
			case err != nil:
				pending[n.Addr] = err.Error()
			case ok:
				delete(pending, n.Addr)
			default:
				pending[n.Addr] = why
			}
		}
		if servers != nil && len(pending) == 0 {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !time.Now().Add(interval).Before(deadline) {
			e := &Error{Kind: KindPropagation, Record: t.Name, Zone: t.Zone, Provider: t.ProviderName, Bound: timeout, Waited: time.Since(start).Round(time.Millisecond), permanent: true}
			if servers == nil {
				e.Err = lastErr
			}
			for _, n := range servers {
				if why, ok := pending[n.Addr]; ok {
					e.Servers = append(e.Servers, n.String()+": "+why)
				}
			}
			return e
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// Present writes the TXT record value at t.
func (s *Set) Present(ctx context.Context, t Target, value string) error {
	rec := TXT(t, value, s.TTL())
	if _, err := t.Provider.AppendRecords(ctx, t.Zone, rec); err != nil {
		return providerError(t, "write", err)
	}
	return nil
}

// Remove deletes the TXT record value at t (a missing one is not an error
// for libdns providers).
func (s *Set) Remove(ctx context.Context, t Target, value string) error {
	rec := TXT(t, value, s.TTL())
	if _, err := t.Provider.DeleteRecords(ctx, t.Zone, rec); err != nil {
		return providerError(t, "delete", err)
	}
	return nil
}

func providerError(t Target, op string, err error) error {
	return &Error{Kind: KindProvider, Record: t.Name, Zone: t.Zone, Provider: t.ProviderName, op: op, Err: err, permanent: authFailure(err)}
}
