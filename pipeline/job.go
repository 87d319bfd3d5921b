package pipeline

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/delivery"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/seal"
)

// handle takes one record to its end (see the package doc). waitCtx ends at
// shutdown: a record still waiting for its not_before or for an order slot is
// handed back then. jobCtx ends only when the shutdown grace is over, so an
// order in flight can finish. A nil error means the record is finished and
// may be committed.
//
// A panic while handling the record is recovered: the claim is handed back,
// the record dead-lettered with the panic's reason (JobPanics counts it), and
// the worker goes on with the next record.
func (w *Worker) handle(waitCtx, jobCtx context.Context, m kafka.Message) (err error) {
	var j *job
	defer func() {
		p := recover()
		if p == nil {
			return
		}
		w.cfg.Metrics.JobPanics.Inc()
		w.cfg.Logger.Error("panic while handling a record; dead-lettering it", "topic", m.Topic, "partition", m.Partition, "offset", m.Offset,
			"panic", events.Sanitize(fmt.Sprint(p), 300), "stack", string(debug.Stack()))
		if j != nil {
			_ = j.release(jobCtx, nil)
		}
		err = w.deadLetter(jobCtx, m, fmt.Sprintf("panic while handling the record: %v", p))
	}()
	ev, err := events.Decode(m)
	if err != nil {
		return w.deadLetter(jobCtx, m, err.Error())
	}
	req, ok := ev.Data.(*events.IssuanceRequest)
	if !ok {
		return w.deadLetter(jobCtx, m, fmt.Sprintf("record of type %s on an issuance topic; only %s belongs here", ev.Type(), events.TypeIssuanceRequested))
	}
	rt, ok := w.routes[req.CA]
	if !ok {
		return w.deadLetter(jobCtx, m, fmt.Sprintf("unknown CA %q: this worker orders only from its configured CAs and CA groups", req.CA))
	}
	// A not_before beyond events' bound would hold this record, and its
	// partition's commits, until then: refused on the worker's clock.
	if err := events.CheckHorizon(ev, w.cfg.Clock.Now()); err != nil {
		return w.deadLetter(jobCtx, m, err.Error())
	}
	if parked, err := w.parkEarly(jobCtx, m, req); parked || err != nil {
		return err
	}
	if err := clock.Sleep(waitCtx, req.NotBefore.Sub(w.cfg.Clock.Now())); err != nil {
		return err
	}
	// Beyond its (lane, tenant)'s share of the records this worker holds,
	// the record is parked until about its turn (fairpark.go).
	hold, stopWaiting, err := w.admitOrPark(jobCtx, m, req)
	if !hold || err != nil {
		return err
	}
	releaseSlot, owed, err := w.acquireSlot(waitCtx, req)
	stopWaiting(err == nil)
	if err != nil {
		return err
	}
	defer func() {
		if j != nil {
			j.releaseSlot() // the job may have given its slot back and taken another
		}
		releaseSlot()
	}()
	// The owner is per job, not per worker: one worker handling two copies of
	// a request at once must not let the second take over the first's claim.
	j = &job{w: w, route: rt, ca: rt.cas[0], req: req, src: m, identity: events.Identity(req.SANs), owner: w.cfg.Owner + "/" + uuid.NewString(),
		failures: failuresOf(m), releaseSlot: releaseSlot, owed: owed, skip: map[string]bool{}}
	outcome, err := j.run(jobCtx)
	w.cfg.Logger.Debug("job finished", append(j.log(), "outcome", outcome, "err", err)...)
	if errors.Is(err, errDataRefused) {
		j.releaseSlot()
		_ = j.release(jobCtx, nil)
		return w.deadLetter(jobCtx, m, events.Sanitize(err.Error(), 1000)+" (retrying would fail the same way)")
	}
	if err != nil {
		return err
	}
	w.cfg.Metrics.Jobs.WithLabelValues(outcome).Inc()
	return nil
}

