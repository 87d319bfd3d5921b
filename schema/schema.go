// Package schema owns certfleet's database schema: the versioned SQL
// migrations embedded from migrations/ and the small runner that applies them.
//
// Migrations are files named NNNN_description.sql, applied in version order,
// each recorded in schema_migrations with a checksum so an edited, already
// applied file is reported instead of silently diverging. Every statement must
// be idempotent (CREATE ... IF NOT EXISTS, ADD COLUMN IF NOT EXISTS) and run
// unchanged on PostgreSQL and CockroachDB (docs/contracts.md, "Database rules").
//
// Why a small runner and not golang-migrate: golang-migrate's pgx/v5 driver
// locks with pg_advisory_lock, which the database rules forbid, and its
// CockroachDB driver is built on lib/pq. The runner here is ~150 lines, uses
// the project's one transaction helper, and locks with a lease row that works
// on both servers.
package schema

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/certfleet/certfleet/db"
)

//go:embed migrations/*.sql
var files embed.FS

// migration is one versioned SQL file.
type migration struct {
	Version  int
	Name     string
	SQL      string
	Checksum string // hex sha256 of SQL
}

// embeddedMigrations returns the embedded migrations in version order, or an error
// naming a badly named or duplicated file.
func embeddedMigrations() ([]migration, error) { return load(files, "migrations") }

func load(fsys fs.FS, dir string) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("schema: listing migrations: %w", err)
	}
	var ms []migration
	seen := map[int]string{}
	for _, e := range entries {
		name := e.Name()
		num, _, ok := strings.Cut(strings.TrimSuffix(name, ".sql"), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 || !strings.HasSuffix(name, ".sql") {
			return nil, fmt.Errorf("schema: migration file %q: want NNNN_description.sql", name)
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("schema: migrations %q and %q share version %d", prev, name, v)
		}
		seen[v] = name
		data, err := fs.ReadFile(fsys, path.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("schema: reading %s: %w", name, err)
		}
		sum := sha256.Sum256(data)
		ms = append(ms, migration{Version: v, Name: name, SQL: string(data), Checksum: hex.EncodeToString(sum[:])})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	return ms, nil
}

// ErrChecksum means an applied migration's file changed afterwards.
var ErrChecksum = errors.New("schema: applied migration was modified")

// Options tunes Migrate; the zero value is the default.
type Options struct {
	// Holder names this process in the lock row; default host:pid.
	Holder string
	// LockTTL is how long the lock lasts unless renewed (it is renewed before
	// each migration), so a crashed migrator blocks others at most this long.
	// Default 2 minutes.
	LockTTL time.Duration
	// Poll is how often a waiting migrator retries the lock; default 250ms.
	Poll time.Duration
}

// Migrate applies every embedded migration not yet recorded, holding the
// migration lock so two processes never apply at once; a second process
// waits for the lock, then finds nothing left to do. It returns the versions
// it applied. Cancelling ctx stops waiting and returns ctx's error; a
// migration interrupted mid-way is re-run next time (statements are
// idempotent).
func Migrate(ctx context.Context, d *db.DB, opt Options) ([]int, error) {
	ms, err := embeddedMigrations()
	if err != nil {
		return nil, err
	}
	return apply(ctx, d, ms, opt)
}

func apply(ctx context.Context, d *db.DB, ms []migration, opt Options) ([]int, error) {
	if opt.Holder == "" {
		host, _ := os.Hostname()
		opt.Holder = fmt.Sprintf("%s:%d:%d", host, os.Getpid(), time.Now().UnixNano())
	}
	if opt.LockTTL <= 0 {
		opt.LockTTL = 2 * time.Minute
	}
	if opt.Poll <= 0 {
		opt.Poll = 250 * time.Millisecond
	}
	pool := d.Pool()
	if err := createBookkeeping(ctx, d); err != nil {
		return nil, err
	}
	if err := lock(ctx, d, opt); err != nil {
		return nil, err
	}
	defer func() {
		// Release even when ctx was cancelled, so others need not wait for the TTL.
		_, _ = pool.Exec(context.WithoutCancel(ctx), `DELETE FROM schema_migration_lock WHERE id = 1 AND holder = $1`, opt.Holder)
	}()

	applied := map[int]string{}
	rows, err := pool.Query(ctx, `SELECT version, checksum FROM schema_migrations`)
	if err != nil {
		return nil, fmt.Errorf("schema: reading applied migrations: %w", err)
	}
	for rows.Next() {
		var v int
		var sum string
		if err := rows.Scan(&v, &sum); err != nil {
			return nil, fmt.Errorf("schema: reading applied migrations: %w", err)
		}
		applied[v] = sum
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("schema: reading applied migrations: %w", err)
	}

	var done []int
	for _, m := range ms {
		if sum, ok := applied[m.Version]; ok {
			if sum != m.Checksum {
				return done, fmt.Errorf("%w: %s (recorded checksum %.12s, file %.12s); add a new migration instead", ErrChecksum, m.Name, sum, m.Checksum)
			}
			continue
		}
		if err := renew(ctx, d, opt); err != nil {
			return done, err
		}
		if err := applyOne(ctx, d, m); err != nil {
			return done, err
		}
		done = append(done, m.Version)
	}
	return done, nil
}

const bookkeeping = `
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INT         NOT NULL PRIMARY KEY,
    name       TEXT        NOT NULL,
    checksum   TEXT        NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS schema_migration_lock (
    id         INT         NOT NULL PRIMARY KEY,
    holder     TEXT        NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
)`

// createBookkeeping creates the runner's own tables. Before the lock exists
// nothing serialises migrators, and PostgreSQL's CREATE TABLE IF NOT EXISTS
// is not safe against a concurrent twin: the loser fails with a unique
// violation on the catalog (23505), duplicate_table (42P07) or duplicate_object (42710, the row type). All mean
// "someone else just created it", so try again and find it there.
func createBookkeeping(ctx context.Context, d *db.DB) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if _, err = d.Pool().Exec(ctx, bookkeeping); err == nil {
			return nil
		}
		var pg *pgconn.PgError
		if !errors.As(err, &pg) || (pg.Code != "23505" && pg.Code != "42P07" && pg.Code != "42710") {
			break
		}
	}
	return fmt.Errorf("schema: creating bookkeeping tables: %w", err)
}

