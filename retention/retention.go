// Package retention prunes what certfleet no longer needs, in bounded
// batches, from one process at a time (a leader lease): idle full rate-limit
// buckets, ended issuance requests, the sealed keys of certificates expired
// past a grace (crypto-shredding) and later their rows, relayed outbox rows,
// old dead-letter replay records, DNS-01 records no sweep could remove, and,
// only when an operator sets an age, audit events.
//
// Every statement is DELETE (or, to destroy a key, UPDATE) of at most Batch
// rows chosen by key through `key IN (SELECT key ... LIMIT n)` with the
// condition repeated outside the subquery, so a row changed meanwhile (a
// bucket spent, a request claimed again) is re-checked and kept; the same
// SQL runs on PostgreSQL and CockroachDB. Batches repeat with a pause until
// one comes back short, the context ends or the lease is no longer held.
// Idle buckets are the exception: no index serves their condition (an index
// on tat_ns would be written by every spend), so each batch reads where the
// next Batch primary keys end and deletes what qualifies in that key range
// (with the condition in the DELETE, so a bucket spent meanwhile stays), and
// the pass ends at the last key.
//
// Which ages are safe, and why, is in docs/architecture.md ("Retention").
package retention

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/internal/clock"
)

// Ages says how old each kind of row must be to go. A zero age turns that
// kind off (for a table CockroachDB's row-level TTL prunes instead, see
// deploy/cockroachdb/retention.sql); start from DefaultAges.
type Ages struct {
	// IdleBuckets: a rate-limit bucket full (its TAT passed) for this long,
	// unchanged for as long and under no penalty, is deleted. A missing
	// bucket is a full one, so nothing any limit decides changes.
	IdleBuckets time.Duration
	// EndedRequests: an issuance request that succeeded, failed or was
	// released, unchanged for this long (or a claim whose lease ran out this
	// long ago), is deleted. At least MinEndedRequests: a record redelivered
	// or replayed later would find no outcome and order again.
	EndedRequests time.Duration
	// KeyGrace: the sealed key of a certificate expired this long is
	// destroyed (the blob emptied; the row stays as a tombstone).
	KeyGrace time.Duration
	// ExpiredCerts: a certificate row expired this long is deleted (at
	// least KeyGrace when both are set).
	ExpiredCerts time.Duration
	// RelayedOutbox: an override change notification published this long ago.
	RelayedOutbox time.Duration
	// DLQReplays: a dead-letter replay record this old (sent, or its claim
	// expired); longer than the dead-letter topic keeps records (30 days).
	DLQReplays time.Duration
	// DNS01Records: a DNS-01 record row expired this long: the workers'
	// sweep removes expired records within minutes, so a row this old is one
	// whose TXT record could not be removed (its value is public anyway).
	DNS01Records time.Duration
	// Audit: an audit event this old. Zero by default: kept for ever.
	Audit time.Duration
}

// Check refuses ages that would lose what is still needed; errors name the
// field (Ages.X).
func (a Ages) Check() error {
	var errs []error
	bad := func(f string, v ...any) { errs = append(errs, fmt.Errorf("retention: config field Ages."+f, v...)) }
	for _, x := range []struct {
		name string
		d    time.Duration
	}{{"IdleBuckets", a.IdleBuckets}, {"EndedRequests", a.EndedRequests}, {"KeyGrace", a.KeyGrace}, {"ExpiredCerts", a.ExpiredCerts},
		{"RelayedOutbox", a.RelayedOutbox}, {"DLQReplays", a.DLQReplays}, {"DNS01Records", a.DNS01Records}, {"Audit", a.Audit}} {
		if x.d < 0 {
			bad("%s is negative (%v); 0 turns it off", x.name, x.d)
		}
	}
	if a.EndedRequests > 0 && a.EndedRequests < MinEndedRequests {
		bad("EndedRequests %v is below %v: a replayed dead letter would find no outcome and order again", a.EndedRequests, MinEndedRequests)
	}
	if a.ExpiredCerts > 0 && a.ExpiredCerts < a.KeyGrace {
		bad("ExpiredCerts %v is below Ages.KeyGrace %v: rows would go before their keys' grace", a.ExpiredCerts, a.KeyGrace)
	}
	return errors.Join(errs...)
}

// MinEndedRequests is the least EndedRequests may be: longer than the
// dead-letter topic keeps a record (30 days), so a replayed request finds
// its outcome.
const MinEndedRequests = 31 * 24 * time.Hour

const day = 24 * time.Hour

// DefaultAges are the ages the binaries start from (and docs/ lists).
func DefaultAges() Ages {
	return Ages{
		IdleBuckets:   day,
		EndedRequests: 60 * day,
		KeyGrace:      30 * day,
		ExpiredCerts:  400 * day,
		RelayedOutbox: 7 * day,
		DLQReplays:    45 * day,
		DNS01Records:  30 * day,
	}
}

