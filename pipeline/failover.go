package pipeline

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/ratelimit"
)

// CA failover. A request names one CA, or a group of CAs (Config.Groups)
// that are tried in the group's order: the job orders from the first CA
// that
//
//   - its breaker lets through (Config.Breaker: the fleet's circuit breaker
//     per CA; a CA that answered 5xx, timed out or refused connections
//     Threshold times in a row gets no new orders until one probe succeeds),
//   - and whose limits (the worker's tokens, the CA's 429) do not defer the
//     request longer than Config.FailoverAfter; a shorter deferral is waited
//     out for the preferred CA.
//
// When none can take it now, the request waits for the earliest one (a
// deferral on the retry topic, as for any limit). Every new delivery starts
// again from the top of the list, so requests return to the preferred CA as
// soon as its breaker closes.
//
// An order already placed at a CA (recorded on the claim with the CA's
// directory, Order.CA) is continued at that CA and nowhere else: such a
// request waits for that CA's breaker, never moves. Rate limits and accounts
// stay per CA: the tokens are those of the CA ordered from, and tokens spent
// at a CA the job then leaves without an order are refunded.

// route is what a request's "ca" field names: one CA, or a group's list.
type route struct {
	group string // the group's name; empty for a single CA
	cas   []CA
}

// errReroute ends an attempt at one CA so the job chooses again (the CA's
// breaker opened, or its 429 defers beyond FailoverAfter). Internal to job.
var errReroute = errors.New("pipeline: moving the request to the next CA")

// limitCAUnavailable is the limit an issuance_deferred names when no CA of
// the request may be ordered from: their breakers are open.
const limitCAUnavailable = "CAUnavailable"

// limitLanePriority is the limit an issuance_deferred names when a request
// was held back for a higher lane waiting for the fleet budget (lanes.go);
// its key is the request's lane.
const limitLanePriority = "LanePriority"

// candidates are the CAs the job may order from, most preferred first: the
// CA its recorded order is at, or the request's route.
func (j *job) candidates() []CA {
	if j.pinned {
		return []CA{j.ca}
	}
	return j.route.cas
}

// canMove reports whether the job may leave its current CA: no order is in
// flight there, and another candidate is left.
func (j *job) canMove() bool {
	if j.pinned || j.pending != nil {
		return false
	}
	for _, ca := range j.route.cas {
		if ca.Name != j.ca.Name && !j.skip[ca.Name] {
			return true
		}
	}
	return false
}

// pin makes the job continue its recorded order at the CA it was placed at
// (directory; empty for an order recorded before CAs were: the request's
// own). It reports false when that CA is not configured any more.
func (j *job) pin(directory string) bool {
	ca := j.route.cas[0]
	if directory != "" {
		rt, ok := j.w.routes[directory]
		if !ok || rt.group != "" {
			return false
		}
		ca = rt.cas[0]
	}
	j.ca, j.pinned = ca, true
	return true
}

// issue chooses a CA, spends its tokens and orders, choosing again when the
// order's CA turns out unavailable or limited beyond FailoverAfter.
func (j *job) issue(ctx context.Context, kind ratelimit.OrderKind) (string, error) {
	defer j.releaseProbe(ctx)
	for {
		ok, outcome, err := j.choose(ctx, kind)
		if !ok {
			return outcome, err
		}
		outcome, err = j.order(ctx)
		if !errors.Is(err, errReroute) {
			return outcome, err
		}
		j.skip[j.ca.Name] = true
		j.releaseProbe(ctx)
	}
}

