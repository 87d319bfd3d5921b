package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/certfleet/certfleet/db"
)

// DBStore is the fleet-wide Store in the ratelimit_buckets table, on
// PostgreSQL or CockroachDB.
//
// A single-bucket spend is one INSERT ... ON CONFLICT DO UPDATE statement that
// evaluates the GCRA in SQL and needs no client-side retry. Concurrent
// single-bucket spends of the same key, limit and cost inside one process are
// coalesced: while one statement for the key is in flight, later callers
// queue, and the queue is then decided by one statement that grants as many
// of them, in arrival order, as fit. A multi-bucket spend (and Book) is one
// round trip: a pipelined batch of two statements that the server runs as
// one implicit transaction, the first locking every key in sorted order, the
// second deciding the batch in SQL and writing it, all or nothing. Up to
// ManyRunners such round trips are in flight per store; batches arriving
// meanwhile queue, and each round trip decides up to MaxCoalesce queued
// batches with disjoint keys together, each all or nothing on its own.
type DBStore struct {
	db   *db.DB
	pool *pgxpool.Pool

	// MaxCoalesce caps how many queued spends one statement decides (default
	// 64), single-bucket spends of one key or multi-bucket batches. Set before
	// first use.
	MaxCoalesce int
	// ManyRunners caps how many multi-bucket statements this store has in
	// flight at once (default 4); batches arriving meanwhile queue and are
	// decided together. Set before first use.
	ManyRunners int

	mu     sync.Mutex
	queues map[coalesceKey]*spendQueue
	many   manyQueue
}

var _ Store = (*DBStore)(nil)

// NewDBStore returns a store over d. The ratelimit_* tables must exist
// (schema.Migrate).
func NewDBStore(d *db.DB) *DBStore {
	return &DBStore{db: d, pool: d.Pool(), MaxCoalesce: 64, ManyRunners: 4, queues: map[coalesceKey]*spendQueue{}}
}

// Spend implements Store.
func (s *DBStore) Spend(ctx context.Context, now time.Time, reqs []Request) ([]Decision, error) {
	if err := validateRequests(reqs); err != nil {
		return nil, err
	}
	if len(reqs) == 0 {
		return nil, nil
	}
	if len(reqs) == 1 && reqs[0].Mode == ModeSpend {
		d, err := s.spendCoalesced(ctx, nanos(now), reqs[0])
		if err != nil {
			return nil, err
		}
		return []Decision{d}, nil
	}
	if len(reqs) == 1 && reqs[0].Mode == ModeSpendNoCheck {
		ds, err := s.spendSingle(ctx, nanos(now), reqs[0], 1)
		if err != nil {
			return nil, err
		}
		return ds, nil
	}
	checkOnly := true
	for _, r := range reqs {
		checkOnly = checkOnly && r.Mode == ModeCheck
	}
	if checkOnly {
		return s.check(ctx, nanos(now), reqs)
	}
	c := &manyCall{now: nanos(now), reqs: reqs}
	if err := s.spendMany(ctx, c); err != nil {
		return nil, err
	}
	return c.ds, c.err
}

// Book implements Store, in one round trip as a multi-bucket spend.
func (s *DBStore) Book(ctx context.Context, now time.Time, reqs []Request, latest time.Time) ([]Decision, time.Time, error) {
	if err := validateRequests(reqs); err != nil {
		return nil, time.Time{}, err
	}
	if len(reqs) == 0 {
		return nil, now, nil
	}
	c := &manyCall{now: nanos(now), reqs: reqs, book: true, latest: nanos(latest)}
	if err := s.spendMany(ctx, c); err != nil {
		return nil, time.Time{}, err
	}
	if c.err != nil || c.at == 0 {
		return c.ds, time.Time{}, c.err
	}
	return c.ds, time.Unix(0, c.at), nil
}

