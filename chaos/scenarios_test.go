package chaos

import (
	"context"
	"testing"
	"time"

	"github.com/certfleet/certfleet/testenv"
	"github.com/certfleet/certfleet/testenv/caproxy"
)

// standard is the fleet every scenario starts from: three workers, the
// binding limit the workers' own NewOrdersPerAccount, the CA enforcing 10%
// more than it.
func standard(sz size) fleetConfig {
	w, ca := limitsFor(sz.orders, 1.1)
	return fleetConfig{workers: 3, concurrency: sz.concurrent, limits: w, ca: ca}
}

// runValid publishes the scenario's valid jobs in waves (one more at every
// mark of progress) and waits for them, calling during, with the count
// obtained so far, before each wave: scenarios break things there, so later
// waves prove the fleet still takes new work afterwards.
func runValid(t *testing.T, name string, cfg fleetConfig, sz size, waves int, during func(f *fleet, obtained int)) {
	ctx, cancel := context.WithTimeout(context.Background(), sz.timeout)
	defer cancel()
	f := newFleet(t, ctx, cfg)
	valid := f.requests(sz.jobs, 10)
	msgs := encodeAll(t, valid)
	per := (len(msgs) + waves - 1) / waves
	f.publish(msgs[:per])
	sent := per
	o := f.waitDone(valid, 0, func(obtained int) {
		if during != nil {
			during(f, obtained)
		}
		// The next wave goes out once the last one is half done.
		if sent < len(msgs) && obtained >= sent-per/2 {
			n := min(per, len(msgs)-sent)
			f.publish(msgs[sent : sent+n])
			sent += n
		}
	})
	f.verify(name, sz, valid, 0, o)
}

// thresholds returns the k progress marks at which runValid, with k+1
// waves, is about to publish waves 2 to k+1: breaking things there means the
// next wave is published into the broken or recovering fleet.
func thresholds(jobs, k int) []int {
	per := (jobs + k) / (k + 1)
	marks := make([]int, k)
	for i := range marks {
		marks[i] = per*(i+1) - per/2
	}
	return marks
}

// TestWorkerKills kills a worker with orders in flight (kill -9) at
// evenly spread points: beyond every scenario's invariants, each order in
// flight at a kill is continued by another worker, never ordered again, and
// finished within maxTakeover of the kill (verify, checkTakeovers).
func TestWorkerKills(t *testing.T) {
	sz := sizeFor(t)
	marks := thresholds(sz.jobs, sz.kills)
	var fl *fleet
	runValid(t, "worker kills", standard(sz), sz, sz.kills+1, func(f *fleet, obtained int) {
		fl = f
		for len(marks) > 0 && obtained >= marks[0] {
			marks = marks[1:]
			f.killOne()
		}
	})
	if fl != nil && len(fl.orphans) == 0 {
		t.Errorf("no order was in flight at any of the %d kills: the takeover went untested", fl.kills)
	}
}

// restartDuring restarts service at evenly spread points of the run.
func restartDuring(t *testing.T, name, service string) {
	sz := sizeFor(t)
	marks := thresholds(sz.jobs, sz.restarts)
	runValid(t, name, standard(sz), sz, sz.restarts+1, func(f *fleet, obtained int) {
		for len(marks) > 0 && obtained >= marks[0] {
			marks = marks[1:]
			t0 := time.Now()
			if err := testenv.Restart(f.ctx, service, testenv.RestartOptions{Down: 3 * time.Second}); err != nil {
				t.Fatalf("restarting %s: %v", service, err)
			}
			t.Logf("%v: %s restarted (down %v) at %d obtained", time.Since(f.t0).Round(time.Millisecond), service, time.Since(t0).Round(time.Millisecond), obtained)
		}
	})
}

func TestKafkaRestart(t *testing.T) { restartDuring(t, "kafka restart", testenv.ServiceKafka) }

func TestDatabaseRestart(t *testing.T) { restartDuring(t, "database restart", testenv.ServiceDatabase) }

func TestCAFaults(t *testing.T) {
	sz := sizeFor(t)
	cfg := standard(sz)
	cfg.faults = caproxy.Faults{RateLimited: 0.3, RetryAfter: 2 * time.Second, ServerError: 0.1}
	runValid(t, "CA 30% 429 + 10% 5xx", cfg, sz, 1, nil)
}

func TestHostileInput(t *testing.T) {
	sz := sizeFor(t)
	ctx, cancel := context.WithTimeout(context.Background(), sz.timeout)
	defer cancel()
	f := newFleet(t, ctx, standard(sz))
	valid := f.requests(sz.jobs, 10)
	msgs, dead := hostileMix(t, f.suffix, encodeAll(t, valid), sz.hostileX)
	f.publish(msgs)
	o := f.waitDone(valid, dead, nil)
	f.verify("hostile input", sz, valid, dead, o)
}