// choose picks the CA to order from and spends its tokens (ok: j.ca and
// j.txns are set). When no candidate can take the order now, it defers the
// request to the earliest time one can (or ends it for good: limits that
// cannot apply to the request) and returns the job's outcome.
func (j *job) choose(ctx context.Context, kind ratelimit.OrderKind) (ok bool, outcome string, err error) {
	w := j.w
	// A higher lane waiting for the fleet budget anywhere in the fleet goes
	// first (lanes.go).
	deferTo, err := j.yieldToHigherLanes(ctx)
	if err != nil {
		return false, "", j.release(ctx, err)
	}
	if !deferTo.IsZero() {
		return false, OutcomeDeferred, j.deferUntil(ctx, deferTo, limitLanePriority, LaneOf(j.req).String(), true)
	}
	cands := j.candidates()
	var waitUntil time.Time // earliest a CA whose breaker refused may be tried
	var waitCA string
	var denied *ratelimit.Result // the shortest denial by limits beyond MaxInlineWait
	for _, ca := range cands {
		if j.skip[ca.Name] {
			continue
		}
		dec := j.allow(ctx, ca)
		if !dec.allowed {
			if waitUntil.IsZero() || dec.retryAt.Before(waitUntil) {
				waitUntil, waitCA = dec.retryAt, ca.Name
			}
			continue
		}
		txns, err := w.cfg.Limits.OrderTransactions(ratelimit.Order{Directory: ca.Directory, Account: ca.account(j.req.Tenant), SANs: j.req.SANs, Kind: kind})
		if err != nil {
			j.giveBackProbe(ctx, ca, dec.probe)
			outcome, err := j.failPermanently(ctx, problemBadRequest, err.Error())
			return false, outcome, err
		}
		txns = j.withLead(ca, txns)
		if j.booking != nil && j.booking.CA == ca.Directory {
			// The slot booked for this request (park.go): its tokens are
			// spent already, for now.
			j.booking = nil
			j.ca, j.txns, j.ordersPlaced = ca, txns, 0
			if dec.probe {
				j.probe = ca.Name
			}
			return true, "", nil
		}
		res, err := j.spend(ctx, txns)
		if err != nil {
			j.giveBackProbe(ctx, ca, dec.probe)
			return false, "", j.release(ctx, err)
		}
		if res.Allowed {
			j.ca, j.txns, j.ordersPlaced = ca, txns, 0
			if dec.probe {
				j.probe = ca.Name
			}
			if ca.Name != cands[0].Name {
				w.cfg.Metrics.Failovers.WithLabelValues(cands[0].Name, ca.Name).Inc()
				w.cfg.Logger.Info("ordering from a later CA of the request's group", append(j.log(), "preferred", cands[0].Name)...)
			}
			return true, "", nil
		}
		j.giveBackProbe(ctx, ca, dec.probe)
		if res.Booked {
			if res.RetryIn <= w.cfg.FailoverAfter || !j.laterCandidate(cands, ca) {
				j.txns = txns
				outcome, err := j.deferBooked(ctx, ca, res)
				return false, outcome, err
			}
			// Worth trying the group's next CA: the slot is given back.
			if err := w.cfg.Tokens.Refund(ctx, txns); err != nil {
				w.cfg.Logger.Warn("giving back a booked slot failed; it stays spent", append(j.log(), "err", err)...)
			}
		}
		if denied == nil || res.RetryIn < denied.RetryIn {
			denied = &res
		}
		if res.RetryIn <= w.cfg.FailoverAfter {
			break // worth waiting for: later CAs are not tried
		}
	}
	now := w.cfg.Clock.Now()
	switch {
	case denied != nil && (waitUntil.IsZero() || now.Add(denied.RetryIn).Before(waitUntil)):
		limit, key := "unknown", "unknown"
		if denied.Limiting != nil {
			limit, key = string(denied.Limiting.Name), denied.Limiting.Key()
		}
		return false, OutcomeDeferred, j.deferUntil(ctx, now.Add(denied.RetryIn), limit, key, true)
	case !waitUntil.IsZero():
		return false, OutcomeDeferred, j.deferUntil(ctx, waitUntil, limitCAUnavailable, waitCA, true)
	default:
		// Every CA was left during this job (unavailable, or limited beyond
		// FailoverAfter) and no breaker says when to come back.
		return false, OutcomeDeferred, j.deferUntil(ctx, now.Add(w.cfg.RetryDelay), limitCAUnavailable, cands[0].Name, true)
	}
}

// spend spends txns, waiting in place while a denial's retry-in is at most
// MaxInlineWait (the fleet's orders-per-second budget: the budget then gates
// how fast this worker pulls work instead of churning records through the
// retry topic). It returns the allowing result or the first longer denial.
// With a Booker, a denial books the next free slot instead (Booked in the
// result when it is further than MaxInlineWait; a nearer one is waited for
// and returned as allowed: the booking is the spend).
func (j *job) spend(ctx context.Context, txns []ratelimit.Transaction) (ratelimit.Result, error) {
	w := j.w
	book := w.cfg.Booker != nil && w.cfg.Parking != nil
	for {
		res, err := retry(ctx, w, "spending rate-limit tokens", func(ctx context.Context) (ratelimit.Result, error) {
			if book {
				return w.cfg.Booker.Book(ctx, txns, events.MaxRetryAhead)
			}
			return w.cfg.Tokens.Spend(ctx, txns)
		})
		if err != nil || res.Allowed {
			return res, err
		}
		limit := "unknown"
		if res.Limiting != nil {
			limit = string(res.Limiting.Name)
		}
		w.cfg.Metrics.Denied.WithLabelValues(limit).Inc()
		if res.Limiting != nil && res.Limiting.Name == ratelimit.FleetOrdersPerSecond {
			j.markWaiting(ctx)
		}
		if res.RetryIn > w.cfg.MaxInlineWait {
			return res, nil
		}
		if err := clock.Sleep(ctx, res.RetryIn); err != nil {
			return res, err // a booked slot stays spent: over-charging only delays
		}
		if res.Booked {
			res.Allowed, res.Booked = true, false // the slot is ours now
			return res, nil
		}
	}
}