// applyOne runs a migration and records it. On PostgreSQL both happen in one
// transaction. CockroachDB advises against DDL in explicit transactions, so
// there the file runs as one implicit multi-statement transaction and is
// recorded afterwards; a crash in between re-runs idempotent statements.
func applyOne(ctx context.Context, d *db.DB, m migration) error {
	const insert = `INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3) ON CONFLICT (version) DO NOTHING`
	if d.Kind() == db.Cockroach {
		if _, err := d.Pool().Exec(ctx, m.SQL); err != nil {
			return fmt.Errorf("schema: applying %s: %w", m.Name, err)
		}
		if _, err := d.Pool().Exec(ctx, insert, m.Version, m.Name, m.Checksum); err != nil {
			return fmt.Errorf("schema: recording %s: %w", m.Name, err)
		}
		return nil
	}
	err := d.ExecuteTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, m.SQL); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, insert, m.Version, m.Name, m.Checksum)
		return err
	})
	if err != nil {
		return fmt.Errorf("schema: applying %s: %w", m.Name, err)
	}
	return nil
}

// lock takes the migration lease row, waiting while another live holder has it.
func lock(ctx context.Context, d *db.DB, opt Options) error {
	for {
		ok, err := tryLock(ctx, d, opt)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		t := time.NewTimer(opt.Poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("schema: waiting for the migration lock: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// tryLock inserts the lease row, or takes it over when it expired or is ours.
// One statement, so it needs no client-side retry.
func tryLock(ctx context.Context, d *db.DB, opt Options) (bool, error) {
	rows, err := d.Pool().Query(ctx, `
INSERT INTO schema_migration_lock (id, holder, expires_at)
VALUES (1, $1, now() + $2::INT * INTERVAL '1 millisecond')
ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
WHERE schema_migration_lock.expires_at < now() OR schema_migration_lock.holder = excluded.holder
RETURNING holder`, opt.Holder, opt.LockTTL.Milliseconds())
	if err != nil {
		return false, fmt.Errorf("schema: taking the migration lock: %w", err)
	}
	defer rows.Close()
	got := rows.Next()
	rows.Close()
	if err := rows.Err(); err != nil {
		if db.Retryable(err) {
			return false, nil // lost a race for the row; poll again
		}
		return false, fmt.Errorf("schema: taking the migration lock: %w", err)
	}
	return got, nil
}

// renew extends our lease; losing it (it expired and someone took it) aborts.
func renew(ctx context.Context, d *db.DB, opt Options) error {
	ok, err := tryLock(ctx, d, opt)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("schema: lost the migration lock to another process (LockTTL %v too short?)", opt.LockTTL)
	}
	return nil
}
