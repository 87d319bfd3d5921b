package pipeline_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/pipeline"
	"github.com/certfleet/certfleet/ratelimit"
)

// envQueueRequests sets how many requests TestQueueDrainsAtTheDomainRate
// queues under one registered domain (default 300, about a minute at the
// test's 5 per second; 5000 is the full size, about 17 minutes).
const envQueueRequests = "CERTFLEET_QUEUE_REQUESTS"

// Queues, not herds: many requests under one registered domain whose
// CertificatesPerDomain admits 5 a second (burst 5), through two workers
// that park waits longer than 100 ms and may hold only 8 records each.
// Every request is obtained and none fails; each denied request books its
// own slot (the slots distinct and one interval apart: the queue drains at
// exactly the domain's rate), is deferred once (run with
// CERTFLEET_QUEUE_REQUESTS=5000 for the full size) and ordered at its first
// wake-up; at most 2 records per request reach the retry topic.
func TestQueueDrainsAtTheDomainRate(t *testing.T) {
	n := 300
	if v := os.Getenv(envQueueRequests); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 10 {
			t.Fatalf("%s=%q: want a number of requests, at least 10", envQueueRequests, v)
		}
	}
	const rate, burst = 5, 5 // per second
	interval := time.Second / rate
	limits := ratelimit.LetsEncryptLimits()
	limits[ratelimit.FleetOrdersPerSecond] = ratelimit.LimitConfig{Limit: ratelimit.Limit{Count: 1000, Period: time.Second, Burst: 1000}}
	limits[ratelimit.NewOrdersPerAccount] = ratelimit.LimitConfig{Limit: ratelimit.Limit{Count: 1_000_000, Period: time.Hour, Burst: 1_000_000}}
	limits[ratelimit.CertificatesPerDomain] = ratelimit.LimitConfig{Limit: ratelimit.Limit{Count: rate, Period: time.Second, Burst: burst}}
	st := newStack(t, limits)
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(n/rate)*time.Second*2+2*time.Minute)
	defer cancel()
	st.serveHTTP01(t)
	domain := "queue-" + st.suffix + ".test"
	var reqs []*events.IssuanceRequest
	var names []string
	for i := range n {
		name := fmt.Sprintf("q%d.%s", i, domain)
		names = append(names, name)
		reqs = append(reqs, request(fmt.Sprintf("q-%d-%s", i, st.suffix), name))
	}
	st.pointAt(t, ctx, names...)
	for _, name := range []string{"worker-a", "worker-b"} {
		w := st.worker(t, name, func(c *pipeline.Config) {
			c.Parking, c.Booker, c.MaxInlineWait, c.MaxPending = st.store, st.limiter, 100*time.Millisecond, 8
			// The issuance lead records each spend up to the lead later and
			// checks it now: at a limit this fast (5 a second, burst 5) a
			// lead longer than (burst-1) intervals lowers the rate the queue
			// drains at (docs/architecture.md). This test is about the queue.
			c.Lead = pipeline.LeadPolicy{Off: true}
		})
		st.run(t, w, "g-"+st.suffix)
		relay := &pipeline.ParkRelay{Source: st.store, Writer: st.producer, Topic: st.topics.Retry, Owner: name, Interval: 50 * time.Millisecond}
		rctx, stop := context.WithCancel(context.Background())
		t.Cleanup(stop)
		go relay.Run(rctx)
	}
	t0 := time.Now()
	st.publish(t, ctx, reqs...)

	obtained := map[string]time.Time{}
	all := collect(t, ctx, st.s.KafkaBrokers, st.topics.Events, func(msgs []kafka.Message) bool {
		for _, m := range msgs {
			if ev, err := events.Decode(m); err == nil {
				if o, ok := ev.Data.(*events.CertObtained); ok {
					if _, seen := obtained[o.RequestID]; !seen {
						obtained[o.RequestID] = ev.Time
					}
				}
			}
		}
		return len(obtained) >= n
	})
	took := time.Since(t0)
	var slots []time.Time
	deferrals := map[string]int{}
	failed := 0
	for _, m := range all {
		ev, err := events.Decode(m)
		if err != nil {
			t.Fatalf("undecodable event: %v", err)
		}
		switch d := ev.Data.(type) {
		case *events.IssuanceDeferred:
			deferrals[d.RequestID]++
			if d.Limit == string(ratelimit.CertificatesPerDomain) {
				slots = append(slots, d.RetryAt)
			}
		case *events.CertFailed:
			failed++
			t.Errorf("cert_failed for %s: %s %s", d.RequestID, d.ProblemType, d.Detail)
		}
	}
	if len(obtained) != n || failed != 0 {
		t.Fatalf("%d of %d obtained, %d failed", len(obtained), n, failed)
	}
	for id, k := range deferrals {
		if k > 1 {
			t.Errorf("%s was deferred %d times: its first wake-up did not order", id, k)
		}
	}
	retried := map[string]int{}
	for _, m := range readAll(t, ctx, st.s.KafkaBrokers, st.topics.Retry) {
		ev, err := events.Decode(m)
		if err != nil {
			t.Fatalf("undecodable retry record: %v", err)
		}
		retried[ev.Data.(*events.IssuanceRequest).RequestID]++
	}
	most := 0
	for id, k := range retried {
		most = max(most, k)
		if k > 2 {
			t.Errorf("%s has %d records on the retry topic, want at most 2", id, k)
		}
	}
	// The booked slots: distinct, one interval apart (the n-th waiter the
	// n-th slot), so the waiting part of the queue drains at the rate.
	slices.SortFunc(slots, time.Time.Compare)
	for i := 1; i < len(slots); i++ {
		if gap := slots[i].Sub(slots[i-1]); gap < interval {
			t.Errorf("booked slots %d and %d only %v apart (%v, %v), want at least %v", i-1, i, gap, slots[i-1], slots[i], interval)
		}
	}
	var scheduled float64
	if len(slots) > 1 {
		scheduled = float64(len(slots)-1) / slots[len(slots)-1].Sub(slots[0]).Seconds()
	}
	// Nearly all: a record the worker parked for its turn (fairpark.go) may
	// come back when a token is free and spend it without a booking.
	if len(slots) < n-4*burst || scheduled < 0.99*rate {
		t.Errorf("%d of %d requests booked slots, at %.3f/s: want nearly all at the domain's %d/s", len(slots), n, scheduled, rate)
	}
	t.Logf("QUEUE %d requests under %s at %d/s: %d deferred to booked slots (%.3f/s scheduled), %d retry records (at most %d per request), 0 failed; drained in %v (%.2f/s measured)",
		n, domain, rate, len(slots), scheduled, len(retried), most, took.Round(time.Millisecond), float64(n)/took.Seconds())
}
