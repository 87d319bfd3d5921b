package delivery

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/certfleet/certfleet/db"
)

// Recipient is a registered recipient: a public key and the certificates it
// receives. A certificate matches when its tenant is one of Tenants (or
// Tenants is empty) and every one of its SANs matches one of SANsPatterns
// (or SANsPatterns is empty); at least one of the two is set.
type Recipient struct {
	Name         string
	Key          PublicKey
	Tenants      []string
	SANsPatterns []string
	Version      int64
	CreatedBy    string
	CreatedAt    time.Time
	UpdatedAt    time.Time
	// BackfillPending: the current certificates have not been delivered to
	// this key yet (it was added or rotated since).
	BackfillPending bool
	BackfilledAt    time.Time
}

// Matches reports whether a certificate of tenant with sans goes to r.
func (r Recipient) Matches(tenant string, sans []string) bool {
	if len(r.Tenants) > 0 && !slices.Contains(r.Tenants, tenant) {
		return false
	}
	if len(r.SANsPatterns) == 0 {
		return true
	}
	for _, s := range sans {
		if !slices.ContainsFunc(r.SANsPatterns, func(p string) bool { return PatternMatches(p, s) }) {
			return false
		}
	}
	return true
}

// PatternMatches reports whether SAN name matches pattern. A pattern is a
// DNS name, which matches exactly that name, or "*." followed by a domain,
// which matches the domain and every name below it (a wildcard SAN below it
// too), as rate-limit override keys do.
func PatternMatches(pattern, name string) bool {
	name = strings.ToLower(name)
	if d, ok := strings.CutPrefix(pattern, "*."); ok {
		n := strings.TrimPrefix(name, "*.")
		return n == d || strings.HasSuffix(n, "."+d)
	}
	return name == pattern
}

var patternPattern = regexp.MustCompile(`^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$`)

// actorPattern: who makes a change (a login name, an email, a service).
var actorPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$`)

// FieldError names the field of a recipient that is invalid.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return fmt.Sprintf("delivery: %s: %v", e.Field, e.Err) }
func (e *FieldError) Unwrap() error { return e.Err }

// Check validates a recipient's name, key and scope.
func (r Recipient) Check() error {
	if !recipientPattern.MatchString(r.Name) {
		return &FieldError{"name", fmt.Errorf("%q: lower-case letters, digits, '.', '_' or '-', at most 64, starting with a letter or digit", r.Name)}
	}
	if !r.Key.Valid() {
		return &FieldError{"public_key", errors.New("missing")}
	}
	if len(r.Tenants) == 0 && len(r.SANsPatterns) == 0 {
		return &FieldError{"scope", errors.New("name the tenants, the SAN patterns or both: a recipient without a scope would receive every certificate")}
	}
	for _, t := range r.Tenants {
		if !idPattern.MatchString(t) {
			return &FieldError{"tenants", fmt.Errorf("%q does not match %s", t, idPattern)}
		}
	}
	for _, p := range r.SANsPatterns {
		if len(p) > maxNameLen || !patternPattern.MatchString(p) {
			return &FieldError{"sans_patterns", fmt.Errorf("%q: want a lower-case DNS name (A-labels) or *.DOMAIN", p)}
		}
		if !strings.Contains(strings.TrimPrefix(p, "*."), ".") {
			return &FieldError{"sans_patterns", fmt.Errorf("%q: a pattern names at least a registered domain (*.example.com, not *.com)", p)}
		}
	}
	return nil
}

// Store keeps recipients in the database (delivery_recipients) and audits
// every change (delivery_recipient_audit). Safe for concurrent use.
type Store struct{ db *db.DB }

// NewStore returns a Store over d; the schema must be migrated.
func NewStore(d *db.DB) *Store { return &Store{db: d} }

// Errors of the Store, for errors.Is.
var (
	ErrNotFound = errors.New("delivery: no such recipient")
	ErrExists   = errors.New("delivery: a recipient of that name exists")
	ErrSameKey  = errors.New("delivery: the recipient has this key already")
)

const recipientColumns = `name, public_key, tenants, sans_patterns, version, created_by, created_at, updated_at, backfill_pending, backfilled_at`

func scanRecipient(row pgx.Row) (Recipient, error) {
	var r Recipient
	var key []byte
	var backfilled *time.Time
	if err := row.Scan(&r.Name, &key, &r.Tenants, &r.SANsPatterns, &r.Version, &r.CreatedBy, &r.CreatedAt, &r.UpdatedAt, &r.BackfillPending, &backfilled); err != nil {
		return r, err
	}
	k, err := ParsePublicKey(key)
	if err != nil {
		return r, fmt.Errorf("delivery: recipient %s: stored key: %w", r.Name, err)
	}
	r.Key = k
	if backfilled != nil {
		r.BackfilledAt = *backfilled
	}
	return r, nil
}

func checkActor(actor string) error {
	if !actorPattern.MatchString(actor) {
		return &FieldError{"actor", fmt.Errorf("%q: letters, digits, '.', '_', '@', '+' or '-', at most 128", actor)}
	}
	return nil
}

// Add registers r (version 1); its current certificates are delivered to it
// by the next worker's backfill. ErrExists when the name is taken.
func (s *Store) Add(ctx context.Context, r Recipient, actor string) (Recipient, error) {
	if err := errors.Join(r.Check(), checkActor(actor)); err != nil {
		return Recipient{}, err
	}
	r.Tenants, r.SANsPatterns = nonNil(r.Tenants), nonNil(r.SANsPatterns)
	var out Recipient
	err := s.db.ExecuteTx(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = scanRecipient(tx.QueryRow(ctx, `
