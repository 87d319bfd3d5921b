package ratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/internal/clock"
)

// ChangesTopic is the Kafka topic override changes are announced on.
const ChangesTopic = "certfleet.ratelimit.changes"

// ChangeEvent announces one override change; it is the outbox payload and
// the Kafka message value (JSON), keyed by the override id.
type ChangeEvent struct {
	OverrideID string    `json:"override_id"`
	Name       Name      `json:"limit_name"`
	Key        string    `json:"key"`
	Action     string    `json:"action"` // create | update | disable | delete
	Version    int64     `json:"version"`
	At         time.Time `json:"at"`
}

// OverrideStore manages overrides in ratelimit_overrides. Every change runs
// in one transaction that also writes an audit row and an outbox row, so a
// change is never announced without being committed, nor committed without
// being announced. It implements OverrideSource.
type OverrideStore struct {
	db    *db.DB
	clock clock.Clock
}

var _ OverrideSource = (*OverrideStore)(nil)

// NewOverrideStore returns a store over d; clk stamps updated_at and
// audit rows (nil: the wall clock).
func NewOverrideStore(d *db.DB, clk clock.Clock) *OverrideStore {
	return &OverrideStore{db: d, clock: clock.Or(clk)}
}

const overrideCols = `id::TEXT, limit_name, key_pattern, limit_count, period_ns, burst, valid_from, valid_until, enabled, comment, created_by, version, updated_at`

func scanOverride(r pgx.CollectableRow) (*Override, error) {
	var o Override
	var period int64
	var until *time.Time
	var name string
	err := r.Scan(&o.ID, &name, &o.Key, &o.Limit.Count, &period, &o.Limit.Burst, &o.ValidFrom, &until, &o.Enabled, &o.Comment, &o.CreatedBy, &o.Version, &o.UpdatedAt)
	o.Name, o.Limit.Period = Name(name), time.Duration(period)
	if until != nil {
		o.ValidUntil = *until
	}
	return &o, err
}

// findSQL serves every candidate of every transaction with one query through
// ratelimit_overrides_lookup_idx (limit_name, key_pattern, valid_from).
const findSQL = `
SELECT ` + overrideCols + ` FROM unnest($1::TEXT[], $2::TEXT[]) AS q(n, k)
JOIN ratelimit_overrides AS o ON o.limit_name = q.n AND o.key_pattern = q.k
WHERE o.enabled AND o.valid_from <= $3 AND (o.valid_until IS NULL OR o.valid_until > $3)`

// Find implements OverrideSource with one query.
func (s *OverrideStore) Find(ctx context.Context, now time.Time, txns []Transaction) ([]*Override, error) {
	var names, keys []string
	cands := make([][]string, len(txns))
	for i, t := range txns {
		cands[i] = overrideCandidates(t)
		for _, c := range cands[i] {
			names, keys = append(names, string(t.Name)), append(keys, c)
		}
	}
	out := make([]*Override, len(txns))
	if len(keys) == 0 {
		return out, nil
	}
	rows, err := s.db.Pool().Query(ctx, findSQL, names, keys, now)
	if err != nil {
		return nil, fmt.Errorf("ratelimit: looking up overrides for %d buckets: %w", len(txns), err)
	}
	found, err := pgx.CollectRows(rows, scanOverride)
	if err != nil {
		return nil, fmt.Errorf("ratelimit: reading overrides: %w", err)
	}
	byName := map[Name][]*Override{}
	for _, o := range found {
		byName[o.Name] = append(byName[o.Name], o)
	}
	for i, t := range txns {
		out[i] = pickOverride(cands[i], byName[t.Name])
	}
	return out, nil
}

// Get returns one override by id, enabled or not.
func (s *OverrideStore) Get(ctx context.Context, id string) (*Override, error) {
	rows, err := s.db.Pool().Query(ctx, `SELECT `+overrideCols+` FROM ratelimit_overrides WHERE id = $1::UUID`, id)
	if err != nil {
		return nil, fmt.Errorf("ratelimit: reading override %s: %w", id, err)
	}
	o, err := pgx.CollectExactlyOneRow(rows, scanOverride)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("ratelimit: reading override %s: %w", id, err)
	}
	return o, nil
}

