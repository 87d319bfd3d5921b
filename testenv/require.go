package testenv

import (
	"context"
	"os"
	"sync"
	"testing"
)

const startHint = "start it with `make testenv-up` (or `go run ./cmd/testenv up`) from the repository root; " +
	"set CERTFLEET_TESTENV=off to skip integration tests on purpose"

var (
	requireOnce sync.Once
	requireSet  Settings
	requireErr  error
)

// Require returns the settings of the running stack after checking that each
// service answers a real request (Kafka metadata, a database query, a POST to
// Pebble). A stack that is missing, down or hung fails the test with a message
// naming the service and its log; the test is skipped only when
// CERTFLEET_TESTENV=off. The check runs once per test binary; the first test
// to fail on it gets the full message, later ones a pointer to it.
//
// After a good check a watchdog goes on probing every service while the tests
// run. When one stops answering for 30 s (a hung Pebble, a stopped broker),
// the watchdog prints one message naming it and its log, kills the processes
// the tests started and ends the test binary, rather than leaving each test
// to wait out its own timeout. Restart pauses it.
func Require(t testing.TB) Settings {
	t.Helper()
	if os.Getenv(EnvSwitch) == "off" {
		t.Skipf("integration test skipped: %s=off", EnvSwitch)
	}
	first := false
	requireOnce.Do(func() {
		first = true
		requireSet, requireErr = Load()
		if requireErr == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*probeTimeout)
			defer cancel()
			requireErr = checkServices(ctx, requireSet)
		}
		if requireErr == nil {
			go dog.run(requireSet.probes(), stopTestBinary)
		}
	})
	if requireErr != nil {
		if !first {
			t.Fatalf("testenv: the stack failed its check at this package's first integration test (see there): %s", startHint)
		}
		t.Fatalf("%v\n%s", requireErr, startHint)
	}
	return requireSet
}
