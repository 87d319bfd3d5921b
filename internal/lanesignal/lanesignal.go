// Package lanesignal is the fleet-wide word that requests of a lane are
// waiting for the fleet budget (table lane_signals, schema 0017): a worker
// whose emergency or new-issuance requests are denied by the budget marks
// their lane active for a short hold, and every worker holds its lower-lane
// requests back until the marks it sees have ended. It owns nothing else:
// which lanes exist and what to do with a mark are package pipeline's.
package lanesignal

import (
	"context"
	"fmt"
	"time"

	"github.com/certfleet/certfleet/db"
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
