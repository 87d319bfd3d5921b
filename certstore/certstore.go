// Package certstore owns the database rows that make issuance idempotent and
// durable: one row per issuance request (who is ordering it, how it ended and
// the event that reported it) and the issued certificates with their sealed
// private keys. It does not seal keys itself (package seal does), order
// certificates or talk to Kafka.
//
// The request life cycle:
//
//	(none) --Claim--> ordering --Complete--> succeeded   (outcome kept; redeliveries re-publish it)
//	                     |     --Fail------> failed      (permanent; outcome kept likewise)
//	                     |     --Release---> released    (retryable; the next delivery claims it)
//	                     |     --ReleaseBooked-> released, holding a rate-limit booking for the next owner
//	                     |     --Renew-----> ordering    (the owner's heartbeat extends its lease)
//	                     '-- lease expires (worker died): the next Claim takes it over
//
// Every transition is guarded by the owner, so a worker whose lease was taken
// over cannot overwrite the new owner's result. Owners should be unique per
// attempt (worker plus job), not per worker: a claim is never re-entered.
package certstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/certfleet/certfleet/db"
)

// State of a request row.
type State string

const (
	StateOrdering  State = "ordering"
	StateSucceeded State = "succeeded"
	StateFailed    State = "failed"
	StateReleased  State = "released"
)

// ClaimResult says what a worker should do with a delivered request.
type ClaimResult struct {
	// Acquired: this worker now owns the request until LeaseUntil and should
	// order the certificate.
	Acquired bool
	// Attempt is the attempt number of this claim (1 for the first).
	Attempt int
	// Done: the request already ended (succeeded or failed); Outcome is the
	// event that reported it, to be re-published unchanged.
	Done    bool
	State   State
	Outcome []byte
	// Busy: another worker owns it until LeaseUntil; defer the job until then
	// rather than order a second certificate.
	Busy       bool
	LeaseUntil time.Time
	// Order is the order an earlier attempt placed and did not finish (it
	// died or released the request), when Acquired and one was recorded
	// (RecordOrder): continue it rather than order again.
	Order *Order
	// Booking is the rate-limit slot an earlier owner booked and deferred
	// the request to (ReleaseBooked), when Acquired: order at its time
	// without spending again.
	Booking *Booking
}

// Order is an order in flight at the CA: its URL, the certificate key it is
// to be finalised with, sealed by package seal (never stored in the clear),
// and the directory URL of the CA it was placed at (empty for an order
// recorded before schema 0009: the request's own CA).
type Order struct {
	URL       string
	SealedKey []byte
	CA        string
}

// Store is the request and certificate store over the database. Safe for
// concurrent use.
type Store struct{ db *db.DB }

// New returns a Store over d; the schema must be migrated.
func New(d *db.DB) *Store { return &Store{db: d} }

// ErrNotOwner means the caller no longer owns the request (its lease expired
// and another worker claimed it, or it already ended); its result was not
// recorded.
var ErrNotOwner = errors.New("certstore: request is not owned by this worker")

// Claim takes ownership of requestID for lease, unless it already ended or a
// live lease of another worker holds it. One statement decides; a second read
// reports why a claim was refused.
func (s *Store) Claim(ctx context.Context, requestID, identity, owner string, lease time.Duration) (ClaimResult, error) {
	var r ClaimResult
	var orderURL, orderCA, bookedCA *string
	var orderKey []byte
	var bookedAt *time.Time
	err := s.db.Pool().QueryRow(ctx, `
INSERT INTO issuance_requests (request_id, identity, state, owner, owner_until, attempts)
VALUES ($1, $2, 'ordering', $3, now() + $4::INT * INTERVAL '1 millisecond', 1)
ON CONFLICT (request_id) DO UPDATE
   SET state = 'ordering', owner = excluded.owner, owner_until = excluded.owner_until,
       attempts = issuance_requests.attempts + 1, updated_at = now()
 WHERE issuance_requests.state = 'released'
    OR (issuance_requests.state = 'ordering' AND issuance_requests.owner_until < now())
RETURNING attempts, owner_until, order_url, order_key, order_ca, booked_ca, booked_at`, requestID, identity, owner, lease.Milliseconds()).
		Scan(&r.Attempt, &r.LeaseUntil, &orderURL, &orderKey, &orderCA, &bookedCA, &bookedAt)
	if err == nil {
		r.Acquired, r.State = true, StateOrdering
		if orderURL != nil && *orderURL != "" && len(orderKey) > 0 {
			r.Order = &Order{URL: *orderURL, SealedKey: orderKey}
			if orderCA != nil {
				r.Order.CA = *orderCA
			}
		}
		if bookedCA != nil && *bookedCA != "" && bookedAt != nil {
			r.Booking = &Booking{CA: *bookedCA, At: *bookedAt}
		}
		return r, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("certstore: claiming request %q: %w", requestID, err)
	}
	var until *time.Time
	err = s.db.Pool().QueryRow(ctx, `SELECT state, attempts, owner_until, outcome FROM issuance_requests WHERE request_id = $1`, requestID).
		Scan(&r.State, &r.Attempt, &until, &r.Outcome)
	if err != nil {
		return r, fmt.Errorf("certstore: reading request %q after a refused claim: %w", requestID, err)
	}
	switch r.State {
	case StateSucceeded, StateFailed:
		r.Done = true
	default:
		r.Busy = true
		if until != nil {
			r.LeaseUntil = *until
		}
	}
	return r, nil
}

