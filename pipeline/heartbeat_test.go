package pipeline

import (
	"context"
	"testing"
	"time"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/clock"
)

// An order longer than the lease: the heartbeat keeps the claim the job's
// (three renewals happen while the CA works), and the certificate is
// stored by the job that ordered it.
func TestHeartbeatKeepsTheClaimThroughALongOrder(t *testing.T) {
	h := newHarness(t)
	h.issuer.obtain = func(ctx context.Context, req acmeissuer.Request, _ int64) (*acmeissuer.Result, error) {
		for h.claims.renewed() < 3 {
			if err := sleepCtx(ctx, time.Millisecond); err != nil {
				return nil, err
			}
		}
		return issueTest(req.SANs)
	}
	w := h.worker(func(c *Config) { c.Renewer, c.Lease, c.Heartbeat = h.claims, 15*time.Second, 5*time.Millisecond })
	m := record(t, h.topics.Requests, 0, 7, newRequest("req-1", "www.example.com"))
	rr := h.run(w, 5*time.Second, m)
	rr.waitIdle()
	rr.stop()
	r := run{msgs: h.writer.on(h.topics.Events)}
	r.events = decoded(t, r.msgs)
	checkWant(t, h, r, want{events: []events.Type{events.TypeCertObtained}, orders: 1, completes: 1})
}

// A claim lost while the CA works (the heartbeat could not renew it in
// time and another worker claimed the request): the order attempt stops at
// once, and the job publishes nothing, neither a failure nor a deferral,
// and does not touch the new owner's claim: the new owner continues the
// recorded order. The record is finished.
func TestLostClaimLeavesTheOrderToTheNewOwner(t *testing.T) {
	h := newHarness(t)
	h.issuer.obtain = func(ctx context.Context, req acmeissuer.Request, _ int64) (*acmeissuer.Result, error) {
		h.claims.takeOver("req-1", "other-worker/job")
		<-ctx.Done() // the CA is slow; only the lost claim ends the attempt
		return nil, ctx.Err()
	}
	w := h.worker(func(c *Config) { c.Renewer, c.Lease, c.Heartbeat = h.claims, 15*time.Second, 5*time.Millisecond })
	m := record(t, h.topics.Requests, 0, 7, newRequest("req-1", "www.example.com"))
	rr := h.run(w, 5*time.Second, m)
	rr.waitIdle()
	rr.stop()
	if got := rr.f.committed(0); len(got) != 1 || got[0] != 7 {
		t.Errorf("commits %v, want the record's offset 7", got)
	}
	r := run{msgs: h.writer.on(h.topics.Events)}
	r.events = decoded(t, r.msgs)
	checkWant(t, h, r, want{orders: 1})
	if owner := h.claims.rows["req-1"].owner; owner != "other-worker/job" {
		t.Errorf("claim owner %q after the job, want the new owner's", owner)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// A request whose owner died (its short lease lapses soon, nobody renews
// it): the job waits for the lease's end and continues, with no deferral
// and no record on the retry topic. An owner that lives renews its lease,
// and the job defers to it as before.
func TestBusyOnAShortLease(t *testing.T) {
	for _, tc := range []struct {
		name  string
		alive bool
		want  want
	}{
		{"dead owner: waited for, then taken over", false, want{events: []events.Type{events.TypeCertObtained}, orders: 1, completes: 1}},
		{"live owner: deferred", true, want{events: []events.Type{events.TypeIssuanceDeferred}, retry: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.claims = newFakeClaims(clock.System{})
			h.claims.rows["req-1"] = &claimRow{owner: "other/job", until: time.Now().Add(100 * time.Millisecond), state: certstore.StateOrdering, attempts: 1}
			if tc.alive {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				go func() {
					for sleepCtx(ctx, 20*time.Millisecond) == nil {
						_ = h.claims.Renew(ctx, "req-1", "other/job", 200*time.Millisecond)
					}
				}()
			}
			w := h.worker(func(c *Config) {
				c.Clock, c.Renewer, c.Lease, c.Heartbeat = clock.System{}, h.claims, 15*time.Second, 5*time.Millisecond
			})
			m := record(t, h.topics.Requests, 0, 7, newRequest("req-1", "www.example.com"))
			rr := h.run(w, 5*time.Second, m)
			rr.waitIdle()
			rr.stop()
			r := run{msgs: h.writer.on(h.topics.Events), raw: h.writer.on(h.topics.Retry)}
			r.events, r.retry = decoded(t, r.msgs), decoded(t, r.raw)
			checkWant(t, h, r, tc.want)
		})
	}
}
