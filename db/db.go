// Package db opens certfleet's database (CockroachDB in production,
// PostgreSQL as the local stand-in) and owns the one transaction helper every
// package uses. It knows nothing of certfleet's tables; those belong to
// schema/ (migrations) and to the packages that query them.
package db

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Kind is the database server family, detected at connect.
type Kind string

const (
	Postgres  Kind = "postgres"
	Cockroach Kind = "cockroach"
)

// Config says how to connect. The zero value is invalid: URL is required.
type Config struct {
	// URL is a libpq/pgx connection URL, e.g.
	// postgres://user@127.0.0.1:15432/certfleet?sslmode=disable. TLS settings
	// in the URL (sslmode, sslrootcert, sslcert, sslkey) are honoured, and
	// enforced: to a host that is not loopback (or a Unix socket) Open
	// requires sslmode=verify-full with sslrootcert, sslcert and sslkey come
	// together (certificate authentication, CockroachDB's), and sslkey must
	// not be readable by group or others. The PG* environment variables fill
	// what the URL leaves out, as in pgx.
	URL string
	// Insecure lets Open reach a host that is not loopback without
	// verify-full (the -database-insecure flag): for a network the operator
	// trusts, never for production.
	Insecure bool
	// TLS, when set, replaces the TLS configuration derived from the URL
	// (for a KMS- or file-watcher-provided client certificate).
	TLS *tls.Config
	// MaxConns caps the pool; 0 means pgxpool's default (max(4, GOMAXPROCS)).
	MaxConns int32
	// MaxTxAttempts caps how often ExecuteTx runs fn on PostgreSQL before
	// giving up on serialization failures; 0 means 30.
	MaxTxAttempts int
}

// DB is a connection pool plus the detected server kind. It is safe for
// concurrent use.
type DB struct {
	pool        *pgxpool.Pool
	kind        Kind
	maxAttempts int
}

// Check makes Open's checks of the URL, its TLS settings and its files
// without connecting, for a binary's configuration step: a missing
// verify-full, a missing file or a client key others may read is then a
// configuration error (exit status 2) rather than a runtime one.
func (c Config) Check() error {
	if c.URL == "" {
		return errors.New("db: config field URL is empty")
	}
	return checkTransport(c.URL, c.TLS, c.Insecure, os.Getenv)
}

// Open connects, pings and detects the server kind. ctx bounds the
// connection attempt only.
func Open(ctx context.Context, cfg Config) (*DB, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	pc, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		// pgx's parse errors can echo the password; say only what failed.
		return nil, fmt.Errorf("db: parsing config field URL: %w", redact(err, cfg.URL))
	}
	if cfg.TLS != nil {
		pc.ConnConfig.TLSConfig = cfg.TLS
	}
	if cfg.MaxConns > 0 {
		pc.MaxConns = cfg.MaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("db: creating pool for %s: %w", pc.ConnConfig.Host, err)
	}
	var version string
	if err := pool.QueryRow(ctx, "SELECT version()").Scan(&version); err != nil {
		pool.Close()
		return nil, fmt.Errorf("db: connecting to %s:%d: %w", pc.ConnConfig.Host, pc.ConnConfig.Port, err)
	}
	d := &DB{pool: pool, kind: Postgres, maxAttempts: cfg.MaxTxAttempts}
	if strings.Contains(version, "CockroachDB") {
		d.kind = Cockroach
	}
	if d.maxAttempts <= 0 {
		d.maxAttempts = 30
	}
	return d, nil
}

// Pool is the underlying pgx pool, for single statements (which need no
// client-side retry) and for batches.
func (d *DB) Pool() *pgxpool.Pool { return d.pool }

// Kind is the server family detected at Open.
func (d *DB) Kind() Kind { return d.kind }

// Close closes the pool, waiting for acquired connections to be released.
func (d *DB) Close() { d.pool.Close() }

func redact(err error, url string) error {
	msg := err.Error()
	if i := strings.Index(url, "@"); i > 0 {
		if j := strings.Index(url, "://"); j >= 0 && j+3 < i {
			msg = strings.ReplaceAll(msg, url[j+3:i], "<credentials>")
		}
	}
	return errors.New(msg)
}