// job is one request being processed.
type job struct {
	w        *Worker
	route    route // what the request's "ca" names: one CA or a group's list
	ca       CA    // the CA ordered from now (failover.go chooses it)
	req      *events.IssuanceRequest
	src      kafka.Message
	identity string
	failures int  // failed attempts so far (HeaderFailures); deferrals are not failures
	owed     bool // the order slot is its lane's reserved share: no yielding to higher lanes
	// ordersPlaced counts orders the CA created since tokens were last
	// spent for this job (placed); the first was charged by that spend.
	ordersPlaced int
	released     bool                    // the claim was handed back (release runs once)
	owner        string                  // claim owner: this worker and job
	txns         []ratelimit.Transaction // spent tokens, refunded if the CA never counted the order
	// pending is the order in flight for this request: the one a previous
	// owner left (from the claim), then each one the CA creates for us.
	pending *acmeissuer.PendingOrder
	// releaseSlot gives the order slot back once the CA's part is done, so
	// sealing, storing and publishing overlap the next order (nil: no slot).
	releaseSlot func()
	// pinned: pending is an order at ca, placed by an earlier attempt; the
	// job continues it there and never moves to another CA.
	pinned bool
	skip   map[string]bool // CAs this job left (unavailable, limited beyond FailoverAfter)
	probe  string          // the CA whose half-open probe this job holds
	// breakerUntil: the last attempt found ca unavailable and its breaker
	// open until then.
	breakerUntil time.Time
	// hb renews the claim while the job holds it (heartbeat.go).
	hb *heartbeat
	// booking is the slot an earlier owner booked for this request, due
	// now: choose orders at its CA without spending (park.go).
	booking *certstore.Booking
}

func (j *job) log() []any {
	return []any{"request_id", j.req.RequestID, "identity", j.identity, "attempt", j.req.Attempt, "ca_name", j.ca.Name}
}

func (j *job) run(ctx context.Context) (string, error) {
	w := j.w
	claim, err := j.claim(ctx)
	if err != nil {
		return "", err
	}
	switch {
	case claim.Done:
		return OutcomeRepublished, j.republish(ctx, claim.Outcome)
	case claim.Busy:
		// Another worker orders it now. Come back soon to find its outcome
		// (orders take seconds), at the latest when its lease ends (it died).
		at := w.cfg.Clock.Now().Add(w.cfg.BusyRetry)
		if claim.LeaseUntil.Before(at) {
			at = claim.LeaseUntil.Add(time.Second)
		}
		return OutcomeDeferred, j.deferUntil(ctx, at, "InFlight", j.req.RequestID, false)
	}
	j.hb = j.startHeartbeat(ctx)
	defer j.hb.end()
	if claim.Booking != nil {
		if done, err := j.redeem(ctx, claim.Booking); done || err != nil {
			return OutcomeDeferred, err
		}
	}
	if claim.Order != nil && w.cfg.Orders != nil {
		j.pending = j.openOrder(ctx, claim.Order)
		if j.pending != nil && !j.pin(claim.Order.CA) {
			w.cfg.Logger.Warn("the order a previous attempt left is at a CA no longer configured; ordering again", append(j.log(), "order", claim.Order.URL, "order_ca", claim.Order.CA)...)
			j.pending = nil
		}
	}
	// Give up only once the claim is ours: a request that succeeded meanwhile
	// (through a duplicate) is re-published above, not contradicted, and the
	// failure is recorded so later duplicates re-publish it too.
	if j.failures >= w.cfg.MaxAttempts {
		return j.failPermanently(ctx, problemTooManyAttempts, fmt.Sprintf("gave up after %d failed attempts", j.failures))
	}

	kind := ratelimit.NewOrder
	if j.req.Reason == events.ReasonRenewal {
		kind = ratelimit.Renewal
		if j.req.Replaces != "" {
			kind = ratelimit.ARIRenewal
		}
	}
	// Choose the CA (failover.go), spend its tokens, order.
	return j.issue(ctx, kind)
}

