// Package lanesignal is the fleet-wide word workers share about lanes:
//
//   - that requests of a lane are waiting for the fleet budget (table
//     lane_signals, schema 0017): a worker whose emergency or new-issuance
//     requests are denied by the budget marks their lane active for a short
//     hold, and every worker holds its lower-lane requests back until the
//     marks it sees have ended;
//   - each worker's recent usage of each lane per tenant (table lane_usage,
//     schema 0019), so the fair share inside a lane counts the fleet's
//     grants.
//
// It owns nothing else: which lanes exist, what to do with a mark and how
// usage decays are package pipeline's.
package lanesignal

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/pipeline"
)

// Store reads and writes lane signals in the database. Safe for concurrent
// use, also across processes.
type Store struct{ db *db.DB }

// New returns a Store over d.
func New(d *db.DB) *Store { return &Store{db: d} }

// Mark says that requests of lane are waiting for the fleet budget until
// until. A mark never shortens a later one.
func (s *Store) Mark(ctx context.Context, lane string, until time.Time) error {
	_, err := s.db.Pool().Exec(ctx, `
INSERT INTO lane_signals (lane, active_until) VALUES ($1, $2)
ON CONFLICT (lane) DO UPDATE SET active_until = GREATEST(lane_signals.active_until, excluded.active_until), updated_at = now()`,
		lane, until)
	if err != nil {
		return fmt.Errorf("lanesignal: marking lane %q active until %s: %w", lane, until.UTC().Format(time.RFC3339Nano), err)
	}
	return nil
}

// Until returns the latest end of a mark of any of lanes (the zero time
// when none was ever marked).
func (s *Store) Until(ctx context.Context, lanes []string) (time.Time, error) {
	var until *time.Time
	err := s.db.Pool().QueryRow(ctx, `SELECT max(active_until) FROM lane_signals WHERE lane = ANY($1)`, lanes).Scan(&until)
	if err != nil {
		return time.Time{}, fmt.Errorf("lanesignal: reading the marks of lanes %v: %w", lanes, err)
	}
	if until == nil {
		return time.Time{}, nil
	}
	return *until, nil
}

// usageKept is how long a reported usage row is kept: far beyond the
// half-life, after which it decayed to nothing anyway.
const usageKept = time.Hour

// Report replaces owner's reported usage with usage (pipeline.FairShare):
// its rows are upserted, then owner's rows it did not report and every
// row older than an hour are deleted, in one round trip.
func (s *Store) Report(ctx context.Context, owner string, usage []pipeline.TenantUsage) error {
	now := time.Now()
	tenants, lanes, values, ats := make([]string, len(usage)), make([]string, len(usage)), make([]float64, len(usage)), make([]time.Time, len(usage))
	for i, u := range usage {
		tenants[i], lanes[i], values[i], ats[i] = u.Tenant, u.Lane, u.Usage, u.At
		if u.At.After(now) {
			now = u.At
		}
	}
	b := &pgx.Batch{}
	if len(usage) > 0 {
		b.Queue(`
INSERT INTO lane_usage (tenant, lane, worker, usage, at)
SELECT t, l, $1, u, a FROM unnest($2::TEXT[], $3::TEXT[], $4::FLOAT8[], $5::TIMESTAMPTZ[]) AS x(t, l, u, a)
ON CONFLICT (tenant, lane, worker) DO UPDATE SET usage = excluded.usage, at = excluded.at`, owner, tenants, lanes, values, ats)
	}
	// What owner reported before this report and not in it is gone: its
	// usage decayed to nothing.
	var oldest time.Time
	for i, a := range ats {
		if i == 0 || a.Before(oldest) {
			oldest = a
		}
	}
	if len(usage) == 0 {
		oldest = now.Add(time.Nanosecond)
	}
	b.Queue(`DELETE FROM lane_usage WHERE (worker = $1 AND at < $2) OR at < $3`, owner, oldest, now.Add(-usageKept))
	if err := s.db.Pool().SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("lanesignal: reporting %d tenant usages of worker %q: %w", len(usage), owner, err)
	}
	return nil
}

// Others returns the usage every worker but owner reported for tenants
// (pipeline.FairShare), rows older than an hour left out.
func (s *Store) Others(ctx context.Context, owner string, tenants []string) ([]pipeline.TenantUsage, error) {
	rows, err := s.db.Pool().Query(ctx, `
SELECT tenant, lane, usage, at FROM lane_usage WHERE tenant = ANY($1) AND worker <> $2 AND at > $3`,
		tenants, owner, time.Now().Add(-usageKept))
	if err != nil {
		return nil, fmt.Errorf("lanesignal: reading the fleet's usage of %d tenants: %w", len(tenants), err)
	}
	var out []pipeline.TenantUsage
	for rows.Next() {
		var u pipeline.TenantUsage
		if err := rows.Scan(&u.Tenant, &u.Lane, &u.Usage, &u.At); err != nil {
			rows.Close()
			return nil, fmt.Errorf("lanesignal: reading the fleet's usage of %d tenants: %w", len(tenants), err)
		}
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("lanesignal: reading the fleet's usage of %d tenants: %w", len(tenants), err)
	}
	return out, nil
}
