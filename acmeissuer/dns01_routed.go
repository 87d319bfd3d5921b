package acmeissuer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/dns01"
)

// tenantKey carries Request.Tenant to the solvers: acmez's Solver
// interface passes only the challenge.
type tenantKey struct{}

// WithTenant returns ctx carrying the tenant an order is for; Obtain sets
// it, and RoutedDNS01Solver picks the tenant's DNS provider by it.
func WithTenant(ctx context.Context, tenant string) context.Context {
	return context.WithValue(ctx, tenantKey{}, tenant)
}

// TenantFrom returns the tenant WithTenant put in ctx ("" when none).
func TenantFrom(ctx context.Context) string {
	t, _ := ctx.Value(tenantKey{}).(string)
	return t
}

// RoutedDNS01Solver is the acmez.Solver (and acmez.Waiter) for dns-01
// through the DNS providers of a dns01 configuration: for each challenge
// it follows `_acme-challenge` CNAMEs, finds the zone by SOA lookup, picks
// the provider by zone or tenant (dns01.Set.Route), records the record in
// acme_dns01_records, writes it, and before the CA is told to look (Wait)
// checks it on every authoritative server of the zone; CleanUp removes it
// and its row. Records a crashed worker left are removed by the next one
// (RemoveExpired, and Present for the same name). Failures are
// *dns01.Error, which Classify maps to cert_failed problem types. Safe for
// concurrent use; one per worker.
type RoutedDNS01Solver struct {
	set     *dns01.Set
	records *DNS01Records

	mu     sync.Mutex
	placed map[string]dns01.Target // record key -> where it went
}

var (
	_ acmez.Solver = (*RoutedDNS01Solver)(nil)
	_ acmez.Waiter = (*RoutedDNS01Solver)(nil)
)

// NewRoutedDNS01Solver returns a solver over set; records (nil: none kept)
// is where written records are recorded for crash cleanup.
func NewRoutedDNS01Solver(set *dns01.Set, records *DNS01Records) *RoutedDNS01Solver {
	return &RoutedDNS01Solver{set: set, records: records, placed: map[string]dns01.Target{}}
}

// cleanupTimeout bounds removing a record, which runs even when the order's
// context has ended.
const cleanupTimeout = 30 * time.Second

func challengeRecord(ch acme.Challenge) (fqdn, value, key string) {
	fqdn, value = ch.DNS01TXTRecordName()+".", ch.DNS01KeyAuthorization()
	return fqdn, value, fqdn + " " + value
}

// Present writes the challenge's TXT record where its name leads.
func (s *RoutedDNS01Solver) Present(ctx context.Context, ch acme.Challenge) error {
	fqdn, value, key := challengeRecord(ch)
	t, err := s.set.Route(ctx, TenantFrom(ctx), fqdn)
	if err != nil {
		return err
	}
	if s.records != nil {
		s.removeStale(ctx, t.Name)
		if err := s.records.Add(ctx, t, value, ch.Identifier.Value); err != nil {
			return err
		}
	}
	if err := s.set.Present(ctx, t, value); err != nil {
		var de *dns01.Error
		if errors.As(err, &de) && de.Permanent() && s.records != nil {
			// Refused: nothing was written, so nothing is left to remove.
			_ = s.records.Delete(context.WithoutCancel(ctx), t.Name, value)
		} else {
			s.remember(key, t) // it may have been written: CleanUp tries
		}
		return err
	}
	s.remember(key, t)
	return nil
}

// Wait returns once every authoritative server of the record's zone serves
// it, or a *dns01.Error of kind propagation naming the record and servers.
func (s *RoutedDNS01Solver) Wait(ctx context.Context, ch acme.Challenge) error {
	_, value, key := challengeRecord(ch)
	s.mu.Lock()
	t, ok := s.placed[key]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("acmeissuer: dns-01 record for %s was not presented", ch.Identifier.Value)
	}
	return s.set.WaitPropagated(ctx, t, value)
}

