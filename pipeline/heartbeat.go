package pipeline

import (
	"context"
	"errors"
	"sync"

	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/internal/clock"
)

// errClaimLost ends an order whose claim another worker took over (the
// heartbeat could not renew it in time and the lease lapsed): the new owner
// continues the recorded order, so this one stops at once rather than race it.
var errClaimLost = errors.New("pipeline: the claim was taken over by another worker")

// heartbeat renews the job's claim every Heartbeat until stop is called,
// when Config.Renewer is set. A renewal refused because the claim is no
// longer ours (certstore.ErrNotOwner) ends the heartbeat and cancels lost;
// any other error is logged and the next tick tries again (the lease
// covers two missed renewals).
type heartbeat struct {
	lost context.Context // done once the claim was found no longer ours
	stop context.CancelFunc
	wg   sync.WaitGroup
}

// startHeartbeat begins renewing j's claim; stop it with stop.
func (j *job) startHeartbeat(ctx context.Context) *heartbeat {
	w := j.w
	lost, markLost := context.WithCancel(context.Background())
	stop, stopCancel := context.WithCancel(ctx)
	hb := &heartbeat{lost: lost, stop: func() { stopCancel(); markLost() }}
	if w.cfg.Renewer == nil {
		return hb
	}
	hb.stop = stopCancel
	hb.wg.Add(1)
	go func() {
		defer hb.wg.Done()
		for {
			if err := clock.Sleep(stop, w.cfg.Heartbeat); err != nil {
				return
			}
			rctx, rcancel := context.WithTimeout(stop, w.cfg.Heartbeat)
			err := w.cfg.Renewer.Renew(rctx, j.req.RequestID, j.owner, w.cfg.Lease)
			rcancel()
			switch {
			case err == nil:
			case stop.Err() != nil:
				return
			case errors.Is(err, certstore.ErrNotOwner):
				// Ended by this job (a release, a stored outcome) or taken
				// over: either way nothing is left to renew, and an order in
				// flight is no longer this job's to continue.
				markLost()
				return
			default:
				w.cfg.Logger.Warn("renewing the claim failed; trying again at the next heartbeat", append(j.log(), "err", err)...)
			}
		}
	}()
	return hb
}

// end stops the heartbeat and waits for it.
func (hb *heartbeat) end() {
	hb.stop()
	hb.wg.Wait()
}

// orderContext bounds one order attempt: OrderTimeout, and the claim
// staying ours.
func (j *job) orderContext(ctx context.Context) (context.Context, context.CancelFunc) {
	octx, cancel := context.WithTimeout(ctx, j.w.cfg.OrderTimeout)
	if j.hb == nil {
		return octx, cancel
	}
	stopAfter := context.AfterFunc(j.hb.lost, cancel)
	return octx, func() { stopAfter(); cancel() }
}

// claimLost reports whether the heartbeat found the claim taken over.
func (j *job) claimLost() bool { return j.hb != nil && j.hb.lost.Err() != nil }
