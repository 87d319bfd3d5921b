package acmeissuer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libdns/libdns"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/names"
)

// DNSProvider is what DNS-01 needs of a DNS provider: the two libdns
// interfaces, so any libdns provider package (Cloudflare, Route 53, ...) plugs
// in as is. Contract (libdns): AppendRecords adds records without touching
// existing ones; DeleteRecords removes exactly the given records, ignoring
// missing ones; zone is absolute with a trailing dot and record names are
// relative to it; both honour ctx and are safe for concurrent use.
type DNSProvider interface {
	libdns.RecordAppender
	libdns.RecordDeleter
}

// DNS01Solver is the acmez.Solver for dns-01 over one DNSProvider for every
// name (pebble-challtestsrv in tests). It follows no CNAME, keeps no record
// of what it wrote and does not wait for propagation; RoutedDNS01Solver
// does all three, with providers chosen by configuration.
type DNS01Solver struct {
	Provider DNSProvider
	// Zone returns the zone (absolute, trailing dot) that holds fqdn. nil
	// means the registered domain (public suffix list + 1 label), which is
	// right when each customer domain is its own zone.
	Zone func(ctx context.Context, fqdn string) (string, error)
	// TTL of the TXT record; default 60 s.
	TTL time.Duration
}

var _ acmez.Solver = DNS01Solver{}

// Present publishes the challenge's TXT record.
func (s DNS01Solver) Present(ctx context.Context, ch acme.Challenge) error {
	zone, rec, err := s.record(ctx, ch)
	if err != nil {
		return err
	}
	if _, err := s.Provider.AppendRecords(ctx, zone, []libdns.Record{rec}); err != nil {
		return fmt.Errorf("acmeissuer: publishing the dns-01 record for %s: %w", ch.Identifier.Value, err)
	}
	return nil
}

// CleanUp removes it.
func (s DNS01Solver) CleanUp(ctx context.Context, ch acme.Challenge) error {
	zone, rec, err := s.record(ctx, ch)
	if err != nil {
		return err
	}
	if _, err := s.Provider.DeleteRecords(ctx, zone, []libdns.Record{rec}); err != nil {
		return fmt.Errorf("acmeissuer: removing the dns-01 record for %s: %w", ch.Identifier.Value, err)
	}
	return nil
}

func (s DNS01Solver) record(ctx context.Context, ch acme.Challenge) (string, libdns.TXT, error) {
	fqdn := ch.DNS01TXTRecordName() + "."
	var zone string
	var err error
	if s.Zone != nil {
		zone, err = s.Zone(ctx, fqdn)
	} else {
		zone, err = RegisteredDomainZone(fqdn)
	}
	if err != nil {
		return "", libdns.TXT{}, fmt.Errorf("acmeissuer: finding the zone of %s: %w", fqdn, err)
	}
	ttl := s.TTL
	if ttl == 0 {
		ttl = time.Minute
	}
	return zone, libdns.TXT{Name: libdns.RelativeName(fqdn, zone), TTL: ttl, Text: ch.DNS01KeyAuthorization()}, nil
}

// RegisteredDomainZone returns the registered domain of fqdn (package
// names' RegisteredDomain) as an absolute zone name.
func RegisteredDomainZone(fqdn string) (string, error) {
	zone, err := names.RegisteredDomain(fqdn)
	if err != nil {
		return "", err
	}
	return zone + ".", nil
}

// ChallTestSrvDNS is a DNSProvider over pebble-challtestsrv's management API
// (POST /set-txt and /clear-txt), the DNS server Pebble validates against in
// tests. challtestsrv can only clear every value of a name at once, so the
// provider remembers the values it added per name and re-adds the survivors
// after a clear (a wildcard and its base name share one TXT name). Other
// processes' values on the same name are not known to it. Safe for concurrent use.
type ChallTestSrvDNS struct {
	URL    string       // management API base, e.g. http://127.0.0.1:8055
	Client *http.Client // nil: a client with a 10 s timeout

	mu     sync.Mutex
	values map[string][]string // absolute name -> values we added
}

var _ DNSProvider = (*ChallTestSrvDNS)(nil)

// AppendRecords implements libdns.RecordAppender for TXT records.
func (c *ChallTestSrvDNS) AppendRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	var done []libdns.Record
	for _, r := range recs {
		rr := r.RR()
		if rr.Type != "TXT" {
			return done, fmt.Errorf("challtestsrv: only TXT records are supported, not %s", rr.Type)
		}
		host := libdns.AbsoluteName(rr.Name, zone)
		c.mu.Lock()
		if err := c.post(ctx, "/set-txt", map[string]string{"host": host, "value": rr.Data}); err != nil {
			c.mu.Unlock()
			return done, err
		}
		if c.values == nil {
			c.values = map[string][]string{}
		}
		c.values[host] = append(c.values[host], rr.Data)
		c.mu.Unlock()
		done = append(done, libdns.TXT{Name: rr.Name, TTL: rr.TTL, Text: rr.Data})
	}
	return done, nil
}

// DeleteRecords implements libdns.RecordDeleter for TXT records.
func (c *ChallTestSrvDNS) DeleteRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	var done []libdns.Record
	for _, r := range recs {
		rr := r.RR()
		if rr.Type != "" && rr.Type != "TXT" {
			continue
		}
		host := libdns.AbsoluteName(rr.Name, zone)
		c.mu.Lock()
		err := c.deleteLocked(ctx, host, rr.Data)
		c.mu.Unlock()
		if err != nil {
			return done, err
		}
		done = append(done, libdns.TXT{Name: rr.Name, TTL: rr.TTL, Text: rr.Data})
	}
	return done, nil
}

func (c *ChallTestSrvDNS) deleteLocked(ctx context.Context, host, value string) error {
	if err := c.post(ctx, "/clear-txt", map[string]string{"host": host}); err != nil {
		return err
	}
	var keep []string
	if value != "" { // an empty value deletes every value (libdns convention)
		keep = slices.DeleteFunc(c.values[host], func(v string) bool { return v == value })
	}
	for _, v := range keep {
		if err := c.post(ctx, "/set-txt", map[string]string{"host": host, "value": v}); err != nil {
			return err
		}
	}
	if len(keep) == 0 {
		delete(c.values, host)
	} else {
		c.values[host] = keep
	}
	return nil
}

func (c *ChallTestSrvDNS) post(ctx context.Context, path string, body map[string]string) error {
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(c.URL, "/")+path, bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("challtestsrv %s: %w", path, err)
	}
	hc := c.Client
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("challtestsrv %s: %w", path, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("challtestsrv %s: %s: %s", path, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}