// Issued is a certificate to store. SealedKey is the private key already
// sealed by package seal; it is never stored or logged in the clear.
type Issued struct {
	Identity  string
	RequestID string
	Serial    string
	ARICertID string
	NotBefore time.Time
	NotAfter  time.Time
	ChainPEM  string
	SealedKey []byte
	Issuer    string
	// Tenant is the request's tenant (key delivery matches recipients by
	// it); empty on rows stored before it was recorded.
	Tenant string
}

// Complete stores the certificate and marks the request succeeded with the
// outcome event, atomically, if owner still owns it; otherwise it returns
// ErrNotOwner and stores nothing. One statement (the request's update and
// the certificate's insert in one data-modifying CTE, atomic on PostgreSQL
// and CockroachDB alike) and so one round trip: no BEGIN and COMMIT around
// two statements.
func (s *Store) Complete(ctx context.Context, owner string, c Issued, outcome []byte) error {
	tag, err := s.db.Pool().Exec(ctx, `
WITH done AS (
UPDATE issuance_requests SET state = 'succeeded', outcome = $12, owner = '', owner_until = NULL,
       order_url = NULL, order_key = NULL, order_ca = NULL, booked_ca = NULL, booked_at = NULL, updated_at = now()
 WHERE request_id = $3 AND owner = $13 AND state = 'ordering'
RETURNING request_id)
INSERT INTO issued_certificates (id, identity, request_id, serial, ari_cert_id, not_before, not_after, chain_pem, sealed_key, issuer, tenant)
SELECT $1::UUID, $2::TEXT, request_id, $4::TEXT, $5::TEXT, $6::TIMESTAMPTZ, $7::TIMESTAMPTZ, $8::TEXT, $9::BYTEA, $10::TEXT, $11::TEXT FROM done`,
		uuid.New(), c.Identity, c.RequestID, c.Serial, c.ARICertID, c.NotBefore, c.NotAfter, c.ChainPEM, c.SealedKey, c.Issuer, c.Tenant,
		outcome, owner)
	if err != nil {
		return fmt.Errorf("certstore: completing request %q: %w", c.RequestID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("certstore: completing request %q: %w", c.RequestID, ErrNotOwner)
	}
	return nil
}

// Fail marks the request permanently failed with the outcome event, if owner
// still owns it (one statement, as Complete).
func (s *Store) Fail(ctx context.Context, requestID, owner string, outcome []byte) error {
	tag, err := s.db.Pool().Exec(ctx, `
UPDATE issuance_requests SET state = 'failed', outcome = $3, owner = '', owner_until = NULL,
       order_url = NULL, order_key = NULL, order_ca = NULL, booked_ca = NULL, booked_at = NULL, updated_at = now()
 WHERE request_id = $1 AND owner = $2 AND state = 'ordering'`, requestID, owner, outcome)
	if err != nil {
		return fmt.Errorf("certstore: failing request %q: %w", requestID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("certstore: failing request %q: %w", requestID, ErrNotOwner)
	}
	return nil
}

// RecordOrder remembers the order owner has just placed for the request, so
// the next owner can continue it if this one dies. It returns ErrNotOwner,
// recording nothing, when owner no longer owns the request.
func (s *Store) RecordOrder(ctx context.Context, requestID, owner string, o Order) error {
	tag, err := s.db.Pool().Exec(ctx, `
UPDATE issuance_requests SET order_url = $3, order_key = $4, order_ca = NULLIF($5, ''), updated_at = now()
 WHERE request_id = $1 AND owner = $2 AND state = 'ordering'`, requestID, owner, o.URL, o.SealedKey, o.CA)
	if err != nil {
		return fmt.Errorf("certstore: recording the order of request %q: %w", requestID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("certstore: recording the order of request %q: %w", requestID, ErrNotOwner)
	}
	return nil
}

// Renew extends owner's claim on the request to lease from now: the
// heartbeat of a worker still working on it, so a short lease (seconds)
// protects an order of any length while its owner lives and frees the
// request soon after the owner dies. It returns ErrNotOwner, changing
// nothing, when owner no longer owns the request (the lease ran out and
// another worker claimed it, or the request ended or was released).
func (s *Store) Renew(ctx context.Context, requestID, owner string, lease time.Duration) error {
	tag, err := s.db.Pool().Exec(ctx, `
UPDATE issuance_requests SET owner_until = now() + $3::INT * INTERVAL '1 millisecond'
 WHERE request_id = $1 AND owner = $2 AND state = 'ordering'`, requestID, owner, lease.Milliseconds())
	if err != nil {
		return fmt.Errorf("certstore: renewing the claim on request %q: %w", requestID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("certstore: renewing the claim on request %q: %w", requestID, ErrNotOwner)
	}
	return nil
}

// Release hands the request back (retryable failure, deferral or shutdown) so
// the next delivery can claim it at once.
func (s *Store) Release(ctx context.Context, requestID, owner string) error {
	tag, err := s.db.Pool().Exec(ctx, `
UPDATE issuance_requests SET state = 'released', owner = '', owner_until = NULL, booked_ca = NULL, booked_at = NULL, updated_at = now()
 WHERE request_id = $1 AND owner = $2 AND state = 'ordering'`, requestID, owner)
	if err != nil {
		return fmt.Errorf("certstore: releasing request %q: %w", requestID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("releasing request %q: %w", requestID, ErrNotOwner)
	}
	return nil
}

// Certificate is a stored certificate, key still sealed.
type Certificate struct {
	Issued
	ID        uuid.UUID
	CreatedAt time.Time
}

// Latest returns the newest certificate (by NotAfter) for identity, or
// ErrNotFound.
func (s *Store) Latest(ctx context.Context, identity string) (Certificate, error) {
	return s.one(ctx, `WHERE identity = $1 ORDER BY not_after DESC LIMIT 1`, identity)
}

// one reads the first certificate matching where (a fixed clause, arg bound).
func (s *Store) one(ctx context.Context, where, arg string) (Certificate, error) {
	var c Certificate
	err := s.db.Pool().QueryRow(ctx, `
SELECT id, identity, request_id, serial, ari_cert_id, not_before, not_after, chain_pem, sealed_key, issuer, tenant, created_at
  FROM issued_certificates `+where, arg).
		Scan(&c.ID, &c.Identity, &c.RequestID, &c.Serial, &c.ARICertID, &c.NotBefore, &c.NotAfter, &c.ChainPEM, &c.SealedKey, &c.Issuer, &c.Tenant, &c.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return c, fmt.Errorf("certstore: certificate %s: %w", arg, ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("certstore: reading certificate %s: %w", arg, err)
	}
	return c, nil
}

// ByARICertID returns the certificate with the given ARI certificate id
// (RFC 9773), or ErrNotFound: the certificate an ARI renewal replaces.
func (s *Store) ByARICertID(ctx context.Context, ariCertID string) (Certificate, error) {
	return s.one(ctx, `WHERE ari_cert_id = $1 ORDER BY not_after DESC LIMIT 1`, ariCertID)
}

// Current returns up to limit current certificates, by identity after
// after ("" for the first page): for each identity the newest stored
// certificate (by NotAfter, then the later stored) that has not expired,
// one per identity. Tenant is the row's, or
// for a row stored before tenants were recorded, the tenant the SAN set is
// managed under ("" when it is not managed).
func (s *Store) Current(ctx context.Context, after string, limit int) ([]Certificate, error) {
	rows, err := s.db.Pool().Query(ctx, `
SELECT c.id, c.identity, c.request_id, c.serial, c.ari_cert_id, c.not_before, c.not_after, c.chain_pem, c.sealed_key, c.issuer,
       CASE WHEN c.tenant <> '' THEN c.tenant ELSE COALESCE(m.tenant, '') END, c.created_at
  FROM issued_certificates c
  LEFT JOIN managed_certificates m ON m.identity = c.identity
 WHERE c.identity > $1 AND c.not_after > now()
   AND NOT EXISTS (SELECT 1 FROM issued_certificates n WHERE n.identity = c.identity
                   AND (n.not_after > c.not_after OR n.not_after = c.not_after AND (n.created_at, n.id) > (c.created_at, c.id)))
 ORDER BY c.identity, c.id
 LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("certstore: listing current certificates: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Certificate, error) {
		var c Certificate
		return c, r.Scan(&c.ID, &c.Identity, &c.RequestID, &c.Serial, &c.ARICertID, &c.NotBefore, &c.NotAfter, &c.ChainPEM, &c.SealedKey, &c.Issuer, &c.Tenant, &c.CreatedAt)
	})
	if err != nil {
		return nil, fmt.Errorf("certstore: listing current certificates: %w", err)
	}
	return out, nil
}

// ErrNotFound means no certificate is stored for the identity.
var ErrNotFound = errors.New("certstore: not found")