// spendSingleSQL decides up to $5 spends of cost increment $3 in one
// statement. The update path counts how many of the $5 prefixes fit, or
// grants all of them when $6 (no check) is set, advances the TAT by that
// many increments and records the count in last_granted for RETURNING. The
// j-th spend fits when, after the j-1 before it, the bucket allows it at now
// ($2), no penalty running: the first spend is checked against
// GREATEST(tat, now), and each later one against the TAT the ones before
// recorded at now+lead ($9, see Request.Lead). The insert path (a new
// bucket) is decided by the client and passed as $7 (granted) and $8 (TAT).
// Only +, -, *, GREATEST, LEAST and comparisons on INT8: no division, whose
// semantics differ between PostgreSQL and CockroachDB.
const spendSingleSQL = `
INSERT INTO ratelimit_buckets AS b (bucket_key, tat_ns, penalty_until_ns, last_granted, updated_at)
VALUES ($1, $8::INT8, 0, $7::INT8, now())
ON CONFLICT (bucket_key) DO UPDATE SET
  tat_ns = GREATEST(b.tat_ns, $2::INT8 + $9::INT8 * LEAST(` + grantedSQL + `, 1)) + $3::INT8 * ` + grantedSQL + `,
  last_granted = ` + grantedSQL + `,
  updated_at = now()
RETURNING tat_ns, penalty_until_ns, last_granted`

const grantedSQL = `(
    SELECT count(*) FROM generate_series(1, $5::INT8) AS g(j)
    WHERE $6::BOOL OR (b.penalty_until_ns <= $2::INT8 AND
      GREATEST(b.tat_ns, $2::INT8 + CASE WHEN g.j = 1 THEN 0 ELSE $9::INT8 END) + g.j * $3::INT8 - $4::INT8 <= $2::INT8))`

// spendSingle spends r.Cost for m callers asking for the same thing in one
// statement and returns one decision per caller, in arrival order: the
// first ones that fit are granted.
func (s *DBStore) spendSingle(ctx context.Context, now int64, r Request, m int) ([]Decision, error) {
	inc := r.Limit.Interval() * r.Cost
	burstOffset := r.Limit.BurstOffset()
	noCheck := r.Mode == ModeSpendNoCheck
	lead := int64(r.Lead)
	insGranted := int64(0) // for a fresh bucket, whose TAT is now: the same condition as grantedSQL
	for j := int64(1); j <= int64(m); j++ {
		if noCheck || j*inc <= burstOffset && (j == 1 || lead+j*inc <= burstOffset) {
			insGranted = j
		}
	}
	insTAT := now
	if insGranted > 0 {
		insTAT = now + lead + insGranted*inc
	}
	var tat, penalty, granted int64
	err := s.pool.QueryRow(ctx, spendSingleSQL, r.Key, now, inc, burstOffset, int64(m), noCheck, insGranted, insTAT, lead).
		Scan(&tat, &penalty, &granted)
	if err != nil {
		return nil, fmt.Errorf("ratelimit: spending bucket %s: %w", r.Key, err)
	}
	ds := make([]Decision, m)
	base := tat - granted*inc
	for i := range ds {
		if int64(i) < granted {
			after := base + int64(i+1)*inc
			ds[i] = describeAllowed(r.Limit.Interval(), burstOffset, after, now, after)
			continue
		}
		d := withPenalty(decide(r.Limit, tat, now, r.Cost, lead, true), tat, now, penalty)
		if d.Allowed { // only if the server's clock arithmetic disagreed; never report a spend that did not happen
			d = Decision{Allowed: false, RetryIn: time.Duration(r.Limit.Interval()), ResetIn: time.Duration(max(tat-now, 0)), newTAT: tat}
		}
		ds[i] = d
	}
	return ds, nil
}