// claim claims the request. When another worker holds it under a short
// lease (renewed by its heartbeat) that ends within one Lease, the job
// waits for the lease's end once, its order slot given back meanwhile, and
// claims again: a dead owner's order is then continued at once, without a
// trip through the retry topic. A live owner renews its lease, and the
// second claim reports it Busy again.
func (j *job) claim(ctx context.Context) (certstore.ClaimResult, error) {
	w := j.w
	claim := func() (certstore.ClaimResult, error) {
		return retry(ctx, w, "claiming request", func(ctx context.Context) (certstore.ClaimResult, error) {
			return w.cfg.Claims.Claim(ctx, j.req.RequestID, j.identity, j.owner, w.cfg.Lease)
		})
	}
	c, err := claim()
	if err != nil || !c.Busy || w.cfg.Renewer == nil {
		return c, err
	}
	wait := c.LeaseUntil.Sub(w.cfg.Clock.Now()) + leaseMargin
	if wait > w.cfg.Lease+leaseMargin {
		return c, nil
	}
	j.releaseSlot()
	if err := clock.Sleep(ctx, wait); err != nil {
		return c, err
	}
	if j.releaseSlot, j.owed, err = w.acquireSlot(ctx, j.req); err != nil {
		j.releaseSlot = func() {}
		return c, err
	}
	return claim()
}

// leaseMargin is waited beyond another owner's lease before claiming
// again, for the clocks of worker and database to disagree a little.
const leaseMargin = 250 * time.Millisecond

// order runs the ACME order at j.ca, retrying retryable failures in place,
// and ends the job by the outcome: succeed, defer to the CA's Retry-After,
// fail for good, or (retryable failures persisted) retry later. It returns
// errReroute, tokens refunded, when the job should leave the CA for the next
// of its group (moveOn).
func (j *job) order(ctx context.Context) (string, error) {
	areq := j.acmeRequest(ctx)
	var last acmeissuer.Classification
	for try := 0; try <= j.w.cfg.OrderRetries; try++ {
		if try > 0 {
			if err := clock.Sleep(ctx, min(time.Duration(1<<try)*100*time.Millisecond, 5*time.Second)); err != nil {
				return "", j.release(ctx, err)
			}
		}
		result, c, err := j.attempt(ctx, areq)
		switch {
		case err == nil:
			return j.succeed(ctx, result)
		case ctx.Err() != nil:
			return "", j.release(ctx, ctx.Err())
		case errors.Is(err, errClaimLost):
			// Not ours any more: the new owner continues the recorded order
			// and publishes the outcome. The tokens stay spent (that order
			// was counted).
			j.w.cfg.Logger.Warn("the claim lapsed and another worker took the request over; leaving the order to it", j.log()...)
			return OutcomeTakenOver, nil
		case j.moveOn(ctx, c, err):
			return "", errReroute
		case c.Class == acmeissuer.RateLimited:
			return j.deferToCA(ctx, c, err)
		case c.Class == acmeissuer.Permanent:
			problem := c.ProblemType
			if problem == "" {
				problem = problemOrderFailed
			}
			return j.failPermanently(ctx, problem, events.Sanitize(firstNonEmpty(c.Detail, err.Error()), 1000))
		}
		last = c
		if !j.breakerUntil.IsZero() {
			break // the CA's breaker is open: no more tries until it lets a probe through
		}
	}
	return j.retryLater(ctx, last)
}

// acmeRequest is the order to place for the request. A renewal names the
// certificate it replaces when Previous finds it.
func (j *job) acmeRequest(ctx context.Context) acmeissuer.Request {
	w := j.w
	areq := acmeissuer.Request{
		Tenant: j.req.Tenant, SANs: j.req.SANs, Profile: j.req.Profile,
		KeyType: acmeissuer.KeyType(j.req.KeyType),
	}
	if j.req.Replaces != "" && w.cfg.Previous != nil {
		if old, err := w.cfg.Previous.ByARICertID(ctx, j.req.Replaces); err == nil {
			if leaf, err := parseLeaf(old.ChainPEM); err == nil {
				areq.Replaces = leaf
			}
		} else {
			w.cfg.Logger.Info("certificate to replace not found; ordering without replaces", append(j.log(), "replaces", j.req.Replaces)...)
		}
	}
	return areq
}

