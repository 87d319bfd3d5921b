package certstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Parked is a request record waiting, outside any worker's memory, until
// Due (schema 0015, parked_requests): one row per request id.
type Parked struct {
	RequestID string
	Identity  string
	Due       time.Time
	// Record is the record to write when due, as the pipeline encodes it.
	Record []byte
	// Version identifies this park of the request: a later Park replaces
	// the row with a new version, and Unpark deletes only the version the
	// relay wrote.
	Version uuid.UUID
}

// Park keeps p until p.Due, replacing what was parked for the request
// before (the latest decision about a request wins). It sets p.Version.
func (s *Store) Park(ctx context.Context, p Parked) error {
	if err := s.park(ctx, []Parked{p}); err != nil {
		return fmt.Errorf("certstore: parking request %q until %s: %w", p.RequestID, p.Due.UTC().Format(time.RFC3339), err)
	}
	return nil
}

// Due claims up to limit parked records that are due (by the database's
// clock), oldest due first, for relay owner during lease: no other relay
// gets them until the lease ends. The relay writes each and then calls
// Unpark; one it did not unpark (it died) is due again after the lease.
func (s *Store) Due(ctx context.Context, owner string, lease time.Duration, limit int) ([]Parked, error) {
	rows, err := s.db.Pool().Query(ctx, `
UPDATE parked_requests SET relay_owner = $1, relay_until = now() + $2::INT * INTERVAL '1 millisecond'
 WHERE request_id IN (SELECT request_id FROM parked_requests
                       WHERE due_at <= now() AND (relay_until IS NULL OR relay_until < now())
                       ORDER BY due_at LIMIT $3)
   AND due_at <= now() AND (relay_until IS NULL OR relay_until < now())
RETURNING request_id, identity, due_at, record, version`, owner, lease.Milliseconds(), limit)
	if err != nil {
		return nil, fmt.Errorf("certstore: claiming due parked requests: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Parked, error) {
		var p Parked
		return p, r.Scan(&p.RequestID, &p.Identity, &p.Due, &p.Record, &p.Version)
	})
	if err != nil {
		return nil, fmt.Errorf("certstore: claiming due parked requests: %w", err)
	}
	slices.SortFunc(out, func(a, b Parked) int { return a.Due.Compare(b.Due) })
	return out, nil
}

// Unpark deletes the parked record of p's request if it is still the
// version p was (a request parked again meanwhile stays parked).
func (s *Store) Unpark(ctx context.Context, p Parked) error {
	if _, err := s.db.Pool().Exec(ctx, `DELETE FROM parked_requests WHERE request_id = $1 AND version = $2`, p.RequestID, p.Version); err != nil {
		return fmt.Errorf("certstore: removing parked request %q: %w", p.RequestID, err)
	}
	return nil
}

// Booking is a rate-limit slot a deferred request holds (ratelimit's Book:
// its tokens are spent already, for At, at the CA whose directory is CA):
// the worker that claims the request at At orders without spending again.
type Booking struct {
	CA string
	At time.Time
}

// ReleaseBooked hands the request back, as Release does, keeping b on it
// for the next owner (ClaimResult.Booking). A later Release, or the
// request's end, forgets it.
func (s *Store) ReleaseBooked(ctx context.Context, requestID, owner string, b Booking) error {
	if b.CA == "" || b.At.IsZero() {
		return errors.New("certstore: a booking needs its CA and time")
	}
	tag, err := s.db.Pool().Exec(ctx, `
UPDATE issuance_requests SET state = 'released', owner = '', owner_until = NULL, booked_ca = $3, booked_at = $4, updated_at = now()
 WHERE request_id = $1 AND owner = $2 AND state = 'ordering'`, requestID, owner, b.CA, b.At)
	if err != nil {
		return fmt.Errorf("certstore: releasing request %q with its booking: %w", requestID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("certstore: releasing request %q with its booking: %w", requestID, ErrNotOwner)
	}
	return nil
}