// check reads buckets without locking or writing.
func (s *DBStore) check(ctx context.Context, now int64, reqs []Request) ([]Decision, error) {
	keys := make([]string, len(reqs))
	for i, r := range reqs {
		keys[i] = r.Key
	}
	state, err := s.read(ctx, s.pool, `SELECT bucket_key, tat_ns, penalty_until_ns FROM ratelimit_buckets WHERE bucket_key = ANY($1::TEXT[])`, keys)
	if err != nil {
		return nil, fmt.Errorf("ratelimit: checking %d buckets: %w", len(reqs), err)
	}
	ds := make([]Decision, len(reqs))
	for i, r := range reqs {
		st := state[r.Key]
		ds[i] = evaluate(r, st[0], st[1], now)
	}
	return ds, nil
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func (s *DBStore) read(ctx context.Context, q querier, sql string, args ...any) (map[string][2]int64, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	out := map[string][2]int64{}
	var k string
	var tat, pen int64
	_, err = pgx.ForEachRow(rows, []any{&k, &tat, &pen}, func() error {
		out[k] = [2]int64{tat, pen}
		return nil
	})
	return out, err
}

// lockBatchSQL creates missing buckets (TAT 0: full) and locks every
// existing one, in sorted order so that concurrent batches cannot deadlock.
// An ON CONFLICT DO UPDATE whose WHERE is false locks the conflicting row
// without writing a new version of it.
const lockBatchSQL = `
INSERT INTO ratelimit_buckets AS b (bucket_key, tat_ns, penalty_until_ns, last_granted, updated_at)
SELECT k, 0, 0, 0, now() FROM unnest($1::TEXT[]) AS u(k) ORDER BY k
ON CONFLICT (bucket_key) DO UPDATE SET last_granted = b.last_granted WHERE false`

// decideSQL decides one or more batches in SQL and writes them, each all
// or nothing on its own, on rows lockBatchSQL has just created or locked in
// the same implicit transaction. One row per request: key, cost*interval,
// burst offset, mode, lead, the batch it belongs to (g), that batch's size,
// now, whether it books, and its latest slot (0: none); the batches' keys are
// disjoint. Per batch, the decision is decideBatch's: every request fits at
// now (ModeSpendNoCheck always does; a penalty denies the others); else,
// when booking and no denied bucket is penalised, the slot is the latest
// time a ModeSpend or ModeCheck bucket allows its cost, within latest. Every
// spend bucket of a batch that passes gets GREATEST(tat, slot + lead) + inc
// (the slot is now when all fit). It returns each bucket's state before the
// statement and whether it was written. Only +, -, *, GREATEST,
// comparisons and aggregates on INT8: the same arithmetic as gcra.go.
const decideSQL = `
WITH r AS (
  SELECT * FROM unnest($1::TEXT[], $2::INT8[], $3::INT8[], $4::INT8[], $5::INT8[], $6::INT8[], $7::INT8[], $8::INT8[], $9::BOOL[], $10::INT8[])
    AS r(k, inc, bo, mode, lead, g, n, now, book, latest)
), d AS (
  SELECT r.k, r.inc, r.mode, r.lead, r.g, r.n, r.now, r.book, r.latest, b.tat_ns AS tat, b.penalty_until_ns AS pen,
    (r.mode = 1 OR (b.penalty_until_ns <= r.now AND GREATEST(b.tat_ns, r.now) + r.inc - r.bo <= r.now)) AS ok,
    CASE WHEN r.mode = 1 THEN r.now ELSE GREATEST(b.tat_ns, r.now) + r.inc - r.bo END AS allow_at
  FROM r JOIN ratelimit_buckets AS b ON b.bucket_key = r.k
  WHERE b.bucket_key = ANY($1::TEXT[]) -- an index scan, whatever the size of the batch
), e AS (
  SELECT k, tat, pen, inc, mode, lead, book, latest,
    count(*) OVER g = n AS present, bool_and(ok) OVER g AS all_ok, bool_and(ok OR pen <= now) OVER g AS bookable,
    GREATEST(now, max(allow_at) OVER g) AS slot
  FROM d WINDOW g AS (PARTITION BY g)
), w AS (
  UPDATE ratelimit_buckets AS b SET tat_ns = GREATEST(e.tat, e.slot + e.lead) + e.inc, updated_at = now()
  FROM e
  WHERE b.bucket_key = e.k AND e.mode <> 2 AND e.present
    AND (e.all_ok OR (e.book AND e.bookable AND (e.latest = 0 OR e.slot <= e.latest)))
  RETURNING b.bucket_key
)
SELECT e.k, e.tat, e.pen, e.k IN (SELECT bucket_key FROM w) FROM e`

// manyCall is one multi-bucket spend or Book handed to decideMany.
type manyCall struct {
	now    int64
	reqs   []Request
	book   bool
	latest int64

	ds  []Decision
	at  int64
	err error
}

// decideMany decides calls, whose keys are disjoint, in one round trip: a
// pipelined batch of lockBatchSQL over all their keys and decideSQL, run by
// the server as one implicit transaction (retried whole on a serialization
// failure or deadlock). Each call's decisions are computed in Go from the
// state decideSQL read, with the same arithmetic; a disagreement about
// what was written is that call's error (an unknown outcome), never a wrong
// answer. It returns an error only when the round trip failed.
func (s *DBStore) decideMany(ctx context.Context, calls []*manyCall) error {
	var keys []string
	var incs, bos, modes, leads, gs, ns, nows, latests []int64
	var books []bool
	for g, c := range calls {
		for _, r := range c.reqs {
			keys = append(keys, r.Key)
			incs = append(incs, r.Limit.Interval()*r.Cost)
			bos = append(bos, r.Limit.BurstOffset())
			modes = append(modes, int64(r.Mode))
			leads = append(leads, int64(r.Lead))
			gs, ns, nows = append(gs, int64(g)), append(ns, int64(len(c.reqs))), append(nows, c.now)
			books, latests = append(books, c.book), append(latests, c.latest)
		}
	}
	sorted := slices.Sorted(slices.Values(keys))
	var state map[string]bucketState
	var written map[string]bool
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		b := &pgx.Batch{}
		b.Queue(lockBatchSQL, sorted)
		b.Queue(decideSQL, keys, incs, bos, modes, leads, gs, ns, nows, books, latests)
		state, written, err = s.sendDecide(ctx, b, len(keys))
		if err == nil || !db.Retryable(err) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("ratelimit: spending %d buckets (%s...): %w", len(keys), sorted[0], err)
	}
	for _, c := range calls {
		sts := make([]bucketState, len(c.reqs))
		var wrote, writes int
		for i, r := range c.reqs {
			sts[i] = state[r.Key]
			if written[r.Key] {
				wrote++
			}
			if r.Mode != ModeCheck {
				writes++
			}
		}
		ds, at, write := decideBatch(c.reqs, sts, c.now, c.book, c.latest)
		if (write && wrote != writes) || (!write && wrote != 0) {
			c.err = fmt.Errorf("ratelimit: the database wrote %d buckets where the limiter's arithmetic says %v for %d: outcome unknown", wrote, write, writes)
			continue
		}
		c.ds, c.at = ds, at
	}
	return nil
}