// attempt places the order once (or continues the one in flight), bounded by
// OrderTimeout. On success the order slot is given back: the CA's part is
// done. A failure is classified, counted and logged, and a failed
// validation spends the failed-authorization buckets; when ctx ended the
// error is returned unclassified.
func (j *job) attempt(ctx context.Context, areq acmeissuer.Request) (*acmeissuer.Result, acmeissuer.Classification, error) {
	w := j.w
	octx, cancel := j.orderContext(ctx)
	t0, since := time.Now(), w.cfg.Clock.Now()
	areq.Resume, areq.OnOrder = j.pending, j.placed
	result, err := j.ca.Issuer.Obtain(octx, areq)
	cancel()
	if ctx.Err() == nil {
		j.health(ctx, since, err)
	}
	if err == nil {
		w.cfg.Metrics.OrderSeconds.WithLabelValues("ok").Observe(time.Since(t0).Seconds())
		if !result.Resumed {
			w.lat.observe(j.ca.Name, time.Since(t0)) // placed and issued in this attempt
		}
		if result.Resumed {
			w.cfg.Metrics.OrdersResumed.Inc()
			w.cfg.Logger.Info("continued the order a previous attempt left", append(j.log(), "order", j.pending.URL)...)
		}
		if j.releaseSlot != nil {
			j.releaseSlot()
		}
		return result, acmeissuer.Classification{}, nil
	}
	if ctx.Err() != nil {
		return nil, acmeissuer.Classification{}, err
	}
	if j.claimLost() {
		return nil, acmeissuer.Classification{}, fmt.Errorf("%w: %w", errClaimLost, err)
	}
	c := acmeissuer.Classify(err)
	w.cfg.Metrics.OrderSeconds.WithLabelValues(c.Class.String()).Observe(time.Since(t0).Seconds())
	// The limiter spends failed authorizations when the problem means a
	// validation failed (the CA counts those), else nothing.
	if err := w.cfg.Tokens.SpendFailedAuthorizations(ctx, ratelimit.Order{Directory: j.ca.Directory, Account: j.req.Tenant, SANs: j.req.SANs}, c.ProblemType); err != nil {
		w.cfg.Logger.Warn("recording failed authorizations", append(j.log(), "err", err)...)
	}
	w.cfg.Logger.Info("order failed", append(j.log(), "class", c.Class.String(), "problem", c.ProblemType, "err", events.Sanitize(err.Error(), 300))...)
	return nil, c, err
}

// deferToCA ends a job the CA refused with a rate limit: the buckets the
// CA's 429 names are penalised until its Retry-After, so every worker backs
// off; the CA refused the order before counting it, so the tokens go back;
// and the request waits for the CA's Retry-After (RetryDelay when it sent
// none).
func (j *job) deferToCA(ctx context.Context, c acmeissuer.Classification, err error) (string, error) {
	j.penalize(ctx, err)
	j.refund(ctx)
	at := c.RetryAfter
	if at.IsZero() { // a rateLimited problem without Retry-After
		at = j.w.cfg.Clock.Now().Add(j.w.cfg.RetryDelay)
	}
	return OutcomeDeferred, j.deferUntil(ctx, at, "CA", j.ca.Directory, true)
}

