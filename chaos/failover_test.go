package chaos

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/certfleet/certfleet/testenv/caproxy"
)

// TestCAFailover: two CAs (each its own proxy in front of the stack's
// Pebble), every request naming the group pebble+pebble2. The preferred
// CA answers every POST 250 ms late, so orders are in flight there when its
// proxy stops mid-run (new connections refused, as an outage); it starts
// again at least 8 s later (the breaker's probes fail meanwhile), each time
// just before a new wave of requests. Beyond verify's invariants (every
// request obtained, no order placed twice at a CA or at both), requests move
// to the second CA while the first is down, the orders caught at the first
// are continued there once it is back, and new requests return to it once
// its breaker closes: after that, the second CA gets no new order.
func TestCAFailover(t *testing.T) {
	sz := sizeFor(t)
	cfg := standard(sz)
	cfg.failover = true
	ctx, cancel := context.WithTimeout(context.Background(), sz.timeout)
	defer cancel()
	f := newFleet(t, ctx, cfg)
	if err := f.proxy.SetFaults(caproxy.Faults{Slow: 1, SlowDelay: 250 * time.Millisecond, AllPOSTs: true}); err != nil {
		t.Fatal(err)
	}
	valid := f.requests(sz.jobs, 10)
	msgs := encodeAll(t, valid)
	wave := (len(msgs) + 2) / 3
	f.publish(msgs[:wave])
	sent := wave

	const (
		up = iota
		down
		restarted // the CA serves again; its breaker has not closed yet
		back      // its breaker closed: the last wave goes out
	)
	phase := up
	var stopped, started time.Time
	var atStop map[string]int
	var stateWhileDown string
	maxOpens := 0
	o := f.waitDoneWith(valid, 0, func(obtained int, o outcome) {
		by := map[string]int{}
		for _, ca := range o.issuedBy {
			by[ca]++
		}
		if phase == down {
			var opens int
			if err := f.d.Pool().QueryRow(f.ctx, `SELECT opens FROM ca_health WHERE ca = $1`, caName).Scan(&opens); err == nil {
				maxOpens = max(maxOpens, opens)
			}
		}
		switch {
		case phase == up && obtained >= wave/2:
			if err := f.proxy.Stop(2 * time.Second); err != nil {
				t.Fatalf("stopping %s's proxy: %v", caName, err)
			}
			phase, stopped, atStop = down, time.Now(), maps.Clone(by)
			t.Logf("%v: %s stopped at %d obtained (%v)", time.Since(f.t0).Round(time.Millisecond), caName, obtained, by)
			f.publish(msgs[sent : sent+wave])
			sent += wave
		case phase == down && by[caName2] >= atStop[caName2]+wave/2 && time.Since(stopped) >= 8*time.Second:
			// The breaker as a worker's metrics show it while the CA is down.
			f.mu.Lock()
			listen := f.live[0].listen
			f.mu.Unlock()
			stateWhileDown = scrapeGauge(f.ctx, listen, `certfleet_worker_ca_state{ca="`+caName+`"}`)
			if err := f.proxy.Start(f.ctx); err != nil {
				t.Fatalf("starting %s's proxy again: %v", caName, err)
			}
			phase, started = restarted, time.Now()
			t.Logf("%v: %s started again after %v, at %d obtained (%v)", time.Since(f.t0).Round(time.Millisecond), caName,
				started.Sub(stopped).Round(time.Millisecond), obtained, by)
		case phase == restarted:
			// The last wave goes out once a probe closed the breaker: the
			// fleet has learnt the CA is back.
			var closed bool
			if err := f.d.Pool().QueryRow(f.ctx, `SELECT open_until IS NULL FROM ca_health WHERE ca = $1`, caName).Scan(&closed); err != nil || !closed {
				return
			}
			phase = back
			t.Logf("%v: %s's breaker closed, at %d obtained (%v)", time.Since(f.t0).Round(time.Millisecond), caName, obtained, by)
			f.publish(msgs[sent:])
			sent = len(msgs)
		}
	})
	if phase != back {
		t.Fatalf("the run ended in phase %d: the outage never went as planned", phase)
	}
	r := f.verify("CA failover", sz, valid, 0, o)

	// The breaker opened (the state the metric showed) and closed again
	// after the CA came back.
	if stateWhileDown != "2" && stateWhileDown != "1" {
		t.Errorf("certfleet_worker_ca_state{ca=%q} = %s while its CA was down, want 2 (open) or 1 (half-open)", caName, stateWhileDown)
	}
	if maxOpens < 2 {
		t.Errorf("%s's breaker opened %d times while it was down; want a failed probe to open it again", caName, maxOpens)
	}
	if r.Resumed == 0 {
		t.Errorf("no order caught at %s by the outage was continued (orders_resumed 0)", caName)
	}
	var closedAt *time.Time
	var opens int
	if err := f.d.Pool().QueryRow(ctx, `SELECT closed_at, opens FROM ca_health WHERE ca = $1`, caName).Scan(&closedAt, &opens); err != nil {
		t.Fatalf("reading %s's breaker: %v", caName, err)
	}
	if closedAt == nil || closedAt.Before(started) || opens != 0 {
		t.Fatalf("%s's breaker: closed at %v (started again at %v), opens %d; want closed after the CA came back", caName, closedAt, started, opens)
	}
	// Orders as each CA saw them: at the second while the first was down,
	// at the first again once its breaker closed, none at the second after
	// the workers learnt it (each reads the breaker at most once a second).
	between := func(times []time.Time, from, to time.Time) int {
		n := 0
		for _, at := range times {
			if !at.Before(from) && at.Before(to) {
				n++
			}
		}
		return n
	}
	st1, st2 := f.proxy.Stats(), f.proxy2.Stats()
	far := time.Now().Add(time.Hour)
	settled := closedAt.Add(2 * time.Second)
	downAt2, backAt1, lateAt2 := between(st2.OrderTimes, stopped, started), between(st1.OrderTimes, *closedAt, far), between(st2.OrderTimes, settled, far)
	if downAt2 == 0 {
		t.Errorf("no order reached %s while %s was down", caName2, caName)
	}
	if backAt1 == 0 {
		t.Errorf("no order reached %s after its breaker closed", caName)
	}
	if lateAt2 != 0 {
		t.Errorf("%d orders reached %s more than 2s after %s's breaker closed; want none", lateAt2, caName2, caName)
	}
	if r.IssuedBy[caName] == 0 || r.IssuedBy[caName2] == 0 || r.IssuedBy[caName]+r.IssuedBy[caName2] != len(valid) {
		t.Errorf("issued by %v; want both CAs, %d in all", r.IssuedBy, len(valid))
	}
	for name, st := range map[string]int{caName: st1.Orders, caName2: st2.Orders} {
		t.Logf("%s: %d orders", name, st)
	}
	t.Logf("orders at %s while %s was down: %d; at %s after its breaker closed (%v): %d; at %s after that: %d",
		caName2, caName, downAt2, caName, closedAt.Sub(started).Round(time.Millisecond), backAt1, caName2, lateAt2)
}
