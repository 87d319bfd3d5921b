// Package dlqreplay remembers which dead letters `certfleet dlq replay` sent
// back, in table dlq_replays (schema/migrations/0007_dlq_replays.sql), so a
// record is never replayed twice (`--all` run again sends nothing new) and
// who replayed what, when and to which topic stays on record.
//
// A replay claims its records (Claim) before writing them, marks them sent
// (Sent) after the write succeeded, and forgets its claims (Forget) when the
// write failed. A run that dies between claim and write leaves unsent
// claims; they expire at their claim_until and may then be claimed again.
package dlqreplay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/certfleet/certfleet/db"
)

// Record is one dead letter to replay: its DLQ position and where it goes.
type Record struct {
	DLQTopic    string
	Partition   int
	Offset      int64
	Destination string // the requests or retry topic
	EventID     string // the record's ce_id
	ValueSHA256 string // hex SHA-256 of the record's value
}

// Previous describes an earlier replay of a record.
type Previous struct {
	Destination string
	By          string
	At          time.Time
	Sent        bool // the write succeeded; false: claimed by a run that has not finished (or died)
}

// Ledger reads and writes dlq_replays. Safe for concurrent use.
type Ledger struct {
	d *db.DB
}

// New returns the ledger on d (migrated to 0007 or later).
func New(d *db.DB) *Ledger { return &Ledger{d: d} }

// Run is one replay: its id and who runs it.
type Run struct {
	ID uuid.UUID
	By string
}

// NewRun starts a replay run by by (e.g. user@host).
func NewRun(by string) Run { return Run{ID: uuid.New(), By: by} }

// Claim records r as replayed by run at now, the claim valid until
// claimUntil, when no earlier replay holds it: never replayed, an unsent
// claim that expired, or a row about another record at that position (its
// value's hash differs: the DLQ topic was re-created). ok is false when an
// earlier replay holds it; prev then describes that replay.
func (l *Ledger) Claim(ctx context.Context, run Run, r Record, now, claimUntil time.Time) (ok bool, prev Previous, err error) {
	var id uuid.UUID
	err = l.d.Pool().QueryRow(ctx, `
INSERT INTO dlq_replays (dlq_topic, dlq_partition, dlq_offset, destination, event_id, value_sha256,
                         replay_id, replayed_by, replayed_at, claim_until)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO UPDATE SET
    destination = excluded.destination, event_id = excluded.event_id, value_sha256 = excluded.value_sha256,
    replay_id = excluded.replay_id, replayed_by = excluded.replayed_by, replayed_at = excluded.replayed_at,
    claim_until = excluded.claim_until, sent_at = NULL
WHERE (dlq_replays.sent_at IS NULL AND dlq_replays.claim_until < excluded.replayed_at)
   OR dlq_replays.value_sha256 <> excluded.value_sha256
RETURNING replay_id`,
		r.DLQTopic, int64(r.Partition), r.Offset, r.Destination, r.EventID, r.ValueSHA256,
		run.ID, run.By, now.UTC(), claimUntil.UTC()).Scan(&id)
	if err == nil {
		return true, Previous{}, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		var pg *pgconn.PgError
		if errors.As(err, &pg) && pg.Code == "42P01" { // undefined_table
			return false, Previous{}, fmt.Errorf("dlqreplay: table dlq_replays is missing: apply the migrations first ('certfleet migrate'): %w", err)
		}
		return false, Previous{}, fmt.Errorf("dlqreplay: claiming %s/%d@%d: %w", r.DLQTopic, r.Partition, r.Offset, err)
	}
	var sent *time.Time
	err = l.d.Pool().QueryRow(ctx, `
SELECT destination, replayed_by, replayed_at, sent_at FROM dlq_replays
WHERE dlq_topic = $1 AND dlq_partition = $2 AND dlq_offset = $3`,
		r.DLQTopic, int64(r.Partition), r.Offset).Scan(&prev.Destination, &prev.By, &prev.At, &sent)
	if err != nil {
		return false, Previous{}, fmt.Errorf("dlqreplay: reading the replay of %s/%d@%d: %w", r.DLQTopic, r.Partition, r.Offset, err)
	}
	prev.Sent = sent != nil
	return false, prev, nil
}

// Sent marks every record run claimed as sent at now.
func (l *Ledger) Sent(ctx context.Context, run Run, now time.Time) error {
	if _, err := l.d.Pool().Exec(ctx, `UPDATE dlq_replays SET sent_at = $2 WHERE replay_id = $1 AND sent_at IS NULL`, run.ID, now.UTC()); err != nil {
		return fmt.Errorf("dlqreplay: marking replay %s sent: %w", run.ID, err)
	}
	return nil
}

// Forget drops run's unsent claims (its write failed), so a later replay
// sends those records.
func (l *Ledger) Forget(ctx context.Context, run Run) error {
	if _, err := l.d.Pool().Exec(ctx, `DELETE FROM dlq_replays WHERE replay_id = $1 AND sent_at IS NULL`, run.ID); err != nil {
		return fmt.Errorf("dlqreplay: forgetting replay %s: %w", run.ID, err)
	}
	return nil
}