// retryLater ends a job whose retryable failures (5xx, network) persisted:
// it publishes a retryable cert_failed and re-queues the request with a
// delay that grows with the attempt, or later if the CA asked so. When the
// CA's breaker is open, the request comes back when the breaker lets a probe
// through instead: the breaker's cooldown, which grows with every failed
// probe, is the backoff.
func (j *job) retryLater(ctx context.Context, last acmeissuer.Classification) (string, error) {
	w := j.w
	delay := min(w.cfg.RetryDelay<<min(j.failures, 20), w.cfg.MaxRetryDelay)
	next := w.cfg.Clock.Now().Add(delay)
	if !j.breakerUntil.IsZero() {
		next = j.breakerUntil
	}
	if last.RetryAfter.After(next) {
		next = last.RetryAfter
	}
	problem := last.ProblemType
	if problem == "" {
		problem = problemCAUnavailable
	}
	failed := &events.CertFailed{RequestID: j.req.RequestID, SANs: j.req.SANs, Tenant: j.req.Tenant, CA: j.req.CA,
		ProblemType: problem, Detail: events.Sanitize(last.Detail, 1000), Retryable: true, NextAttemptAt: next, Attempt: j.req.Attempt + 1}
	msg, err := j.encode(failed, w.cfg.Topics.Events)
	if err != nil {
		return "", err
	}
	if _, err := retry(ctx, w, "publishing cert_failed", func(ctx context.Context) (struct{}, error) {
		return struct{}{}, w.cfg.Writer.WriteMessages(ctx, msg)
	}); err != nil {
		return "", j.release(ctx, err)
	}
	return OutcomeDeferred, j.requeue(ctx, next, true)
}

// recordOrderTimeout bounds recording an order on its claim.
const recordOrderTimeout = 5 * time.Second

// keyAAD binds the sealed certificate key to its request, in the pending
// order as in the stored certificate.
func (j *job) keyAAD() []byte { return seal.AAD(seal.PurposeCertKey, j.identity, j.req.RequestID) }

// openOrder unseals the order a previous owner recorded. One that does not
// open (a keyring without its key) is logged and not resumed.
func (j *job) openOrder(ctx context.Context, o *certstore.Order) *acmeissuer.PendingOrder {
	key, err := seal.OpenPrivateKey(ctx, j.w.cfg.Sealer, o.SealedKey, j.keyAAD())
	if err != nil {
		j.w.cfg.Logger.Warn("the order a previous attempt left does not open; ordering again", append(j.log(), "order", o.URL, "err", err)...)
		return nil
	}
	return &acmeissuer.PendingOrder{URL: o.URL, Key: key}
}

// placed is acmeissuer's OnOrder, called for every order the CA creates:
// the first after a spend was charged by it; any further one (a replacement
// after a failed validation, an order that could not be continued) is
// charged to NewOrdersPerAccount now, without the check (the CA counted it
// already), so the fleet's count never drifts below the CA's. Then the order
// is recorded for the next owner (recordOrder).
func (j *job) placed(ctx context.Context, o acmeissuer.PendingOrder) {
	w := j.w
	j.ordersPlaced++
	if j.ordersPlaced > 1 {
		var extra []ratelimit.Transaction
		for _, t := range j.txns {
			if t.Name == ratelimit.NewOrdersPerAccount {
				t.Mode, t.Lead = ratelimit.ModeSpendNoCheck, 0
				extra = append(extra, t)
			}
		}
		if len(extra) > 0 {
			if _, err := w.cfg.Tokens.Spend(ctx, extra); err != nil {
				w.cfg.Logger.Warn("charging a further order to NewOrdersPerAccount failed; the fleet's count is one below the CA's", append(j.log(), "order", o.URL, "err", err)...)
			}
		}
	}
	if w.cfg.Orders != nil {
		j.recordOrder(ctx, o)
	}
}

// recordOrder keeps the order the CA just
// created, key sealed, on the claimed request. A failure is logged: the order
// goes on, only a crash before it ends would cost a second order. It runs
// inside the order, so an unreachable database may hold it for
// recordOrderTimeout at most.
func (j *job) recordOrder(ctx context.Context, o acmeissuer.PendingOrder) {
	w := j.w
	j.pending = &o
	ctx, cancel := context.WithTimeout(ctx, recordOrderTimeout)
	defer cancel()
	sealed, err := seal.SealPrivateKey(ctx, w.cfg.Sealer, o.Key, j.keyAAD())
	if err == nil {
		err = w.cfg.Orders.RecordOrder(ctx, j.req.RequestID, j.owner, certstore.Order{URL: o.URL, SealedKey: sealed, CA: j.ca.Directory})
	}
	if err != nil {
		w.cfg.Logger.Warn("could not record the order; a crash now would cost a second order", append(j.log(), "order", o.URL, "err", err)...)
	}
}

