package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/testenv"
)

// A secret file others may read is a configuration error naming the file
// and its mode.
func TestSecretFileModeRefused(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pw, []byte("pw"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"CERTFLEET_KAFKA_BROKERS": "127.0.0.1:9093", "CERTFLEET_DATABASE_URL": "postgres://x@127.0.0.1/db",
		"CERTFLEET_KAFKA_TLS": "true", "CERTFLEET_KAFKA_SASL_MECHANISM": "scram-sha-512", "CERTFLEET_KAFKA_SASL_USER": "scheduler",
		"CERTFLEET_KAFKA_SASL_PASSWORD_FILE": pw}
	_, err := parseConfig(nil, func(k string) string { return env[k] }, io.Discard)
	if err == nil || !strings.Contains(err.Error(), pw) || !strings.Contains(err.Error(), "mode 0644") {
		t.Fatalf("world-readable password file: %v", err)
	}
}

// Against a broker that accepts TCP and never answers, the scheduler stops
// within -kafka-timeout naming the broker, and a cancelled context (SIGTERM)
// stops it at once.
func TestSilentBroker(t *testing.T) {
	s := testenv.Require(t)
	silent := testenv.SilentListener(t)
	for _, tc := range []struct {
		timeout string
		cancel  time.Duration
		want    string
	}{
		{"1s", 0, "no answer within 1s"},
		{"5m", 500 * time.Millisecond, "context canceled"},
	} {
		cfg, err := parseConfig([]string{"-kafka-brokers", silent, "-kafka-timeout", tc.timeout, "-database-url", s.DatabaseURL,
			"-listen", "127.0.0.1:0", "-ari=false"}, func(string) string { return "" }, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		if tc.cancel > 0 {
			time.AfterFunc(tc.cancel, cancel)
		}
		start := time.Now()
		err = run(ctx, cfg, slog.New(slog.DiscardHandler), nil)
		cancel()
		if d := time.Since(start); d > 4*time.Second || err == nil || !strings.Contains(err.Error(), tc.want) ||
			(tc.cancel == 0 && !strings.Contains(err.Error(), silent)) {
			t.Fatalf("-kafka-timeout %s: %v after %v, want %q", tc.timeout, err, d, tc.want)
		}
	}
}
