package ratelimit

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/certfleet/certfleet/db"
)

// Publisher sends one message to a topic. The events package's Kafka
// producer satisfies it; it must return only once the broker has the message
// (acks=all) so the relay can mark the outbox row published.
type Publisher interface {
	Publish(ctx context.Context, topic, key string, value []byte) error
}

// Relay publishes ratelimit_outbox rows in creation order and marks them
// published. Delivery is at least once: a crash between publishing and
// marking re-publishes, and consumers (OverrideCache.HandleChange) are
// idempotent. Running several relays is safe but duplicates messages.
type Relay struct {
	db  *db.DB
	pub Publisher
	// Batch is how many rows one pass publishes (default 100).
	Batch int
}

// NewRelay returns a relay from d's outbox to pub.
func NewRelay(d *db.DB, pub Publisher) *Relay { return &Relay{db: d, pub: pub, Batch: 100} }

type outboxRow struct {
	id, topic, key string
	payload        []byte
}

// RelayOnce publishes up to Batch pending rows and returns how many it
// published. A publish error stops the pass; the rows not yet marked are
// retried next time.
func (r *Relay) RelayOnce(ctx context.Context) (int, error) {
	rows, err := r.db.Pool().Query(ctx, `SELECT id::TEXT, topic, msg_key, payload::TEXT FROM ratelimit_outbox
		WHERE published_at IS NULL ORDER BY created_at, id LIMIT $1`, max(r.Batch, 1))
	if err != nil {
		return 0, fmt.Errorf("ratelimit: reading outbox: %w", err)
	}
	pending, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (outboxRow, error) {
		var o outboxRow
		var p string
		err := row.Scan(&o.id, &o.topic, &o.key, &p)
		o.payload = []byte(p)
		return o, err
	})
	if err != nil {
		return 0, fmt.Errorf("ratelimit: reading outbox: %w", err)
	}
	var done []string
	var pubErr error
	for _, o := range pending {
		if pubErr = r.pub.Publish(ctx, o.topic, o.key, o.payload); pubErr != nil {
			pubErr = fmt.Errorf("ratelimit: publishing outbox row %s to %s: %w", o.id, o.topic, pubErr)
			break
		}
		done = append(done, o.id)
	}
	if len(done) > 0 {
		if _, err := r.db.Pool().Exec(ctx, `UPDATE ratelimit_outbox SET published_at = now() WHERE id = ANY($1::UUID[])`, done); err != nil {
			return 0, fmt.Errorf("ratelimit: marking %d outbox rows published: %w", len(done), err)
		}
	}
	return len(done), pubErr
}

// Run relays every interval until ctx ends, returning ctx's error. Errors of
// a pass are passed to onErr (if not nil) and retried next pass.
func (r *Relay) Run(ctx context.Context, interval time.Duration, onErr func(error)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for {
			n, err := r.RelayOnce(ctx)
			if err != nil && onErr != nil && ctx.Err() == nil {
				onErr(err)
			}
			if err != nil || n < max(r.Batch, 1) {
				break
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