// succeed seals the key, stores certificate and outcome together, then
// publishes the outcome.
func (j *job) succeed(ctx context.Context, r *acmeissuer.Result) (string, error) {
	w := j.w
	sealed, err := seal.SealPrivateKey(ctx, w.cfg.Sealer, r.PrivateKey, j.keyAAD())
	if err != nil {
		return "", j.release(ctx, fmt.Errorf("sealing the certificate key: %w", err))
	}
	ob := &events.CertObtained{
		RequestID: j.req.RequestID, SANs: j.req.SANs, Tenant: j.req.Tenant, CA: j.issuedBy(),
		Serial: r.Serial, NotBefore: r.NotBefore.UTC(), NotAfter: r.NotAfter.UTC(), ChainPEM: string(r.ChainPEM),
		ARICertID: r.ARICertID, Issuer: r.Leaf.Issuer.String(), Replaces: j.req.Replaces, Attempts: j.req.Attempt + 1,
	}
	msg, err := j.encode(ob, w.cfg.Topics.Events)
	if err != nil {
		// The CA's chain did not pass our own event checks: record the failure
		// rather than loop; the certificate is not stored.
		return j.failPermanently(ctx, problemBadCertificate, err.Error())
	}
	stored, err := encodeStored(msg)
	if err != nil {
		return "", err
	}
	if err := j.deliver(ctx, r); err != nil {
		return "", j.release(ctx, err)
	}
	issued := certstore.Issued{Identity: j.identity, RequestID: j.req.RequestID, Serial: r.Serial, ARICertID: r.ARICertID,
		NotBefore: r.NotBefore, NotAfter: r.NotAfter, ChainPEM: string(r.ChainPEM), SealedKey: sealed, Issuer: ob.Issuer, Tenant: j.req.Tenant}
	if _, err := retry(ctx, w, "storing certificate", func(ctx context.Context) (struct{}, error) {
		return struct{}{}, w.cfg.Claims.Complete(ctx, j.owner, issued, stored)
	}); err != nil {
		if errors.Is(err, certstore.ErrNotOwner) {
			// Our lease ran out and another worker took the request over; it
			// will publish its own outcome. This record is finished.
			w.cfg.Logger.Warn("lost the request to another worker before storing", j.log()...)
			return OutcomeRepublished, nil
		}
		return "", err
	}
	if _, err := retry(ctx, w, "publishing cert_obtained", func(ctx context.Context) (struct{}, error) {
		return struct{}{}, w.cfg.Writer.WriteMessages(ctx, msg)
	}); err != nil {
		return "", err // stored: a redelivery re-publishes it
	}
	w.cfg.Logger.Info("certificate obtained", append(j.log(), "serial", r.Serial)...)
	return OutcomeObtained, nil
}

// deliver seals the certificate's key to its recipients (Config.Delivery)
// before the certificate is stored: a crash after storing would re-publish
// the stored outcome and never deliver, a crash before it resumes or
// re-orders and delivers again (same delivery ids for the same certificate).
func (j *job) deliver(ctx context.Context, r *acmeissuer.Result) error {
	w := j.w
	if w.cfg.Delivery == nil {
		return nil
	}
	c := delivery.Certificate{Identity: j.identity, RequestID: j.req.RequestID, Tenant: j.req.Tenant, SANs: j.req.SANs,
		Serial: r.Serial, NotBefore: r.NotBefore, NotAfter: r.NotAfter, ChainPEM: string(r.ChainPEM), Key: r.PrivateKey}
	_, err := retry(ctx, w, "delivering the key to its recipients", func(ctx context.Context) (struct{}, error) {
		return struct{}{}, w.cfg.Delivery.Deliver(ctx, c)
	})
	return err
}

