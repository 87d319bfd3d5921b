package scheduler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/internal/clock"
)

// LeaseName is the leases row the schedulers compete for.
const LeaseName = "scheduler"

// Lease is one process's handle on a leader lease in the leases table: at
// most one holder at a time, taken over only once it expired, with a fencing
// token that grows with every change of holder. Times are the database's
// clock (now()), so schedulers on machines with skewed clocks still agree.
type Lease struct {
	db     *db.DB
	name   string
	holder string
	ttl    time.Duration
	clock  clock.Clock
}

// LeaseState is the outcome of one acquire or renew attempt.
type LeaseState struct {
	Held  bool  // this process holds the lease
	Token int64 // fencing token of this holder (0 when not held)
	// ValidUntil is when this process must stop acting as leader unless it
	// renewed: the local time the attempt started plus the TTL. It is
	// earlier than the database's expiry, never later.
	ValidUntil time.Time
}

// NewLease returns a handle for holder (unique per process, e.g.
// host:pid:random) on lease name, held for ttl after each renewal.
func NewLease(d *db.DB, name, holder string, ttl time.Duration) *Lease {
	return &Lease{db: d, name: name, holder: holder, ttl: ttl, clock: clock.System{}}
}

// Holder is this handle's holder name.
func (l *Lease) Holder() string { return l.holder }

// acquire is the whole protocol in one statement, so it needs no client-side
// retry: insert the lease, or take it over when it expired (token + 1), or
// renew it when we hold it (token kept). Another live holder makes the
// WHERE false and nothing is returned.
const acquireLease = `
INSERT INTO leases (name, holder, token, expires_at)
VALUES ($1, $2, 1, now() + $3::INT8 * INTERVAL '1 millisecond')
ON CONFLICT (name) DO UPDATE SET
    token = CASE WHEN leases.holder = excluded.holder THEN leases.token ELSE leases.token + 1 END,
    holder = excluded.holder,
    expires_at = excluded.expires_at
WHERE leases.expires_at <= now() OR leases.holder = excluded.holder
RETURNING token`

// TryAcquire takes the lease if it is free or expired, renews it if this
// process holds it, and otherwise reports it is held elsewhere.
func (l *Lease) TryAcquire(ctx context.Context) (LeaseState, error) {
	start := l.clock.Now()
	var token int64
	err := l.db.Pool().QueryRow(ctx, acquireLease, l.name, l.holder, l.ttl.Milliseconds()).Scan(&token)
	if errors.Is(err, errNoRows) {
		return LeaseState{}, nil
	}
	if err != nil {
		return LeaseState{}, fmt.Errorf("scheduler: lease %s: %w", l.name, err)
	}
	return LeaseState{Held: true, Token: token, ValidUntil: start.Add(l.ttl)}, nil
}

// Release gives the lease up at once (graceful shutdown) so a standby need
// not wait for it to expire. The token stays; the next holder increments it.
func (l *Lease) Release(ctx context.Context) error {
	_, err := l.db.Pool().Exec(ctx, `UPDATE leases SET expires_at = now() WHERE name = $1 AND holder = $2`, l.name, l.holder)
	if err != nil {
		return fmt.Errorf("scheduler: release lease %s: %w", l.name, err)
	}
	return nil
}

// leaseHeld is the fencing condition every leader write carries: the lease
// is still ours, with this token, and not expired. $1 name, $2 holder,
// $3 token (placeholders renumbered by callers with fenceCond).
func fenceCond(name, holder, token string) string {
	return `EXISTS (SELECT 1 FROM leases WHERE leases.name = ` + name + ` AND leases.holder = ` + holder +
		` AND leases.token = ` + token + ` AND leases.expires_at > now())`
}
