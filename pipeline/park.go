package pipeline

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/ratelimit"
)

// Queues, not herds. A request denied by a limit books the next free slot
// of its buckets (Config.Booker, ratelimit's Book: the n-th waiter on a
// bucket gets the n-th slot, and the booking is the spend), and waits for
// it outside the worker's memory (Config.Parking): the retry record is
// parked in the database until the slot, the booking kept on the claim,
// and the Kafka record committed. Every worker relays due parked records to
// the retry topic (ParkRelay); the worker that claims the request then
// finds the booking and orders at once, without spending again. So a queue
// under one domain drains at exactly the domain's rate, each wake-up
// succeeds, and a waiting request holds no MaxPending slot and no
// partition commit.
//
// Crash safety, step by step (each step is retried until it passes or the
// worker stops; a stopped job's record is not committed and comes back):
//
//	book            crash after: the booking is lost with the job (its slot
//	                over-charged, never over-spent); the record comes back and books again
//	publish issuance_deferred
//	park            crash after: the row is relayed at the slot; the claim,
//	                not yet released, lapses; no booking is found, so the job books again
//	release the claim with the booking
//	commit          crash before: the record comes back, finds the booking and
//	                parks itself again until its slot (the row is replaced, not doubled)
//	relay: write to the retry topic, then delete the row; crash in between writes
//	                it again: a duplicate the claim absorbs

// errNoParking means a booking could not be kept: the worker parks nothing.
var errNoParking = errors.New("pipeline: no Parking configured")

// parks reports whether a wait until at is long enough to park: beyond
// MaxInlineWait, and a Parking configured.
func (j *job) parks(at time.Time) bool {
	return j.w.cfg.Parking != nil && at.Sub(j.w.cfg.Clock.Now()) > j.w.cfg.MaxInlineWait
}

// enqueue puts msg, the request re-queued for at, where it waits: parked
// in the database when the wait is long (parks), else on the retry topic.
func (j *job) enqueue(ctx context.Context, msg kafka.Message, at time.Time) error {
	w := j.w
	if !j.parks(at) {
		_, err := retry(ctx, w, "re-queueing the request", func(ctx context.Context) (struct{}, error) {
			return struct{}{}, w.cfg.Writer.WriteMessages(ctx, msg)
		})
		return err
	}
	return w.park(ctx, j.req.RequestID, j.identity, msg, at)
}

// park keeps msg in the database until at (Parking.Park).
func (w *Worker) park(ctx context.Context, requestID, identity string, msg kafka.Message, at time.Time) error {
	rec, err := encodeStored(msg)
	if err != nil {
		return fmt.Errorf("encoding the record to park: %w", err)
	}
	p := certstore.Parked{RequestID: requestID, Identity: identity, Due: at, Record: rec}
	_, err = retry(ctx, w, "parking the request", func(ctx context.Context) (struct{}, error) {
		if w.parks != nil {
			return struct{}{}, w.parks.park(ctx, p)
		}
		return struct{}{}, w.cfg.Parking.Park(ctx, p)
	})
	return err
}

// parkEarly parks a record whose not_before is further than MaxInlineWait
// ahead (a producer's, or a duplicate of a parked request) instead of
// holding it, and its partition's commits, in memory until then. It
// reports whether it did.
func (w *Worker) parkEarly(ctx context.Context, m kafka.Message, req *events.IssuanceRequest) (bool, error) {
	if w.cfg.Parking == nil || req.NotBefore.Sub(w.cfg.Clock.Now()) <= w.cfg.MaxInlineWait {
		return false, nil
	}
	msg := kafka.Message{Topic: w.cfg.Topics.Retry, Key: m.Key, Value: m.Value, Headers: m.Headers}
	return true, w.park(ctx, req.RequestID, events.Identity(req.SANs), msg, req.NotBefore)
}

// deferBooked ends a job whose tokens were booked for a slot at ca (res):
// issuance_deferred names the limit and the slot, the request is parked
// until the slot, and the claim released with the booking, so whoever
// claims it then orders without spending again.
func (j *job) deferBooked(ctx context.Context, ca CA, res ratelimit.Result) (string, error) {
	limit, key := "unknown", "unknown"
	if res.Limiting != nil {
		limit, key = string(res.Limiting.Name), res.Limiting.Key()
	}
	b := certstore.Booking{CA: ca.Directory, At: res.At}
	return OutcomeDeferred, j.deferWithBooking(ctx, b, limit, key)
}

// deferWithBooking publishes issuance_deferred for b.At, parks the request
// until then and releases the claim keeping b.
func (j *job) deferWithBooking(ctx context.Context, b certstore.Booking, limit, key string) error {
	w := j.w
	if w.cfg.Parking == nil {
		return j.release(ctx, errNoParking)
	}
	w.cfg.Logger.Info("request deferred to its booked slot", append(j.log(), "limit", limit, "key", key, "retry_at", b.At)...)
	d := &events.IssuanceDeferred{RequestID: j.req.RequestID, SANs: j.req.SANs, Tenant: j.req.Tenant, CA: j.req.CA,
		Limit: limit, LimitKey: events.Sanitize(key, 500), RetryAt: b.At.UTC(), Attempt: j.req.Attempt + 1}
	msg, err := j.encode(d, w.cfg.Topics.Events)
	if err != nil {
		return j.release(ctx, err)
	}
	if _, err := retry(ctx, w, "publishing issuance_deferred", func(ctx context.Context) (struct{}, error) {
		return struct{}{}, w.cfg.Writer.WriteMessages(ctx, msg)
	}); err != nil {
		return j.release(ctx, err)
	}
	next, err := j.next(b.At, false)
	if err != nil {
		return j.release(ctx, err)
	}
	if err := w.park(ctx, j.req.RequestID, j.identity, next, b.At); err != nil {
		return j.release(ctx, err)
	}
	j.released = true
	if _, err := retry(ctx, w, "releasing the claim with its booking", func(ctx context.Context) (struct{}, error) {
		return struct{}{}, w.cfg.Parking.ReleaseBooked(ctx, j.req.RequestID, j.owner, b)
	}); err != nil && !errors.Is(err, certstore.ErrNotOwner) {
		return err
	}
	return nil
}

// redeem is called with the booking the claim returned: a slot still
// further than MaxInlineWait ahead (the record came back early: a
// duplicate, a crash before the commit) parks the request again until it,
// booking kept (done); a nearer one is waited for in place, and the job
// then orders at the booking's CA without spending (choose).
func (j *job) redeem(ctx context.Context, b *certstore.Booking) (done bool, err error) {
	w := j.w
	if b.At.Sub(w.cfg.Clock.Now()) > w.cfg.MaxInlineWait && w.cfg.Parking != nil {
		return true, j.deferWithBooking(ctx, *b, "Booked", b.CA)
	}
	if err := clock.Sleep(ctx, b.At.Sub(w.cfg.Clock.Now())); err != nil {
		return false, j.release(ctx, err)
	}
	j.booking = b
	return false, nil
}