// failPermanently records the cert_failed that ends the request on its claim
// (so later duplicates re-publish it) and publishes it. The job holds the
// claim: every caller runs after Claim acquired it.
func (j *job) failPermanently(ctx context.Context, problem, detail string) (string, error) {
	w := j.w
	w.cfg.Logger.Warn("request failed permanently", append(j.log(), "problem", problem, "detail", events.Sanitize(detail, 300))...)
	f := &events.CertFailed{RequestID: j.req.RequestID, SANs: j.req.SANs, Tenant: j.req.Tenant, CA: j.req.CA,
		ProblemType: problem, Detail: events.Sanitize(detail, 1000), Attempt: j.req.Attempt + 1}
	msg, err := j.encode(f, w.cfg.Topics.Events)
	if err != nil {
		return "", err
	}
	stored, err := encodeStored(msg)
	if err != nil {
		return "", err
	}
	if _, err := retry(ctx, w, "recording failure", func(ctx context.Context) (struct{}, error) {
		return struct{}{}, w.cfg.Claims.Fail(ctx, j.req.RequestID, j.owner, stored)
	}); err != nil && !errors.Is(err, certstore.ErrNotOwner) {
		return "", err
	}
	if _, err := retry(ctx, w, "publishing cert_failed", func(ctx context.Context) (struct{}, error) {
		return struct{}{}, w.cfg.Writer.WriteMessages(ctx, msg)
	}); err != nil {
		return "", err
	}
	return OutcomeFailed, nil
}

// deferUntil publishes issuance_deferred and re-queues the request for at.
func (j *job) deferUntil(ctx context.Context, at time.Time, limit, key string, claimed bool) error {
	w := j.w
	w.cfg.Logger.Info("request deferred", append(j.log(), "limit", limit, "key", key, "retry_at", at)...)
	d := &events.IssuanceDeferred{RequestID: j.req.RequestID, SANs: j.req.SANs, Tenant: j.req.Tenant, CA: j.req.CA,
		Limit: limit, LimitKey: events.Sanitize(key, 500), RetryAt: at.UTC(), Attempt: j.req.Attempt + 1}
	msg, err := j.encode(d, w.cfg.Topics.Events)
	if err != nil {
		return err
	}
	if _, err := retry(ctx, w, "publishing issuance_deferred", func(ctx context.Context) (struct{}, error) {
		return struct{}{}, w.cfg.Writer.WriteMessages(ctx, msg)
	}); err != nil {
		if claimed {
			return j.release(ctx, err)
		}
		return err
	}
	if !claimed {
		return j.requeueOnly(ctx, at, false)
	}
	return j.requeue(ctx, at, false)
}

// requeue hands the claim back and puts the request on the retry topic.
func (j *job) requeue(ctx context.Context, at time.Time, failed bool) error {
	if err := j.requeueOnly(ctx, at, failed); err != nil {
		return j.release(ctx, err)
	}
	return j.release(ctx, nil)
}

// requeueOnly puts the request on the retry topic for at: its attempt one
// more (every re-publication), its failures one more only when this attempt
// failed (HeaderFailures).
func (j *job) requeueOnly(ctx context.Context, at time.Time, failed bool) error {
	msg, err := j.next(at, failed)
	if err != nil {
		return err
	}
	return j.enqueue(ctx, msg, at)
}

// next is the retry record of the request for at: its attempt one more,
// its failures one more only when failed.
func (j *job) next(at time.Time, failed bool) (kafka.Message, error) {
	next := *j.req
	next.NotBefore = at.UTC()
	next.Attempt = j.req.Attempt + 1
	msg, err := j.encode(&next, j.w.cfg.Topics.Retry)
	if err != nil {
		return msg, err
	}
	failures := j.failures
	if failed {
		failures++
	}
	return withFailures(msg, failures), nil
}

// release hands the claim back so the next delivery can take it at once,
// and returns cause (nil when the job ended cleanly).
func (j *job) release(ctx context.Context, cause error) error {
	w := j.w
	if j.released {
		return cause // released on the way out of run already
	}
	j.released = true
	rctx := ctx
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
	}
	if err := w.cfg.Claims.Release(rctx, j.req.RequestID, j.owner); err != nil && !errors.Is(err, certstore.ErrNotOwner) {
		// The lease expires on its own; only a delay results.
		w.cfg.Logger.Warn("releasing claim failed", append(j.log(), "err", err)...)
	}
	return cause
}

