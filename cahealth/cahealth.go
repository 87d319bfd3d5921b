// Package cahealth is the issuer-workers' circuit breaker per CA, shared by
// the whole fleet through the database (table ca_health, schema 0009), so
// that when a CA is down every worker stops sending it new orders, moves
// requests to the next CA of their group, and comes back when it is healthy.
//
// A CA's breaker is
//
//	closed     no row, or open_until NULL: orders go to the CA. Each
//	           unavailable answer (Failure: a 5xx, a refused connection, a
//	           timeout; acmeissuer.Unavailable) counts; any answer of the CA
//	           (Success) resets the count. Threshold consecutive ones open it.
//	open       now < open_until: no new orders (Allow says when to come back).
//	           The first open lasts Cooldown; each failed probe doubles it,
//	           up to MaxCooldown.
//	half-open  open_until has passed: one job at a time may probe the CA (it
//	           takes the probe with a lease, ProbeLease, in one conditional
//	           UPDATE); its success closes the breaker, its failure opens it
//	           again. Others keep off while the probe's lease runs.
//
// Every worker reads the table at most once per CacheFor (one SELECT of a
// few rows) and decides from that; writes happen only on failures, on
// successes while the breaker is not clean, and to take a probe. Times come
// from the worker's clock and are compared with the stored ones, so workers'
// clocks should agree to within a second or so, as they must for the rate
// limits. SQL runs unchanged on PostgreSQL and CockroachDB.
//
// The package owns ca_health and nothing else; which CA a request goes to is
// the pipeline's decision.
package cahealth

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/internal/clock"
)

// State of a CA's breaker.
type State string

const (
	Closed   State = "closed"
	Open     State = "open"
	HalfOpen State = "half_open"
)

// Config configures a Breaker. The zero value of every optional field means
// its documented default.
type Config struct {
	DB *db.DB // required
	// Threshold is how many consecutive unavailable answers open a CA's
	// breaker. Default 5.
	Threshold int
	// Cooldown is how long a breaker stays open the first time; every probe
	// that fails doubles it, up to MaxCooldown. Defaults 30 s and 10 min.
	Cooldown, MaxCooldown time.Duration
	// ProbeLease is how long a half-open CA's probe keeps other jobs off it
	// (a probe whose worker died frees it after this). Default 2 min, the
	// pipeline's order timeout.
	ProbeLease time.Duration
	// HalfOpenWait is what Allow tells a job that finds a half-open CA
	// being probed: look again this much later. Default 5 s.
	HalfOpenWait time.Duration
	// CacheFor is how long a worker decides from its last read of the table.
	// Default 1 s.
	CacheFor time.Duration
	// Metrics, optional, shows each CA's state (refreshed on every read).
	Metrics *Metrics
	// CAs, optional, are the names the metrics show even before a CA has a
	// row (a closed breaker).
	CAs   []string
	Clock clock.Clock // default the wall clock
}

// Status is one CA's row.
type Status struct {
	CA         string
	Failures   int       // consecutive unavailable answers
	Opens      int       // opens since last closed
	OpenUntil  time.Time // zero: closed
	ProbeOwner string
	ProbeUntil time.Time
	LastError  string
	FailedAt   time.Time
	ClosedAt   time.Time
	UpdatedAt  time.Time
}

// State is the breaker's state at now.
func (s Status) State(now time.Time) State {
	switch {
	case s.OpenUntil.IsZero():
		return Closed
	case now.Before(s.OpenUntil):
		return Open
	default:
		return HalfOpen
	}
}

// probing reports whether a probe's lease runs at now.
func (s Status) probing(now time.Time) bool {
	return s.ProbeOwner != "" && now.Before(s.ProbeUntil)
}

// Decision is Allow's answer.
type Decision struct {
	// Allowed: order from the CA now.
	Allowed bool
	// Probe: the caller holds the half-open CA's probe; its outcome
	// (Success, Failure or ReleaseProbe) decides the breaker.
	Probe bool
	State State
	// RetryAt, when not allowed, is when the CA may be tried again.
	RetryAt time.Time
}

