package db

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	crdbpgx "github.com/cockroachdb/cockroach-go/v2/crdb/crdbpgxv5"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrTooManyRetries means ExecuteTx gave up after MaxTxAttempts serialization
// failures; the last failure is wrapped.
var ErrTooManyRetries = errors.New("db: transaction retried too often")

// ExecuteTx runs fn in a SERIALIZABLE transaction and commits it, retrying
// the whole transaction on serialization failures. fn may therefore run more
// than once: it must have no effects outside the transaction and must return
// every error it sees (swallowing a failed statement leaves the transaction
// aborted, and the commit then fails with pgx.ErrTxCommitRollback).
//
// On CockroachDB it is cockroach-go's crdbpgx.ExecuteTx (savepoint-based
// retry, the server's recommended protocol). On PostgreSQL that protocol does
// not work: a savepoint retry keeps the failed snapshot and never succeeds,
// and a serialization failure raised at COMMIT went unreported in our
// measurements. So on PostgreSQL ExecuteTx begins a fresh transaction for each
// attempt, retries on SQLSTATE 40001 (serialization_failure) and 40P01
// (deadlock_detected) whether raised by a statement or by COMMIT, and waits
// with jittered exponential backoff between attempts.
//
// Cancelling ctx stops the retries and rolls back; an error from COMMIT other
// than a serialization failure (for example a broken connection) leaves the
// outcome unknown and is returned wrapped, so callers must keep their effects
// idempotent.
func (d *DB) ExecuteTx(ctx context.Context, fn func(pgx.Tx) error) error {
	opts := pgx.TxOptions{IsoLevel: pgx.Serializable}
	if d.kind == Cockroach {
		if err := crdbpgx.ExecuteTx(ctx, d.pool, opts, fn); err != nil {
			return fmt.Errorf("db: cockroach transaction: %w", err)
		}
		return nil
	}
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(2*time.Millisecond),
		backoff.WithMaxInterval(200*time.Millisecond),
		backoff.WithRandomizationFactor(0.5),
		backoff.WithMaxElapsedTime(0), // attempts, not time, bound the loop
	)
	var last error
	for attempt := 1; attempt <= d.maxAttempts; attempt++ {
		last = d.attempt(ctx, opts, fn)
		if last == nil || !Retryable(last) {
			return last
		}
		t := time.NewTimer(b.NextBackOff())
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("db: transaction abandoned after %d attempts: %w", attempt, ctx.Err())
		case <-t.C:
		}
	}
	return fmt.Errorf("%w (%d attempts): %w", ErrTooManyRetries, d.maxAttempts, last)
}

// attempt runs fn once in a new transaction.
func (d *DB) attempt(ctx context.Context, opts pgx.TxOptions, fn func(pgx.Tx) error) (err error) {
	tx, err := d.pool.BeginTx(ctx, opts)
	if err != nil {
		return fmt.Errorf("db: beginning transaction: %w", err)
	}
	defer func() {
		if err != nil {
			// Rollback after a failed statement or commit is harmless; its
			// error adds nothing to the one being returned.
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("db: committing transaction: %w", err)
	}
	return nil
}

// Retryable reports whether err is a serialization failure or deadlock that
// a whole-transaction retry can resolve.
func Retryable(err error) bool {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return pg.Code == "40001" || pg.Code == "40P01"
	}
	return false
}

// DataError reports whether the database refused err's statement because of
// the data it carried (SQLSTATE class 22, data exception, or 23, integrity
// constraint violation). Retrying the same statement with the same data
// fails the same way; every other error (connection, serialization,
// resources, a missing table) may pass on a later try.
func DataError(err error) bool {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return strings.HasPrefix(pg.Code, "22") || strings.HasPrefix(pg.Code, "23")
	}
	return false
}