func (s *DBStore) sendDecide(ctx context.Context, b *pgx.Batch, n int) (map[string]bucketState, map[string]bool, error) {
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return nil, nil, fmt.Errorf("locking: %w", err)
	}
	rows, err := br.Query()
	if err != nil {
		return nil, nil, fmt.Errorf("deciding: %w", err)
	}
	state := make(map[string]bucketState, n)
	written := make(map[string]bool, n)
	var k string
	var st bucketState
	var w bool
	if _, err := pgx.ForEachRow(rows, []any{&k, &st.tat, &st.penaltyUntil, &w}, func() error {
		state[k], written[k] = st, w
		return nil
	}); err != nil {
		return nil, nil, fmt.Errorf("deciding: %w", err)
	}
	if err := br.Close(); err != nil {
		return nil, nil, fmt.Errorf("committing: %w", err)
	}
	if len(state) != n {
		return nil, nil, fmt.Errorf("deciding: %d of %d buckets read", len(state), n)
	}
	return state, written, nil
}

// runTx runs fn in one transaction. On CockroachDB it is db.ExecuteTx
// (SERIALIZABLE with the server's retry protocol). On PostgreSQL it is READ
// COMMITTED: fn locks every row it writes, in sorted order, so it needs no
// snapshot isolation, and SERIALIZABLE would abort most transactions on a hot
// bucket. A detected deadlock is retried a few times.
func (s *DBStore) runTx(ctx context.Context, fn func(pgx.Tx) error) error {
	if s.db.Kind() == db.Cockroach {
		return s.db.ExecuteTx(ctx, fn)
	}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		err = pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, fn)
		if err == nil || !db.Retryable(err) {
			return err
		}
	}
	return err
}

const refundSQL = `
UPDATE ratelimit_buckets AS b SET tat_ns = GREATEST(b.tat_ns - u.inc, $3::INT8), updated_at = now()
FROM unnest($1::TEXT[], $2::INT8[]) AS u(k, inc)
WHERE b.bucket_key = u.k AND b.tat_ns > $3::INT8`