// Config configures a Pruner. DB is required; the rest has defaults.
type Config struct {
	DB     *db.DB
	Ages   Ages
	Batch  int           // rows per statement; default 500
	Pause  time.Duration // between batches; default 100ms
	Clock  clock.Clock   // default the wall clock
	Logger *slog.Logger  // default discards
	// Metrics, when set, counts the rows pruned (NewMetrics).
	Metrics *Metrics
}

// Pruner runs the retention statements. Safe for concurrent use, though
// one leader at a time is the point (Run).
type Pruner struct {
	cfg Config
}

// New checks cfg (errors name the field) and returns a Pruner.
func New(cfg Config) (*Pruner, error) {
	var errs []error
	bad := func(f string, a ...any) { errs = append(errs, fmt.Errorf("retention: config field "+f, a...)) }
	if cfg.DB == nil {
		bad("DB is nil")
	}
	if err := cfg.Ages.Check(); err != nil {
		errs = append(errs, err)
	}
	if cfg.Batch < 0 || cfg.Batch > 10_000 {
		bad("Batch %d is not between 1 and 10000 (0: 500)", cfg.Batch)
	}
	if cfg.Pause < 0 {
		bad("Pause is negative (%v)", cfg.Pause)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if cfg.Batch == 0 {
		cfg.Batch = 500
	}
	if cfg.Pause == 0 {
		cfg.Pause = 100 * time.Millisecond
	}
	cfg.Clock = clock.Or(cfg.Clock)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Pruner{cfg: cfg}, nil
}

// kind is one kind of row: its name (the metric label), its age and its
// statement, whose $1 is the cutoff time and $2 the batch size; $3 is now
// when the statement needs it.
type kind struct {
	name string
	age  func(Ages) time.Duration
	sql  string
	args func(now, cutoff time.Time) []any // the arguments after $2; nil: none
	// walk, when set, reads the last key and the number of the next $2
	// primary keys after $1 ('' at first); sql then deletes what qualifies
	// in that range, taking no batch size: $1 is the cutoff, then args,
	// then the range (after the first key, up to and including the second).
	// Both are primary key range scans on either server. The pass ends with
	// a walk that finds fewer than Batch keys.
	walk string
}

// Kind names, the label values of certfleet_retention_rows_total.
const (
	KindIdleBuckets   = "idle_buckets"
	KindEndedRequests = "ended_requests"
	KindKeysShredded  = "keys_shredded"
	KindExpiredCerts  = "expired_certificates"
	KindRelayedOutbox = "relayed_outbox"
	KindDLQReplays    = "dlq_replays"
	KindDNS01Records  = "dns01_records"
	KindAudit         = "audit_events"
)

// kinds run in this order: keys are destroyed before rows that hold them go.
var kinds = []kind{
	{KindIdleBuckets, func(a Ages) time.Duration { return a.IdleBuckets }, `
DELETE FROM ratelimit_buckets
 WHERE bucket_key > $4 AND bucket_key <= $5
   AND tat_ns <= $2 AND penalty_until_ns <= $3 AND updated_at < $1`,
		// Full since the cutoff: its TAT is at or before it (Unix ns, as the
		// limiter keeps it), and no penalty runs now.
		func(now, cutoff time.Time) []any { return []any{cutoff.UnixNano(), now.UnixNano()} }, `
SELECT max(bucket_key), count(*)
  FROM (SELECT bucket_key FROM ratelimit_buckets WHERE bucket_key > $1 ORDER BY bucket_key LIMIT $2) AS w`},
	{KindEndedRequests, func(a Ages) time.Duration { return a.EndedRequests }, `
DELETE FROM issuance_requests
 WHERE request_id IN (SELECT request_id FROM issuance_requests
                       WHERE updated_at < $1 AND (state IN ('succeeded', 'failed', 'released') OR (state = 'ordering' AND owner_until < $1))
                       LIMIT $2)
   AND updated_at < $1 AND (state IN ('succeeded', 'failed', 'released') OR (state = 'ordering' AND owner_until < $1))`, nil, ""},
	{KindKeysShredded, func(a Ages) time.Duration { return a.KeyGrace }, `
UPDATE issued_certificates SET sealed_key = ''::BYTEA
 WHERE id IN (SELECT id FROM issued_certificates WHERE not_after < $1 AND sealed_key <> ''::BYTEA LIMIT $2)
   AND not_after < $1`, nil, ""},
	{KindExpiredCerts, func(a Ages) time.Duration { return a.ExpiredCerts }, `
DELETE FROM issued_certificates
 WHERE id IN (SELECT id FROM issued_certificates WHERE not_after < $1 LIMIT $2)
   AND not_after < $1`, nil, ""},
	{KindRelayedOutbox, func(a Ages) time.Duration { return a.RelayedOutbox }, `
DELETE FROM ratelimit_outbox
 WHERE id IN (SELECT id FROM ratelimit_outbox WHERE published_at < $1 LIMIT $2)
   AND published_at < $1`, nil, ""},
	{KindDLQReplays, func(a Ages) time.Duration { return a.DLQReplays }, `
DELETE FROM dlq_replays
 WHERE (dlq_topic, dlq_partition, dlq_offset) IN (
        SELECT dlq_topic, dlq_partition, dlq_offset FROM dlq_replays
         WHERE replayed_at < $1 AND (sent_at IS NOT NULL OR claim_until < $1) LIMIT $2)
   AND replayed_at < $1 AND (sent_at IS NOT NULL OR claim_until < $1)`, nil, ""},
	{KindDNS01Records, func(a Ages) time.Duration { return a.DNS01Records }, `
DELETE FROM acme_dns01_records
 WHERE (name, value) IN (SELECT name, value FROM acme_dns01_records WHERE expires_at < $1 LIMIT $2)
   AND expires_at < $1`, nil, ""},
	{KindAudit, func(a Ages) time.Duration { return a.Audit }, `
DELETE FROM audit_events
 WHERE id IN (SELECT id FROM audit_events WHERE at < $1 LIMIT $2)
   AND at < $1`, nil, ""},
}

// Report is what one pass pruned, rows by kind (kinds turned off absent).
type Report map[string]int64

// ErrNotLeader means the pass stopped because the lease was lost (or never
// held); what it pruned before is in its Report.
var ErrNotLeader = errors.New("retention: not the leader")

// Once runs one pass: every kind whose age is set, in batches, while
// stillLeader says the lease is held (nil: always, for tests and one-off
// runs). It stops at the first error, returning what it pruned so far.
func (p *Pruner) Once(ctx context.Context, stillLeader func(context.Context) bool) (Report, error) {
	rep := Report{}
	for _, k := range kinds {
		age := k.age(p.cfg.Ages)
		if age <= 0 {
			continue
		}
		after := "" // walk: the last key scanned so far
		for {
			if stillLeader != nil && !stillLeader(ctx) {
				return rep, ErrNotLeader
			}
			now := p.cfg.Clock.Now()
			cutoff := now.Add(-age)
			args := []any{cutoff, p.cfg.Batch}
			if k.args != nil {
				args = append(args, k.args(now, cutoff)...)
			}
			n, done, err := p.batch(ctx, k, args, &after)
			if err != nil {
				return rep, fmt.Errorf("retention: pruning %s older than %v: %w", k.name, age, err)
			}
			rep[k.name] += n
			if p.cfg.Metrics != nil && n > 0 {
				p.cfg.Metrics.Rows.WithLabelValues(k.name).Add(float64(n))
			}
			if done {
				break
			}
			if err := clock.Sleep(ctx, p.cfg.Pause); err != nil {
				return rep, err
			}
		}
	}
	return rep, nil
}

// batch runs one batch of k and returns how many rows it pruned and whether
// the kind is done (a short batch; for a walk, one that scanned fewer keys
// than Batch). A walk continues after *after and moves it to the last key
// it scanned.
func (p *Pruner) batch(ctx context.Context, k kind, args []any, after *string) (n int64, done bool, err error) {
	if k.walk == "" {
		tag, err := p.cfg.DB.Pool().Exec(ctx, k.sql, args...)
		if err != nil {
			return 0, false, err
		}
		return tag.RowsAffected(), tag.RowsAffected() < int64(p.cfg.Batch), nil
	}
	var last *string
	var scanned int64
	if err := p.cfg.DB.Pool().QueryRow(ctx, k.walk, *after, p.cfg.Batch).Scan(&last, &scanned); err != nil {
		return 0, false, err
	}
	if last == nil {
		return 0, true, nil
	}
	rangeArgs := append([]any{args[0]}, args[2:]...) // without the batch size
	tag, err := p.cfg.DB.Pool().Exec(ctx, k.sql, append(rangeArgs, *after, *last)...)
	if err != nil {
		return 0, false, err
	}
	*after = *last
	return tag.RowsAffected(), scanned < int64(p.cfg.Batch), nil
}

// Metrics are the retention job's Prometheus metrics.
type Metrics struct {
	Rows    *prometheus.CounterVec // certfleet_retention_rows_total{kind}
	LastRun prometheus.Gauge       // certfleet_retention_last_success_timestamp_seconds
}

// NewMetrics creates the metrics and registers them with reg unless nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Rows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "certfleet_retention_rows_total", Help: "Rows pruned (or, for keys_shredded, sealed keys destroyed) by the retention job, by kind.",
		}, []string{"kind"}),
		LastRun: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "certfleet_retention_last_success_timestamp_seconds", Help: "When this process last finished a whole retention pass as leader (Unix seconds).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.Rows, m.LastRun)
	}
	return m
}
