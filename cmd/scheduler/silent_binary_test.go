package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/certfleet/certfleet/testenv"
)

// The built scheduler against a broker that accepts TCP and never answers:
// it exits within -kafka-timeout naming the broker, and SIGTERM ends it at
// once (the in-process TestSilentBroker covers run; this covers main's
// signal wiring and exit status).
func TestSilentBrokerBinary(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin, err := testenv.BuildCommand(ctx, t.TempDir(), "scheduler", ".")
	if err != nil {
		t.Fatal(err)
	}
	silent := testenv.SilentListener(t)
	for _, tc := range []struct {
		name    string
		timeout string
		signal  time.Duration // send SIGTERM after this long (0: none)
		within  time.Duration
		want    []string
	}{
		{"times out naming the broker", "2s", 0, 15 * time.Second, []string{silent, "no answer within 2s"}},
		{"SIGTERM ends it at once", "5m", time.Second, 6 * time.Second, []string{"context canceled"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, "-kafka-brokers", silent, "-kafka-timeout", tc.timeout,
				"-database-url", s.DatabaseURL, "-listen", "127.0.0.1:0", "-ari=false")
			cmd.Env = append(os.Environ(), "CERTFLEET_KAFKA_BROKERS=")
			var stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stderr, &stderr
			start := time.Now()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			if tc.signal > 0 {
				time.AfterFunc(tc.signal, func() { _ = cmd.Process.Signal(syscall.SIGTERM) })
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err = <-done:
			case <-time.After(tc.within):
				_ = cmd.Process.Kill()
				<-done
				t.Fatalf("still running after %v:\n%s", tc.within, testenv.Tail(stderr.String(), 10))
			}
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("exit %v after %v, want status 1:\n%s", err, time.Since(start), testenv.Tail(stderr.String(), 10))
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr.String(), w) {
					t.Fatalf("output lacks %q:\n%s", w, testenv.Tail(stderr.String(), 10))
				}
			}
		})
	}
}
