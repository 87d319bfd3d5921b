package testenv

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"
)

const startHint = "start it with `make testenv-up` (or `go run ./cmd/testenv up`) from the repository root; " +
	"set CERTFLEET_TESTENV=off to skip integration tests on purpose"

var (
	requireOnce sync.Once
	requireSet  Settings
	requireErr  error
)

// Require returns the settings of the running stack after checking that each
// service accepts connections. A stack that is missing or down fails the test
// with a message saying how to start it; the test is skipped only when
// CERTFLEET_TESTENV=off. The check runs once per test binary.
func Require(t testing.TB) Settings {
	t.Helper()
	if os.Getenv(EnvSwitch) == "off" {
		t.Skipf("integration test skipped: %s=off", EnvSwitch)
	}
	requireOnce.Do(func() {
		requireSet, requireErr = Load()
		if requireErr == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			requireErr = Reachable(ctx, requireSet)
		}
	})
	if requireErr != nil {
		t.Fatalf("%v: %s", requireErr, startHint)
	}
	return requireSet
}

// Reachable checks that every service of the stack accepts TCP connections.
// It is a liveness check for tests; `testenv up` does the deeper readiness
// checks (a consumer group can join, the database answers, Pebble serves its
// directory).
func Reachable(ctx context.Context, s Settings) error {
	addrs := map[string]string{"kafka": s.KafkaBrokers[0]}
	for name, raw := range map[string]string{"database": s.DatabaseURL, "pebble": s.ACMEDirectory, "pebble-challtestsrv": s.ChallTestSrvURL} {
		u, err := url.Parse(raw)
		if err != nil {
			return fmt.Errorf("testenv: %s URL %q: %w", name, raw, err)
		}
		addrs[name] = u.Host
	}
	var d net.Dialer
	for name, addr := range addrs {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("testenv: %s at %s is not reachable (%v)", name, addr, err)
		}
		c.Close()
	}
	return nil
}