// laterCandidate reports whether a CA after ca in cands is left to try.
func (j *job) laterCandidate(cands []CA, ca CA) bool {
	after := false
	for _, c := range cands {
		if after && !j.skip[c.Name] {
			return true
		}
		after = after || c.Name == ca.Name
	}
	return false
}

// decision is the breaker's answer for one CA.
type decision struct {
	allowed, probe bool
	retryAt        time.Time
}

// allow asks the breaker whether ca may be ordered from; without a breaker,
// or when it cannot be read (the database is down), it may.
func (j *job) allow(ctx context.Context, ca CA) decision {
	b := j.w.cfg.Breaker
	if b == nil {
		return decision{allowed: true}
	}
	d, err := b.Allow(ctx, ca.Name, j.owner)
	if err != nil {
		j.w.cfg.Logger.Warn("reading the CA's breaker; ordering as if closed", append(j.log(), "breaker_ca", ca.Name, "err", err)...)
	}
	return decision{allowed: d.Allowed, probe: d.Probe, retryAt: d.RetryAt}
}

// health tells the breaker what the order's CA said in the attempt begun
// at since: err nil or an answer below 500 closes it (unless a failure came
// after since), an unavailable CA (acmeissuer.Unavailable) counts towards
// opening it. When the breaker is open after it, j.breakerUntil is when it
// may be probed again. A probe the job held is spent either way.
func (j *job) health(ctx context.Context, since time.Time, err error) {
	b := j.w.cfg.Breaker
	j.breakerUntil = time.Time{}
	if b == nil {
		return
	}
	switch {
	case err == nil || acmeissuer.Answered(err):
		if berr := b.Success(ctx, j.ca.Name, since); berr != nil {
			j.w.cfg.Logger.Warn("recording the CA's answer in its breaker", append(j.log(), "err", berr)...)
		}
	case acmeissuer.Unavailable(err):
		st, berr := b.Failure(ctx, j.ca.Name, events.Sanitize(err.Error(), 300))
		if berr != nil {
			j.w.cfg.Logger.Warn("recording the CA's failure in its breaker", append(j.log(), "err", berr)...)
			return
		}
		if now := j.w.cfg.Clock.Now(); now.Before(st.OpenUntil) {
			j.breakerUntil = st.OpenUntil
			j.w.cfg.Logger.Info("the CA is unavailable and its breaker open: no new orders to it until a probe succeeds",
				append(j.log(), "open_until", st.OpenUntil, "failures", st.Failures)...)
		}
	default:
		return // neither: the probe, if any, is given back at the job's end
	}
	if j.probe == j.ca.Name {
		j.probe = ""
	}
}

// giveBackProbe returns a probe the job took but does not use.
func (j *job) giveBackProbe(ctx context.Context, ca CA, probe bool) {
	if probe {
		j.probe = ca.Name
		j.releaseProbe(ctx)
	}
}

// releaseProbe gives back the probe the job still holds: it learnt nothing
// of the CA's health, so the next job may probe at once.
func (j *job) releaseProbe(ctx context.Context) {
	if j.probe == "" || j.w.cfg.Breaker == nil {
		return
	}
	ca := j.probe
	j.probe = ""
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := j.w.cfg.Breaker.ReleaseProbe(rctx, ca, j.owner); err != nil {
		j.w.cfg.Logger.Warn("giving back the CA's probe (it frees itself when its lease ends)", append(j.log(), "probe_ca", ca, "err", err)...)
	}
}

// issuedBy is the "ca" of the request's cert_obtained: the CA that issued
// it, by name, when the request named a group; else what the request named.
func (j *job) issuedBy() string {
	if j.route.group != "" {
		return j.ca.Name
	}
	return j.req.CA
}

// moveOn decides, after a failed attempt, whether the job leaves its CA for
// the next of its group: when the CA's breaker is open, or its 429 defers
// beyond FailoverAfter. It refunds the tokens spent at the CA (and records
// the 429's penalty) when it does.
func (j *job) moveOn(ctx context.Context, c acmeissuer.Classification, err error) bool {
	w := j.w
	if !j.canMove() {
		return false
	}
	switch {
	case c.Class == acmeissuer.RateLimited && c.RetryAfter.Sub(w.cfg.Clock.Now()) > w.cfg.FailoverAfter:
		j.penalize(ctx, err)
	case c.Class == acmeissuer.Retry && !j.breakerUntil.IsZero():
	default:
		return false
	}
	j.refund(ctx)
	w.cfg.Logger.Info("leaving the CA for the next of the request's group", append(j.log(), "class", c.Class.String(),
		"reason", fmt.Sprintf("%.200s", events.Sanitize(err.Error(), 200)))...)
	return true
}