// Breaker is the fleet's breaker for every CA. Safe for concurrent use.
type Breaker struct {
	cfg Config

	mu     sync.Mutex
	rows   map[string]Status
	readAt time.Time
}

// New checks cfg and returns a Breaker.
func New(cfg Config) (*Breaker, error) {
	switch {
	case cfg.DB == nil:
		return nil, errors.New("cahealth: Config.DB is required")
	case cfg.Threshold < 0, cfg.Cooldown < 0, cfg.MaxCooldown < 0, cfg.ProbeLease < 0, cfg.HalfOpenWait < 0, cfg.CacheFor < 0:
		return nil, errors.New("cahealth: Config values must not be negative")
	}
	if cfg.Threshold == 0 {
		cfg.Threshold = 5
	}
	def := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	def(&cfg.Cooldown, 30*time.Second)
	def(&cfg.MaxCooldown, 10*time.Minute)
	def(&cfg.ProbeLease, 2*time.Minute)
	def(&cfg.HalfOpenWait, 5*time.Second)
	def(&cfg.CacheFor, time.Second)
	if cfg.MaxCooldown < cfg.Cooldown {
		cfg.MaxCooldown = cfg.Cooldown
	}
	cfg.Clock = clock.Or(cfg.Clock)
	return &Breaker{cfg: cfg}, nil
}

// cooldown is how long the n-th open (1 for the first) lasts.
func (b *Breaker) cooldown(n int) time.Duration {
	d := b.cfg.Cooldown
	for i := 1; i < n && d < b.cfg.MaxCooldown; i++ {
		d *= 2
	}
	return min(d, b.cfg.MaxCooldown)
}

const columns = `ca, failures, opens, open_until, probe_owner, probe_until, last_error, failed_at, closed_at, updated_at`

func scan(row pgx.Row) (Status, error) {
	var s Status
	var openUntil, probeUntil, failedAt, closedAt *time.Time
	if err := row.Scan(&s.CA, &s.Failures, &s.Opens, &openUntil, &s.ProbeOwner, &probeUntil, &s.LastError, &failedAt, &closedAt, &s.UpdatedAt); err != nil {
		return Status{}, err
	}
	for _, p := range []struct {
		src *time.Time
		dst *time.Time
	}{{openUntil, &s.OpenUntil}, {probeUntil, &s.ProbeUntil}, {failedAt, &s.FailedAt}, {closedAt, &s.ClosedAt}} {
		if p.src != nil {
			*p.dst = *p.src
		}
	}
	return s, nil
}

