package retention

import (
	"context"
	"errors"
	"time"

	"github.com/certfleet/certfleet/internal/clock"
)

// Leader is the lease that keeps the job to one process at a time.
//
// Contract: Lead takes the lease, or renews it when this process holds it,
// and returns until when this process may act as leader (on its own clock;
// never later than the lease's expiry), or the zero time when another
// process holds it. Calling it again renews. Safe for concurrent use;
// honours ctx. *scheduler.Lease does this through LeaderFunc.
type Leader interface {
	Lead(ctx context.Context) (until time.Time, err error)
}

// LeaderFunc adapts a function to Leader.
type LeaderFunc func(ctx context.Context) (time.Time, error)

// Lead calls f.
func (f LeaderFunc) Lead(ctx context.Context) (time.Time, error) { return f(ctx) }

// renewMargin: a batch starts only when the lease is held at least this much
// longer; otherwise the lease is renewed first.
const renewMargin = 15 * time.Second

// Run makes a pass every interval (the first at once) while leader says this
// process leads, until ctx ends; it returns nil then. Errors of a pass are
// logged and the next pass tries again. A pass stops as soon as the lease
// cannot be renewed, so two processes never prune at once for longer than a
// batch.
func (p *Pruner) Run(ctx context.Context, leader Leader, interval time.Duration) error {
	log := p.cfg.Logger
	for {
		until, err := leader.Lead(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			log.Warn("retention: taking the lease", "err", err)
		case until.IsZero():
			log.Debug("retention: another process leads")
		default:
			still := func(ctx context.Context) bool {
				if p.cfg.Clock.Now().Add(renewMargin).Before(until) {
					return true
				}
				u, err := leader.Lead(ctx)
				if err != nil || u.IsZero() {
					return false
				}
				until = u
				return p.cfg.Clock.Now().Add(renewMargin).Before(until)
			}
			rep, err := p.Once(ctx, still)
			switch {
			case ctx.Err() != nil:
				return nil
			case errors.Is(err, ErrNotLeader):
				log.Info("retention: lease lost during a pass", "pruned", rep)
			case err != nil:
				log.Warn("retention: pass failed; next pass retries", "pruned", rep, "err", err)
			default:
				log.Info("retention: pass done", "pruned", rep)
				if p.cfg.Metrics != nil {
					p.cfg.Metrics.LastRun.SetToCurrentTime()
				}
			}
		}
		if clock.Sleep(ctx, interval) != nil {
			return nil
		}
	}
}