// Refund implements Store. A one-key refund is one statement; a batch is a
// short transaction that first locks its keys in sorted order (an UPDATE
// ... FROM locks in no defined order and deadlocks against other batches).
func (s *DBStore) Refund(ctx context.Context, now time.Time, reqs []Request) error {
	if err := validateRequests(reqs); err != nil {
		return err
	}
	reqs = slices.Clone(reqs)
	slices.SortFunc(reqs, func(a, b Request) int { return strings.Compare(a.Key, b.Key) })
	keys := make([]string, len(reqs))
	incs := make([]int64, len(reqs))
	for i, r := range reqs {
		keys[i], incs[i] = r.Key, r.Limit.Interval()*r.Cost
	}
	var err error
	if len(reqs) == 1 {
		_, err = s.pool.Exec(ctx, refundSQL, keys, incs, nanos(now))
	} else {
		err = s.runTx(ctx, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT bucket_key FROM ratelimit_buckets WHERE bucket_key = ANY($1::TEXT[]) ORDER BY bucket_key FOR UPDATE`, keys); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, refundSQL, keys, incs, nanos(now))
			return err
		})
	}
	if err != nil {
		return fmt.Errorf("ratelimit: refunding %d buckets: %w", len(reqs), err)
	}
	return nil
}

const penalizeSQL = `
INSERT INTO ratelimit_buckets AS b (bucket_key, tat_ns, penalty_until_ns, last_granted, updated_at)
VALUES ($1, 0, $2::INT8, 0, now())
ON CONFLICT (bucket_key) DO UPDATE SET
  penalty_until_ns = CASE WHEN $2::INT8 = 0 THEN 0 ELSE GREATEST(b.penalty_until_ns, $2::INT8) END,
  updated_at = now()`

// Penalize implements Store.
func (s *DBStore) Penalize(ctx context.Context, key string, until time.Time) error {
	if key == "" || len(key) > 1024 {
		return fmt.Errorf("%w: penalty key must be 1-1024 bytes", ErrInvalidRequest)
	}
	if _, err := s.pool.Exec(ctx, penalizeSQL, key, nanos(until)); err != nil {
		return fmt.Errorf("ratelimit: recording penalty for %s: %w", key, err)
	}
	return nil
}

// Penalty is an active CA penalty on one bucket.
type Penalty struct {
	Key   string
	Until time.Time
}

// Penalties lists the penalties active at now, soonest ending first, at most
// limit of them (for admin tools).
func (s *DBStore) Penalties(ctx context.Context, now time.Time, limit int) ([]Penalty, error) {
	rows, err := s.pool.Query(ctx, `SELECT bucket_key, penalty_until_ns FROM ratelimit_buckets
		WHERE penalty_until_ns > $1::INT8 ORDER BY penalty_until_ns, bucket_key LIMIT $2`, nanos(now), limit)
	if err != nil {
		return nil, fmt.Errorf("ratelimit: listing penalties: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Penalty, error) {
		var p Penalty
		var until int64
		err := r.Scan(&p.Key, &until)
		p.Until = time.Unix(0, until)
		return p, err
	})
}

// ClearPenalty lifts the penalty on key at once, for an operator who knows
// the CA's block is over. It reports whether a penalty was active at now;
// clearing a key without one is not an error.
func (s *DBStore) ClearPenalty(ctx context.Context, now time.Time, key string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE ratelimit_buckets SET penalty_until_ns = 0, updated_at = now()
		WHERE bucket_key = $1 AND penalty_until_ns > $2::INT8`, key, nanos(now))
	if err != nil {
		return false, fmt.Errorf("ratelimit: clearing penalty of %s: %w", key, err)
	}
	return tag.RowsAffected() > 0, nil
}

// BucketState is one bucket as stored, for admin tools.
type BucketState struct {
	Key string
	// TAT is the theoretical arrival time; a TAT at or before now (or zero)
	// means the bucket is full.
	TAT time.Time
	// PenaltyUntil is when the CA's block ends; zero when there is none.
	PenaltyUntil time.Time
	UpdatedAt    time.Time
}

// Bucket reads one bucket without locking it. found is false when the
// bucket was never written, which means full and without penalty.
func (s *DBStore) Bucket(ctx context.Context, key string) (st BucketState, found bool, err error) {
	var tat, pen int64
	err = s.pool.QueryRow(ctx, `SELECT tat_ns, penalty_until_ns, updated_at FROM ratelimit_buckets WHERE bucket_key = $1`, key).
		Scan(&tat, &pen, &st.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return BucketState{Key: key}, false, nil
	}
	if err != nil {
		return BucketState{}, false, fmt.Errorf("ratelimit: reading bucket %s: %w", key, err)
	}
	st.Key = key
	if tat != 0 {
		st.TAT = time.Unix(0, tat)
	}
	if pen != 0 {
		st.PenaltyUntil = time.Unix(0, pen)
	}
	return st, true, nil
}