INSERT INTO delivery_recipients (name, public_key, key_id, tenants, sans_patterns, created_by)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING `+recipientColumns, r.Name, r.Key.Bytes(), r.Key.KeyID(), r.Tenants, r.SANsPatterns, actor))
		if err != nil {
			return err
		}
		return audit(ctx, tx, "add", actor, out)
	})
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23505" { // unique_violation
		return Recipient{}, fmt.Errorf("%w: %s", ErrExists, r.Name)
	}
	if err != nil {
		return Recipient{}, fmt.Errorf("delivery: adding recipient %s: %w", r.Name, err)
	}
	return out, nil
}

// Rotate replaces name's public key (the version grows) and schedules a
// backfill, so the new key receives the current certificates. Deliveries
// already made stay sealed to the old key.
func (s *Store) Rotate(ctx context.Context, name string, key PublicKey, actor string) (Recipient, error) {
	if err := checkActor(actor); err != nil {
		return Recipient{}, err
	}
	if !key.Valid() {
		return Recipient{}, &FieldError{"public_key", errors.New("missing")}
	}
	var out Recipient
	err := s.db.ExecuteTx(ctx, func(tx pgx.Tx) error {
		cur, err := scanRecipient(tx.QueryRow(ctx, `SELECT `+recipientColumns+` FROM delivery_recipients WHERE name = $1`, name))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: %s", ErrNotFound, name)
		}
		if err != nil {
			return err
		}
		if cur.Key.KeyID() == key.KeyID() {
			return fmt.Errorf("%w (%s)", ErrSameKey, key.KeyID()[:16])
		}
		out, err = scanRecipient(tx.QueryRow(ctx, `
UPDATE delivery_recipients
   SET public_key = $2, key_id = $3, version = version + 1, updated_at = now(),
       backfill_pending = true, backfill_owner = '', backfill_until = NULL, backfilled_at = NULL
 WHERE name = $1
RETURNING `+recipientColumns, name, key.Bytes(), key.KeyID()))
		if err != nil {
			return err
		}
		return audit(ctx, tx, "rotate", actor, out)
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrSameKey) {
			return Recipient{}, err
		}
		return Recipient{}, fmt.Errorf("delivery: rotating recipient %s: %w", name, err)
	}
	return out, nil
}

// Remove deletes the recipient: no delivery made after it commits is sealed
// to its key. Its audit history stays.
func (s *Store) Remove(ctx context.Context, name, actor string) (Recipient, error) {
	if err := checkActor(actor); err != nil {
		return Recipient{}, err
	}
	var out Recipient
	err := s.db.ExecuteTx(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = scanRecipient(tx.QueryRow(ctx, `DELETE FROM delivery_recipients WHERE name = $1 RETURNING `+recipientColumns, name))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: %s", ErrNotFound, name)
		}
		if err != nil {
			return err
		}
		return audit(ctx, tx, "remove", actor, out)
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return Recipient{}, err
		}
		return Recipient{}, fmt.Errorf("delivery: removing recipient %s: %w", name, err)
	}
	return out, nil
}

// Get returns one recipient, or ErrNotFound.
func (s *Store) Get(ctx context.Context, name string) (Recipient, error) {
	r, err := scanRecipient(s.db.Pool().QueryRow(ctx, `SELECT `+recipientColumns+` FROM delivery_recipients WHERE name = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err != nil {
		return r, fmt.Errorf("delivery: reading recipient %s: %w", name, err)
	}
	return r, nil
}

