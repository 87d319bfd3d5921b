// Package forecast tells ahead how many renewals fall in each day (or hour)
// of the coming weeks against each CA's fleet budget, from the managed
// inventory and the scheduler's renewal plans (managed_certificates, read
// only), and what a different certificate lifetime would do to them. It
// marks the herds (runs of buckets above the budget) and says over how long
// each would have to be spread to fit.
//
// The database aggregates: one GROUP BY over the inventory (per CA, hour of
// the planned renewal, lifetime of the current certificate), in SQL that
// runs unchanged on PostgreSQL and CockroachDB, so the answer costs one
// scan and a few thousand groups whatever the fleet's size. Expand (pure)
// turns the groups into renewals per hour: the planned one, then one every
// LifetimeFraction of the lifetime, spread over the scheduler's jitter.
package forecast

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/certfleet/certfleet/db"
)

// Group is the inventory's rows with one CA, one hour of first renewal and
// one lifetime.
type Group struct {
	// CA is the row's ca_directory: a CA name, a group name or a
	// directory URL, as managed.
	CA string
	// Hour is the planned renewal's hour after the forecast's start (0
	// for renewals due now or overdue).
	Hour int
	// Lifetime of the current certificate, whole hours; 0 when the SAN
	// set has none yet (its first certificate is due).
	Lifetime time.Duration
	// Count of rows; Overdue of them were planned before the start.
	Count, Overdue int64
}

// groupSQL buckets the planned renewals before $2 by hour after $1. Only
// +, -, / on floats, floor and casts: the same on both servers (integer
// division differs between them, so none is used).
const groupSQL = `
SELECT ca_directory,
       floor(EXTRACT(EPOCH FROM (GREATEST(next_renewal_at, $1::TIMESTAMPTZ) - $1::TIMESTAMPTZ))::FLOAT8 / 3600.0)::INT8 AS hour,
       COALESCE(floor(EXTRACT(EPOCH FROM (cert_not_after - cert_not_before))::FLOAT8 / 3600.0)::INT8, 0) AS life_hours,
       count(*)::INT8,
       sum(CASE WHEN next_renewal_at < $1::TIMESTAMPTZ THEN 1 ELSE 0 END)::INT8
  FROM managed_certificates
 WHERE next_renewal_at < $2::TIMESTAMPTZ
 GROUP BY 1, 2, 3`

// Groups reads the inventory's renewal plans between start and end,
// aggregated by the database. A renewal planned before start counts at
// start (it is due).
func Groups(ctx context.Context, d *db.DB, start, end time.Time) ([]Group, error) {
	rows, err := d.Pool().Query(ctx, groupSQL, start, end)
	if err != nil {
		return nil, fmt.Errorf("forecast: reading the renewal plans: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Group, error) {
		var g Group
		var hour, life int64
		err := r.Scan(&g.CA, &hour, &life, &g.Count, &g.Overdue)
		g.Hour, g.Lifetime = int(hour), time.Duration(life)*time.Hour
		return g, err
	})
	if err != nil {
		return nil, fmt.Errorf("forecast: reading the renewal plans: %w", err)
	}
	return out, nil
}