func (j *job) refund(ctx context.Context) {
	if len(j.txns) == 0 {
		return
	}
	if err := j.w.cfg.Tokens.Refund(ctx, j.txns); err != nil {
		j.w.cfg.Logger.Warn("refunding tokens failed; the budget stays spent until it refills", append(j.log(), "err", err)...)
	}
	j.txns = nil
}

func (j *job) republish(ctx context.Context, stored []byte) error {
	msg, err := decodeStored(stored, j.w.cfg.Topics.Events)
	if err != nil {
		return err
	}
	_, err = retry(ctx, j.w, "re-publishing the stored outcome", func(ctx context.Context) (struct{}, error) {
		return struct{}{}, j.w.cfg.Writer.WriteMessages(ctx, msg)
	})
	return err
}

func (j *job) encode(p events.Payload, topic string) (kafka.Message, error) {
	ev, err := events.New(j.w.cfg.Source, j.w.cfg.Clock.Now(), p)
	if err != nil {
		return kafka.Message{}, fmt.Errorf("building %s event: %w", p.EventType(), err)
	}
	m, err := events.Encode(ev)
	if err != nil {
		return kafka.Message{}, fmt.Errorf("encoding %s event: %w", p.EventType(), err)
	}
	m.Topic = topic
	return m, nil
}

// deadLetter moves a record that can never succeed to the DLQ, unchanged,
// with why and where from in its headers. A record the DLQ refuses for good
// (too large once uncompressed, an invalid record) or one holding private
// key material goes as a stub (events.WriteDeadLetter), so the partition's
// commits never stop behind it; only errors that hold every record (an
// unreachable broker, a missing topic) are retried.
func (w *Worker) deadLetter(ctx context.Context, m kafka.Message, reason string) error {
	d := events.DeadLetter{
		Reason: reason, Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Group: w.cfg.Owner, Time: w.cfg.Clock.Now(),
	}
	rec, err := retry(ctx, w, "writing to the dead-letter topic", func(ctx context.Context) (kafka.Message, error) {
		return events.WriteDeadLetter(ctx, w.cfg.Writer, w.cfg.Topics.DLQ, m, d)
	})
	if err != nil {
		return err
	}
	// The reason as written: sanitised, and cut before any quoted key material.
	written, _ := events.ReadDeadLetter(rec)
	if written.Stub != "" {
		w.cfg.Logger.Warn("record dead-lettered as a stub (its size, SHA-256 and a prefix; not the record)", "topic", m.Topic, "partition", m.Partition,
			"offset", m.Offset, "stub", written.Stub, "bytes", len(m.Value), "reason", events.Sanitize(written.Reason, 300))
		w.cfg.Metrics.DLQStubs.WithLabelValues(written.Stub).Inc()
	} else {
		w.cfg.Logger.Warn("record dead-lettered", "topic", m.Topic, "partition", m.Partition, "offset", m.Offset, "reason", events.Sanitize(written.Reason, 300))
	}
	w.cfg.Metrics.Jobs.WithLabelValues(OutcomeDeadLettered).Inc()
	return nil
}

// penalize records the CA's 429 (a rate-limited *acmeissuer.CAError) on the
// buckets of the order ratelimit reads it to name (ratelimit.PenaltyTargets:
// the limit the CA's words name, else every bucket but the fleet budget),
// through the limiter, until the CA's Retry-After. A failure is logged: the
// job defers to the CA regardless.
func (j *job) penalize(ctx context.Context, err error) {
	var ca *acmeissuer.CAError
	if !errors.As(err, &ca) || !ca.RateLimited() {
		return
	}
	for _, t := range ratelimit.PenaltyTargets(j.txns, ca.Detail) {
		if perr := j.w.cfg.Tokens.Penalize(ctx, t, ca.RetryAfter); perr != nil {
			j.w.cfg.Logger.Warn("recording the CA's penalty", append(j.log(), "bucket", t.Key(), "err", perr)...)
		}
	}
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