// List returns every recipient, by name. The worker reads it for each
// certificate it delivers, so a removal takes effect at once.
func (s *Store) List(ctx context.Context) ([]Recipient, error) {
	rows, err := s.db.Pool().Query(ctx, `SELECT `+recipientColumns+` FROM delivery_recipients ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("delivery: listing recipients: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Recipient, error) { return scanRecipient(r) })
	if err != nil {
		return nil, fmt.Errorf("delivery: listing recipients: %w", err)
	}
	return out, nil
}

// AuditEntry is one change to a recipient.
type AuditEntry struct {
	Action       string    `json:"action"` // add, rotate, remove
	Actor        string    `json:"actor"`
	Version      int64     `json:"version"`
	KeyID        string    `json:"key_id"`
	Tenants      []string  `json:"tenants"`
	SANsPatterns []string  `json:"sans_patterns"`
	At           time.Time `json:"at"`
}

// History returns a recipient's changes, oldest first (also after Remove).
func (s *Store) History(ctx context.Context, name string) ([]AuditEntry, error) {
	rows, err := s.db.Pool().Query(ctx, `SELECT action, actor, version, key_id, tenants, sans_patterns, at
  FROM delivery_recipient_audit WHERE recipient = $1 ORDER BY at, version`, name)
	if err != nil {
		return nil, fmt.Errorf("delivery: reading the history of %s: %w", name, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (AuditEntry, error) {
		var e AuditEntry
		return e, r.Scan(&e.Action, &e.Actor, &e.Version, &e.KeyID, &e.Tenants, &e.SANsPatterns, &e.At)
	})
}

func audit(ctx context.Context, tx pgx.Tx, action, actor string, r Recipient) error {
	_, err := tx.Exec(ctx, `INSERT INTO delivery_recipient_audit (id, recipient, action, actor, version, key_id, tenants, sans_patterns)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, uuid.New(), r.Name, action, actor, r.Version, r.Key.KeyID(), nonNil(r.Tenants), nonNil(r.SANsPatterns))
	if err != nil {
		return fmt.Errorf("writing the audit row: %w", err)
	}
	return nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// claimBackfill leases the backfill of one recipient that needs it (added
// or rotated since its last backfill) to owner until lease from now. It
// returns false when none is waiting.
func (s *Store) claimBackfill(ctx context.Context, owner string, lease time.Duration) (Recipient, bool, error) {
	r, err := scanRecipient(s.db.Pool().QueryRow(ctx, `
UPDATE delivery_recipients
   SET backfill_owner = $1, backfill_until = now() + $2::INT * INTERVAL '1 millisecond'
 WHERE name = (SELECT name FROM delivery_recipients
                WHERE backfill_pending AND (backfill_until IS NULL OR backfill_until < now())
                ORDER BY updated_at LIMIT 1)
   AND backfill_pending AND (backfill_until IS NULL OR backfill_until < now())
RETURNING `+recipientColumns, owner, lease.Milliseconds()))
	if errors.Is(err, pgx.ErrNoRows) {
		return Recipient{}, false, nil
	}
	if err != nil {
		return Recipient{}, false, fmt.Errorf("delivery: claiming a backfill: %w", err)
	}
	return r, true, nil
}

// renewBackfill extends owner's lease on r's backfill; false when it is no
// longer owner's (expired and taken, or the recipient changed or went).
func (s *Store) renewBackfill(ctx context.Context, r Recipient, owner string, lease time.Duration) (bool, error) {
	tag, err := s.db.Pool().Exec(ctx, `
UPDATE delivery_recipients SET backfill_until = now() + $4::INT * INTERVAL '1 millisecond'
 WHERE name = $1 AND version = $2 AND backfill_owner = $3 AND backfill_pending`, r.Name, r.Version, owner, lease.Milliseconds())
	if err != nil {
		return false, fmt.Errorf("delivery: renewing the backfill of %s: %w", r.Name, err)
	}
	return tag.RowsAffected() == 1, nil
}

// finishBackfill marks r's backfill done, unless the recipient was rotated
// (a new version waits for its own) or removed meanwhile.
func (s *Store) finishBackfill(ctx context.Context, r Recipient, owner string) error {
	_, err := s.db.Pool().Exec(ctx, `
UPDATE delivery_recipients
   SET backfill_pending = false, backfill_owner = '', backfill_until = NULL, backfilled_at = now()
 WHERE name = $1 AND version = $2 AND backfill_owner = $3`, r.Name, r.Version, owner)
	if err != nil {
		return fmt.Errorf("delivery: finishing the backfill of %s: %w", r.Name, err)
	}
	return nil
}