// List returns the overrides of one limit name (all names if empty), at
// most limit rows, ordered by name, key and valid_from.
func (s *OverrideStore) List(ctx context.Context, name Name, limit int) ([]*Override, error) {
	rows, err := s.db.Pool().Query(ctx, `SELECT `+overrideCols+` FROM ratelimit_overrides
		WHERE $1 = '' OR limit_name = $1 ORDER BY limit_name, key_pattern, valid_from, id LIMIT $2`, string(name), limit)
	if err != nil {
		return nil, fmt.Errorf("ratelimit: listing overrides: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanOverride)
	if err != nil {
		return nil, fmt.Errorf("ratelimit: listing overrides: %w", err)
	}
	return out, nil
}

// Create validates and inserts a new override (enabled), returning it with
// its id and version 1.
func (s *OverrideStore) Create(ctx context.Context, o Override) (*Override, error) {
	o.Enabled = true
	if err := ValidateOverride(o); err != nil {
		return nil, err
	}
	o.ID, o.Version, o.UpdatedAt = newID(), 1, s.clock.Now().UTC()
	err := s.db.ExecuteTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO ratelimit_overrides
			(id, limit_name, key_pattern, limit_count, period_ns, burst, valid_from, valid_until, enabled, comment, created_by, version, created_at, updated_at)
			VALUES ($1::UUID, $2, $3, $4, $5, $6, $7, $8, true, $9, $10, 1, $11, $11)`,
			o.ID, string(o.Name), o.Key, o.Limit.Count, int64(o.Limit.Period), o.Limit.Burst, o.ValidFrom, nullTime(o.ValidUntil), o.Comment, o.CreatedBy, o.UpdatedAt)
		if err != nil {
			return err
		}
		return s.record(ctx, tx, "create", o.CreatedBy, nil, &o)
	})
	if err != nil {
		return nil, fmt.Errorf("ratelimit: creating override %s %s: %w", o.Name, o.Key, err)
	}
	return &o, nil
}

// Update replaces the override o.ID's limit, validity, enabled flag and
// comment, provided its current version is o.Version; otherwise it returns
// ErrConflict and changes nothing. Every field is written as given: an
// update never changes a field the caller did not pass (in particular it
// does not disable the override unless o.Enabled is false). actor is
// recorded in the audit row. It returns the new state.
func (s *OverrideStore) Update(ctx context.Context, o Override, actor string) (*Override, error) {
	if err := ValidateOverride(o); err != nil {
		return nil, err
	}
	if err := checkIdent(actor, maxCreatedByLen); err != nil || actor == "" {
		return nil, &FieldError{Field: "actor", Err: errors.New("must be 1-128 of letters, digits and ._:/@+-")}
	}
	return s.change(ctx, o.ID, o.Version, "update", actor, func(cur *Override) *Override {
		next := o
		next.CreatedBy = cur.CreatedBy // created_by is the creator, kept
		return &next
	})
}

// Disable turns an override off (version-checked like Update). Disabling
// the last override of a key makes the default apply again.
func (s *OverrideStore) Disable(ctx context.Context, id string, version int64, actor string) (*Override, error) {
	return s.change(ctx, id, version, "disable", actor, func(cur *Override) *Override {
		next := *cur
		next.Enabled = false
		return &next
	})
}

// Delete removes an override (version-checked like Update); the audit row
// keeps its last state.
func (s *OverrideStore) Delete(ctx context.Context, id string, version int64, actor string) error {
	_, err := s.change(ctx, id, version, "delete", actor, func(*Override) *Override { return nil })
	return err
}

// change applies one version-checked change in a transaction with its audit
// and outbox rows. next returns the new state (nil: delete).
func (s *OverrideStore) change(ctx context.Context, id string, version int64, action, actor string, next func(cur *Override) *Override) (*Override, error) {
	if checkIdent(actor, maxCreatedByLen) != nil || actor == "" {
		return nil, &FieldError{Field: "actor", Err: errors.New("must be 1-128 of letters, digits and ._:/@+-")}
	}
	var result *Override
	err := s.db.ExecuteTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+overrideCols+` FROM ratelimit_overrides WHERE id = $1::UUID FOR UPDATE`, id)
		if err != nil {
			return err
		}
		cur, err := pgx.CollectExactlyOneRow(rows, scanOverride)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		if err != nil {
			return err
		}
		if cur.Version != version {
			return &ConflictError{ID: id, Want: version, Current: cur.Version}
		}
		n := next(cur)
		if n == nil {
			if _, err := tx.Exec(ctx, `DELETE FROM ratelimit_overrides WHERE id = $1::UUID AND version = $2`, id, version); err != nil {
				return err
			}
			gone := *cur
			gone.Version = version + 1
			result = nil
			return s.record(ctx, tx, action, actor, cur, &gone)
		}
		n.ID, n.Name, n.Key, n.Version, n.UpdatedAt = cur.ID, cur.Name, cur.Key, version+1, s.clock.Now().UTC()
		tag, err := tx.Exec(ctx, `UPDATE ratelimit_overrides SET limit_count = $3, period_ns = $4, burst = $5,
			valid_from = $6, valid_until = $7, enabled = $8, comment = $9, version = version + 1, updated_at = $10
			WHERE id = $1::UUID AND version = $2`,
			id, version, n.Limit.Count, int64(n.Limit.Period), n.Limit.Burst, n.ValidFrom, nullTime(n.ValidUntil), n.Enabled, n.Comment, n.UpdatedAt)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return &ConflictError{ID: id, Want: version, Current: -1}
		}
		result = n
		return s.record(ctx, tx, action, actor, cur, n)
	})
	if err != nil {
		return nil, fmt.Errorf("ratelimit: %s override %s: %w", action, id, err)
	}
	return result, nil
}

// record writes the audit row and the outbox row of a change.
func (s *OverrideStore) record(ctx context.Context, tx pgx.Tx, action, actor string, before, after *Override) error {
	var bj, aj []byte
	if before != nil {
		bj, _ = json.Marshal(before)
	}
	aj, _ = json.Marshal(after)
	now := s.clock.Now().UTC()
	if _, err := tx.Exec(ctx, `INSERT INTO ratelimit_override_audit (id, override_id, action, actor, version, before_json, after_json, at)
		VALUES ($1::UUID, $2::UUID, $3, $4, $5, $6::JSONB, $7::JSONB, $8)`,
		newID(), after.ID, action, actor, after.Version, nullJSON(bj), string(aj), now); err != nil {
		return fmt.Errorf("writing audit row: %w", err)
	}
	ev, _ := json.Marshal(ChangeEvent{OverrideID: after.ID, Name: after.Name, Key: after.Key, Action: action, Version: after.Version, At: now})
	if _, err := tx.Exec(ctx, `INSERT INTO ratelimit_outbox (id, topic, msg_key, payload, created_at) VALUES ($1::UUID, $2, $3, $4::JSONB, $5)`,
		newID(), ChangesTopic, after.ID, string(ev), now); err != nil {
		return fmt.Errorf("writing outbox row: %w", err)
	}
	return nil
}

// AuditEntry is one row of an override's history.
type AuditEntry struct {
	Action, Actor string
	Version       int64
	At            time.Time
}

// History returns an override's audit trail, oldest first.
func (s *OverrideStore) History(ctx context.Context, id string) ([]AuditEntry, error) {
	rows, err := s.db.Pool().Query(ctx, `SELECT action, actor, version, at FROM ratelimit_override_audit
		WHERE override_id = $1::UUID ORDER BY at, version`, id)
	if err != nil {
		return nil, fmt.Errorf("ratelimit: reading audit of %s: %w", id, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (AuditEntry, error) {
		var e AuditEntry
		return e, r.Scan(&e.Action, &e.Actor, &e.Version, &e.At)
	})
}

// ConflictError says an update named a stale version. It wraps ErrConflict.
type ConflictError struct {
	ID            string
	Want, Current int64
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("override %s is at version %d, not %d: re-read it and retry", e.ID, e.Current, e.Want)
}

// Unwrap makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Unwrap() error { return ErrConflict }

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func nullJSON(b []byte) *string {
	if b == nil {
		return nil
	}
	s := string(b)
	return &s
}
