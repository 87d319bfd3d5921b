package testenv

import (
	"context"
	"fmt"
	"syscall"
	"time"
)

// Service names accepted by Restart.
const (
	ServiceKafka    = "kafka"
	ServiceDatabase = "database"
	// ServicePebble restarts Pebble from scratch (it keeps its state in
	// memory): a new issuing root, saved to Settings.PebbleRoot, and a new
	// HTTPS certificate under the same CA file. A long-lived Pebble gets slower
	// with every authorization it has made (its reuse lookup scans them all);
	// benchmarks start from a fresh one.
	ServicePebble = "pebble"
)

// RestartOptions shape a Restart.
type RestartOptions struct {
	// Kill stops the service with SIGKILL (a crash) instead of its graceful
	// stop signal.
	Kill bool
	// Down is how long the service stays stopped before it starts again.
	Down time.Duration
}

// Restart stops one running service of the stack (ServiceKafka,
// ServiceDatabase or ServicePebble) and starts it again on the same data and
// ports, then waits until it is ready. It is for chaos tests: everything connected to the
// service sees it vanish and come back. Other test packages sharing the stack
// see the outage too, so callers run alone (the Makefile's chaos runs are
// never in parallel with other packages).
func Restart(ctx context.Context, name string, opt RestartOptions) error {
	l, err := newLayout()
	if err != nil {
		return err
	}
	svcs, pebbleCA := l.services()
	var s *service
	for _, svc := range svcs {
		switch {
		case name == ServiceKafka && svc.proc.name == "kafka",
			name == ServiceDatabase && (svc.proc.name == "postgres" || svc.proc.name == "cockroach"),
			name == ServicePebble && svc.proc.name == "pebble":
			s = svc
		}
	}
	if s == nil {
		return fmt.Errorf("testenv: restart %q: want %q, %q or %q", name, ServiceKafka, ServiceDatabase, ServicePebble)
	}
	if s.proc.pid() == 0 {
		return fmt.Errorf("testenv: restart %s: it is not running (run testenv up)", s.proc.name)
	}
	// The watchdog of this test binary must not take the outage for a hang.
	defer dog.pause()()
	p := s.proc
	if opt.Kill {
		p.signal = syscall.SIGKILL
	}
	if err := p.stop(30 * time.Second); err != nil {
		return fmt.Errorf("testenv: restart %s: stopping: %w", p.name, err)
	}
	select {
	case <-time.After(opt.Down):
	case <-ctx.Done():
		return fmt.Errorf("testenv: restart %s: %w (it is stopped; run testenv up)", p.name, ctx.Err())
	}
	// The ports are released with the process, but a killed listener can
	// take a moment; wait for them rather than fail.
	for _, a := range s.ports {
		for deadline := time.Now().Add(30 * time.Second); portFree(a) != nil; time.Sleep(200 * time.Millisecond) {
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("testenv: restart %s: %w", p.name, portFree(a))
			}
		}
	}
	if err := s.install(ctx); err != nil {
		return err
	}
	if err := s.start(ctx); err != nil {
		return fmt.Errorf("testenv: restart %s: starting: %w", p.name, err)
	}
	if err := s.proc.waitFor(withTimeout(ctx, 120*time.Second), "readiness after restart", s.ready); err != nil {
		return err
	}
	if name == ServicePebble {
		if _, err := savePebbleRoot(ctx, l.state, pebbleCA); err != nil {
			return fmt.Errorf("testenv: restart %s: %w", p.name, err)
		}
	}
	return nil
}