// List returns every CA's row, by name: the CAs that never failed have none
// (they are closed).
func (b *Breaker) List(ctx context.Context) ([]Status, error) {
	rows, err := b.cfg.DB.Pool().Query(ctx, `SELECT `+columns+` FROM ca_health ORDER BY ca`)
	if err != nil {
		return nil, fmt.Errorf("cahealth: reading ca_health: %w", err)
	}
	defer rows.Close()
	var out []Status
	for rows.Next() {
		s, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("cahealth: reading ca_health: %w", err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cahealth: reading ca_health: %w", err)
	}
	return out, nil
}

// Refresh reads the table now (it is read at most once per CacheFor
// otherwise) and updates the metrics.
func (b *Breaker) Refresh(ctx context.Context) error {
	list, err := b.List(ctx)
	if err != nil {
		return err
	}
	now := b.cfg.Clock.Now()
	rows := make(map[string]Status, len(list))
	for _, s := range list {
		rows[s.CA] = s
	}
	b.mu.Lock()
	b.rows, b.readAt = rows, now
	b.mu.Unlock()
	if m := b.cfg.Metrics; m != nil {
		for _, ca := range b.cfg.CAs {
			m.set(ca, rows[ca].State(now))
		}
		for ca, s := range rows {
			m.set(ca, s.State(now))
		}
	}
	return nil
}

// status returns ca's row from a read at most CacheFor old.
func (b *Breaker) status(ctx context.Context, ca string) (Status, error) {
	b.mu.Lock()
	fresh := b.rows != nil && b.cfg.Clock.Now().Sub(b.readAt) < b.cfg.CacheFor
	s := b.rows[ca]
	b.mu.Unlock()
	if fresh {
		return s, nil
	}
	if err := b.Refresh(ctx); err != nil {
		return Status{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rows[ca], nil
}

// remember puts a row the caller just wrote into the cache.
func (b *Breaker) remember(s Status) {
	b.mu.Lock()
	if b.rows != nil {
		b.rows[s.CA] = s
	}
	b.mu.Unlock()
	if b.cfg.Metrics != nil {
		b.cfg.Metrics.set(s.CA, s.State(b.cfg.Clock.Now()))
	}
}

// Allow says whether a job may order from ca now: yes when its breaker is
// closed; no while it is open, or half-open with another job's probe
// running (RetryAt says when to look again); and, when it is half-open with
// no probe running, yes to the one caller whose UPDATE takes the probe for
// owner. A database error is returned with an allowing decision: the
// breaker fails open, the order goes to the CA as it would without one.
func (b *Breaker) Allow(ctx context.Context, ca, owner string) (Decision, error) {
	s, err := b.status(ctx, ca)
	if err != nil {
		return Decision{Allowed: true, State: Closed}, err
	}
	now := b.cfg.Clock.Now()
	switch st := s.State(now); {
	case st == Closed:
		return Decision{Allowed: true, State: Closed}, nil
	case st == Open:
		return Decision{State: Open, RetryAt: s.OpenUntil}, nil
	case s.probing(now):
		return Decision{State: HalfOpen, RetryAt: now.Add(min(b.cfg.HalfOpenWait, s.ProbeUntil.Sub(now)))}, nil
	}
	row := b.cfg.DB.Pool().QueryRow(ctx, `
UPDATE ca_health SET probe_owner = $2, probe_until = $4, updated_at = $3
 WHERE ca = $1 AND open_until IS NOT NULL AND open_until <= $3
   AND (probe_until IS NULL OR probe_until <= $3)
RETURNING `+columns, ca, owner, now, now.Add(b.cfg.ProbeLease))
	got, err := scan(row)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		// Another job took the probe, or the breaker changed: read again
		// next time, look again soon.
		b.mu.Lock()
		b.readAt = time.Time{}
		b.mu.Unlock()
		return Decision{State: HalfOpen, RetryAt: now.Add(b.cfg.HalfOpenWait)}, nil
	case err != nil:
		return Decision{Allowed: true, State: HalfOpen}, fmt.Errorf("cahealth: taking the probe of %s: %w", ca, err)
	}
	b.remember(got)
	return Decision{Allowed: true, Probe: true, State: HalfOpen}, nil
}

// Failure records an unavailable answer of ca (reason: what it was, for
// operators; no key material) and returns the row after it: the breaker
// opens at Threshold consecutive ones, and a failure while half-open opens
// it again for twice as long as the last time.
func (b *Breaker) Failure(ctx context.Context, ca, reason string) (Status, error) {
	if len(reason) > 500 {
		reason = reason[:500]
	}
	var out Status
	err := b.cfg.DB.ExecuteTx(ctx, func(tx pgx.Tx) error {
		now := b.cfg.Clock.Now()
		s, err := scan(tx.QueryRow(ctx, `SELECT `+columns+` FROM ca_health WHERE ca = $1 FOR UPDATE`, ca))
		if errors.Is(err, pgx.ErrNoRows) {
			s, err = Status{CA: ca}, nil
		}
		if err != nil {
			return err
		}
		s.Failures++
		s.LastError, s.FailedAt, s.UpdatedAt = reason, now, now
		switch s.State(now) {
		case Open: // already open: it stays so until its time
		case HalfOpen: // the probe (or a late order) failed: open again, longer
			s.Opens++
			s.OpenUntil = now.Add(b.cooldown(s.Opens))
			s.ProbeOwner, s.ProbeUntil = "", time.Time{}
		case Closed:
			if s.Failures >= b.cfg.Threshold {
				s.Opens = 1
				s.OpenUntil = now.Add(b.cooldown(1))
			}
		}
		out = s
		_, err = tx.Exec(ctx, `
INSERT INTO ca_health (ca, failures, opens, open_until, probe_owner, probe_until, last_error, failed_at, closed_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (ca) DO UPDATE SET failures = excluded.failures, opens = excluded.opens, open_until = excluded.open_until,
       probe_owner = excluded.probe_owner, probe_until = excluded.probe_until, last_error = excluded.last_error,
       failed_at = excluded.failed_at, updated_at = excluded.updated_at`,
			ca, s.Failures, s.Opens, nullTime(s.OpenUntil), s.ProbeOwner, nullTime(s.ProbeUntil), s.LastError, nullTime(s.FailedAt), nullTime(s.ClosedAt), s.UpdatedAt)
		return err
	})
	if err != nil {
		return Status{}, fmt.Errorf("cahealth: recording a failure of %s: %w", ca, err)
	}
	b.remember(out)
	return out, nil
}

// Success records that ca answered an operation that began at since (an
// order obtained, or any answer below 500): the breaker closes and the count
// of failures starts again. An answer to an operation that began before the
// last failure was recorded says nothing of the CA now (an order that got
// its last answer just before an outage, finishing after it began) and
// changes nothing. It writes only when the breaker is not already clean in
// the worker's last read (at most CacheFor old).
func (b *Breaker) Success(ctx context.Context, ca string, since time.Time) error {
	s, err := b.status(ctx, ca)
	if err == nil && s.Failures == 0 && s.OpenUntil.IsZero() && s.ProbeOwner == "" {
		return nil
	}
	now := b.cfg.Clock.Now()
	row := b.cfg.DB.Pool().QueryRow(ctx, `
UPDATE ca_health SET failures = 0, opens = 0, open_until = NULL, probe_owner = '', probe_until = NULL,
       closed_at = CASE WHEN open_until IS NULL THEN closed_at ELSE $2 END, updated_at = $2
 WHERE ca = $1 AND (failures > 0 OR open_until IS NOT NULL OR probe_owner <> '')
   AND (failed_at IS NULL OR failed_at <= $3)
RETURNING `+columns, ca, now, since)
	got, err := scan(row)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil
	case err != nil:
		return fmt.Errorf("cahealth: recording a success of %s: %w", ca, err)
	}
	b.remember(got)
	return nil
}

// ReleaseProbe gives back the probe owner took without learning anything of
// the CA's health (its order went elsewhere, or ended on the request's own
// fault): the next job may probe at once.
func (b *Breaker) ReleaseProbe(ctx context.Context, ca, owner string) error {
	_, err := b.cfg.DB.Pool().Exec(ctx, `
UPDATE ca_health SET probe_owner = '', probe_until = NULL, updated_at = $3 WHERE ca = $1 AND probe_owner = $2`,
		ca, owner, b.cfg.Clock.Now())
	if err != nil {
		return fmt.Errorf("cahealth: releasing the probe of %s: %w", ca, err)
	}
	b.mu.Lock()
	b.readAt = time.Time{}
	b.mu.Unlock()
	return nil
}

// Reset closes ca's breaker by hand (an operator who knows the CA is back):
// it reports whether there was anything to close.
func (b *Breaker) Reset(ctx context.Context, ca string) (bool, error) {
	now := b.cfg.Clock.Now()
	tag, err := b.cfg.DB.Pool().Exec(ctx, `
UPDATE ca_health SET failures = 0, opens = 0, open_until = NULL, probe_owner = '', probe_until = NULL,
       closed_at = $2, updated_at = $2
 WHERE ca = $1 AND (failures > 0 OR open_until IS NOT NULL OR probe_owner <> '')`, ca, now)
	if err != nil {
		return false, fmt.Errorf("cahealth: resetting %s: %w", ca, err)
	}
	b.mu.Lock()
	b.readAt = time.Time{}
	b.mu.Unlock()
	return tag.RowsAffected() > 0, nil
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