// CleanUp removes the record and its row; a record that cannot be removed
// keeps its row, so RemoveExpired tries again.
func (s *RoutedDNS01Solver) CleanUp(ctx context.Context, ch acme.Challenge) error {
	_, value, key := challengeRecord(ch)
	s.mu.Lock()
	t, ok := s.placed[key]
	delete(s.placed, key)
	s.mu.Unlock()
	if !ok {
		return nil
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if err := s.set.Remove(cctx, t, value); err != nil {
		return err
	}
	if s.records != nil {
		return s.records.Delete(cctx, t.Name, value)
	}
	return nil
}

func (s *RoutedDNS01Solver) remember(key string, t dns01.Target) {
	s.mu.Lock()
	s.placed[key] = t
	s.mu.Unlock()
}

// removeStale removes the expired records of name (a crashed worker's)
// before a new one is written there; failures are left to RemoveExpired.
func (s *RoutedDNS01Solver) removeStale(ctx context.Context, name string) {
	rows, err := s.records.expired(ctx, name, 20)
	if err != nil {
		return
	}
	for _, r := range rows {
		_ = s.removeRow(ctx, r)
	}
}

// RemoveExpired removes up to limit records whose rows expired (a crashed
// worker's, or ones whose removal failed) and their rows, and reports how
// many it removed; run it now and then from any worker. A row whose
// provider is no longer configured, or whose removal fails, stays and is
// named in the error.
func (s *RoutedDNS01Solver) RemoveExpired(ctx context.Context, limit int) (int, error) {
	if s.records == nil {
		return 0, nil
	}
	rows, err := s.records.expired(ctx, "", limit)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, r := range rows {
		if err := s.removeRow(ctx, r); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

func (s *RoutedDNS01Solver) removeRow(ctx context.Context, r dns01Row) error {
	p, ok := s.set.Provider(r.provider)
	if !ok {
		return fmt.Errorf("acmeissuer: dns-01 record %s left behind: provider %q is no longer configured", r.name, r.provider)
	}
	cctx, cancel := context.WithTimeout(ctx, cleanupTimeout)
	defer cancel()
	t := dns01.Target{Name: r.name, Zone: r.zone, ProviderName: r.provider, Provider: p}
	if err := s.set.Remove(cctx, t, r.value); err != nil {
		return err
	}
	return s.records.Delete(cctx, r.name, r.value)
}

// DNS01Records keeps the DNS-01 records written through providers in the
// acme_dns01_records table until they are removed (schema 0010). Safe for
// concurrent use.
type DNS01Records struct {
	db       *db.DB
	lifetime time.Duration
}

// NewDNS01Records returns the table over d. lifetime is how long a record
// may serve an order; a row older than that is expired and its record
// removed by RemoveExpired. It must exceed the longest order (order timeout
// with the propagation wait); default (and under a minute) 30 minutes.
func NewDNS01Records(d *db.DB, lifetime time.Duration) *DNS01Records {
	if lifetime < time.Minute {
		lifetime = 30 * time.Minute
	}
	return &DNS01Records{db: d, lifetime: lifetime}
}

// Add records a TXT record about to be written.
func (r *DNS01Records) Add(ctx context.Context, t dns01.Target, value, identifier string) error {
	_, err := r.db.Pool().Exec(ctx, `
		INSERT INTO acme_dns01_records (name, value, zone, provider, identifier, expires_at)
		VALUES ($1, $2, $3, $4, $5, now() + $6::INT8 * INTERVAL '1 second')
		ON CONFLICT (name, value) DO UPDATE SET zone = excluded.zone, provider = excluded.provider,
			identifier = excluded.identifier, expires_at = excluded.expires_at`,
		t.Name, value, t.Zone, t.ProviderName, identifier, int64(r.lifetime/time.Second))
	if err != nil {
		return fmt.Errorf("acmeissuer: recording the dns-01 record %s: %w", t.Name, err)
	}
	return nil
}

// Delete forgets a record (once it is removed from DNS).
func (r *DNS01Records) Delete(ctx context.Context, name, value string) error {
	if _, err := r.db.Pool().Exec(ctx, `DELETE FROM acme_dns01_records WHERE name = $1 AND value = $2`, name, value); err != nil {
		return fmt.Errorf("acmeissuer: forgetting the dns-01 record %s: %w", name, err)
	}
	return nil
}

// Count returns how many records are recorded for name ("" for all).
func (r *DNS01Records) Count(ctx context.Context, name string) (int, error) {
	var n int
	err := r.db.Pool().QueryRow(ctx, `SELECT count(*) FROM acme_dns01_records WHERE $1 = '' OR name = $1`, name).Scan(&n)
	return n, err
}

type dns01Row struct{ name, value, zone, provider string }

// expired returns up to limit expired rows (of name, unless empty).
func (r *DNS01Records) expired(ctx context.Context, name string, limit int) ([]dns01Row, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := r.db.Pool().Query(ctx, `
		SELECT name, value, zone, provider FROM acme_dns01_records
		WHERE expires_at <= now() AND ($1 = '' OR name = $1)
		ORDER BY expires_at LIMIT $2`, name, limit)
	if err != nil {
		return nil, fmt.Errorf("acmeissuer: reading expired dns-01 records: %w", err)
	}
	defer rows.Close()
	var out []dns01Row
	for rows.Next() {
		var x dns01Row
		if err := rows.Scan(&x.name, &x.value, &x.zone, &x.provider); err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, rows.Err()
}
