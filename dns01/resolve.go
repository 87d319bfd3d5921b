package dns01

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Resolver does the lookups DNS-01 needs, with github.com/miekg/dns: SOA
// (which zone holds a name), CNAME (where `_acme-challenge` is delegated),
// NS and addresses (the zone's authoritative servers), and TXT on each
// authoritative server without recursion (has the record propagated).
type Resolver struct {
	// Servers are recursive resolvers, host:port, asked in turn until one
	// answers.
	Servers []string
	// NameserverPort is the port of the authoritative servers NS lookups
	// name. Default 53.
	NameserverPort int
	// Timeout bounds one query. Default 3 s.
	Timeout time.Duration
}

// maxCNAMEs bounds how many CNAMEs FollowCNAME follows.
const maxCNAMEs = 8

// exchange asks server one question; a truncated UDP answer is asked again
// over TCP.
func (r *Resolver) exchange(ctx context.Context, server, name string, qtype uint16, recurse bool) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = recurse
	m.SetEdns0(1232, false)
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 3 * time.Second
	}
	qctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := &dns.Client{Timeout: timeout}
	in, _, err := c.ExchangeContext(qctx, m, server)
	if err == nil && in.Truncated {
		c.Net = "tcp"
		in, _, err = c.ExchangeContext(qctx, m, server)
	}
	if err != nil {
		return nil, err
	}
	return in, nil
}

// query asks the resolvers in turn until one answers with NOERROR or
// NXDOMAIN.
func (r *Resolver) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	if len(r.Servers) == 0 {
		return nil, errors.New("no resolvers configured")
	}
	var errs []error
	for _, s := range r.Servers {
		in, err := r.exchange(ctx, s, name, qtype, true)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s, err))
			continue
		}
		if in.Rcode != dns.RcodeSuccess && in.Rcode != dns.RcodeNameError {
			errs = append(errs, fmt.Errorf("%s: %s %s answered %s", s, name, dns.TypeToString[qtype], dns.RcodeToString[in.Rcode]))
			continue
		}
		return in, nil
	}
	return nil, errors.Join(errs...)
}

// FollowCNAME follows CNAMEs from name (absolute) and returns the name at
// the end of the chain and the names it passed through (name first; only
// name when it is not a CNAME). A loop or more than 8 CNAMEs is an error.
func (r *Resolver) FollowCNAME(ctx context.Context, name string) (string, []string, error) {
	name = canonical(name)
	chain := []string{name}
	for range maxCNAMEs + 1 {
		in, err := r.query(ctx, name, dns.TypeCNAME)
		if err != nil {
			return "", chain, fmt.Errorf("looking up the CNAME of %s: %w", name, err)
		}
		target := ""
		for _, rr := range in.Answer {
			if c, ok := rr.(*dns.CNAME); ok && strings.EqualFold(c.Hdr.Name, name) {
				target = canonical(c.Target)
			}
		}
		if target == "" {
			return name, chain, nil
		}
		if slices.Contains(chain, target) {
			return "", chain, fmt.Errorf("CNAME loop: %s -> %s", strings.Join(chain, " -> "), target)
		}
		chain = append(chain, target)
		name = target
	}
	return "", chain, fmt.Errorf("more than %d CNAMEs: %s", maxCNAMEs, strings.Join(chain, " -> "))
}

// FindZone returns the zone that holds name: walking up from name, the
// first name whose SOA query is answered with its own SOA record. A name
// that is itself a CNAME is not a zone apex.
func (r *Resolver) FindZone(ctx context.Context, name string) (string, error) {
	name = canonical(name)
	for cand := name; cand != "."; cand = parent(cand) {
		in, err := r.query(ctx, cand, dns.TypeSOA)
		if err != nil {
			return "", fmt.Errorf("looking up the SOA of %s: %w", cand, err)
		}
		for _, rr := range in.Answer {
			if soa, ok := rr.(*dns.SOA); ok && strings.EqualFold(soa.Hdr.Name, cand) {
				return cand, nil
			}
		}
	}
	return "", fmt.Errorf("no zone holds %s: no SOA record at it or any parent", name)
}

// Nameserver is one authoritative server of a zone.
type Nameserver struct {
	Host string // its NS name
	Addr string // ip:port asked
}

func (n Nameserver) String() string { return n.Addr + " (" + n.Host + ")" }

// Nameservers returns the authoritative servers of zone: its NS records,
// each address of each at NameserverPort.
func (r *Resolver) Nameservers(ctx context.Context, zone string) ([]Nameserver, error) {
	zone = canonical(zone)
	in, err := r.query(ctx, zone, dns.TypeNS)
	if err != nil {
		return nil, fmt.Errorf("looking up the NS records of %s: %w", zone, err)
	}
	port := r.NameserverPort
	if port == 0 {
		port = 53
	}
	var out []Nameserver
	var errs []error
	for _, rr := range in.Answer {
		ns, ok := rr.(*dns.NS)
		if !ok || !strings.EqualFold(ns.Hdr.Name, zone) {
			continue
		}
		host := canonical(ns.Ns)
		var addrs []string
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
			a, err := r.query(ctx, host, qt)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, rr := range a.Answer {
				switch v := rr.(type) {
				case *dns.A:
					addrs = append(addrs, v.A.String())
				case *dns.AAAA:
					addrs = append(addrs, v.AAAA.String())
				}
			}
		}
		for _, a := range addrs {
			out = append(out, Nameserver{Host: host, Addr: net.JoinHostPort(a, strconv.Itoa(port))})
		}
	}
	if len(out) == 0 {
		errs = append([]error{fmt.Errorf("zone %s: no authoritative server address found (NS records and their A/AAAA)", zone)}, errs...)
		return nil, errors.Join(errs...)
	}
	slices.SortFunc(out, func(a, b Nameserver) int { return strings.Compare(a.Addr, b.Addr) })
	return slices.CompactFunc(out, func(a, b Nameserver) bool { return a.Addr == b.Addr }), nil
}

// HasTXT asks server (authoritatively, without recursion) for the TXT
// records of name and reports whether value is among them; when it is not,
// the reason says what the server answered.
func (r *Resolver) HasTXT(ctx context.Context, server, name, value string) (bool, string, error) {
	in, err := r.exchange(ctx, server, canonical(name), dns.TypeTXT, false)
	if err != nil {
		return false, "", err
	}
	if in.Rcode != dns.RcodeSuccess {
		return false, dns.RcodeToString[in.Rcode], nil
	}
	n := 0
	for _, rr := range in.Answer {
		if t, ok := rr.(*dns.TXT); ok {
			n++
			if strings.Join(t.Txt, "") == value {
				return true, "", nil
			}
		}
	}
	if !in.Authoritative {
		return false, "a non-authoritative answer (the server does not serve the zone)", nil
	}
	if n == 0 {
		return false, "no TXT record", nil
	}
	return false, fmt.Sprintf("%d TXT records, none with the value", n), nil
}

// parent is the name one label up ("a.b." -> "b.", "b." -> ".").
func parent(name string) string {
	if i := strings.IndexByte(name, '.'); i >= 0 && i < len(name)-1 {
		return name[i+1:]
	}
	return "."
}
