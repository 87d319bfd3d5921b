package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/certfleet/certfleet/testenv"
)

// startWorker runs the worker binary with env (on top of a clean
// CERTFLEET_* environment) and returns its exit code and stderr once it
// ends, or after signal is sent at signalAfter (when set).
func startWorker(t *testing.T, bin string, env []string, signalAfter time.Duration) (int, string, time.Duration) {
	t.Helper()
	cmd := exec.Command(bin, "-listen", testenv.FreeAddr(t, "127.0.0.1"))
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CERTFLEET_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if signalAfter > 0 {
		time.AfterFunc(signalAfter, func() { _ = cmd.Process.Signal(syscall.SIGTERM) })
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		code := 0
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		return code, errb.String(), time.Since(start)
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("worker still running after 60s; stderr:\n%s", errb.String())
		return 0, "", 0
	}
}

// A weak keyring and secret files others may read are refused at start
// (exit status 2) naming the file and the cause; an untrusted CA, a wrong
// password and a silent broker end the worker (exit 1) within the Kafka
// timeout naming the broker and the cause, and SIGTERM ends it at once.
func TestWorkerRefusesAtStart(t *testing.T) {
	s := testenv.Require(t)
	sec := productionConnections(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin, err := testenv.BuildCommand(ctx, t.TempDir(), "issuer-worker", ".")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, data string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := sec.keyringFile(t)
	line, _ := os.ReadFile(good)
	openKeyring := write("keyring-644", string(line), 0o644)
	zeroKeyring := write("keyring-zero", "CHANGE-ME=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=;active=CHANGE-ME\n", 0o600)
	pw, _ := os.ReadFile(filepath.Join(s.SecretsDir, "worker.password"))
	openPassword := write("password-644", string(pw), 0o644)
	openEAB := write("eab-644", "YWJjZGVm\n", 0o644)
	badEAB := write("eab-bad", "not a MAC key!\n", 0o600)
	eabCA := func(file string) string {
		return "CERTFLEET_CAS=pebble=" + s.ACMEDirectory + ",eab-kid=kid-1,eab-key-file=" + file
	}
	base := []string{"CERTFLEET_CAS=pebble=" + s.ACMEDirectory, "CERTFLEET_ACME_TLS_CA=" + s.ACMETLSCA, "CERTFLEET_DATABASE_URL=" + s.DatabaseURL,
		"CERTFLEET_KAFKA_BROKERS=" + strings.Join(s.KafkaBrokers, ","), "CERTFLEET_SEAL_KEYS_FILE=" + good, "CERTFLEET_KAFKA_TIMEOUT=2s"}
	with := func(kv ...string) []string { return append(append([]string{}, base...), kv...) }
	silent := testenv.SilentListener(t)
	for _, tc := range []struct {
		name   string
		env    []string
		code   int
		want   []string
		within time.Duration
		signal time.Duration
	}{
		{"keyring readable by others", with("CERTFLEET_SEAL_KEYS_FILE=" + openKeyring), 2, []string{openKeyring, "mode 0644"}, 10 * time.Second, 0},
		{"all-zero keyring", with("CERTFLEET_SEAL_KEYS_FILE=" + zeroKeyring), 2, []string{"all zero bytes"}, 10 * time.Second, 0},
		{"password readable by others", with(append(sec.kafkaEnv(testenv.PrincipalWorker), "CERTFLEET_KAFKA_SASL_PASSWORD_FILE="+openPassword)...), 2,
			[]string{"-kafka-sasl-password-file", openPassword, "mode 0644"}, 10 * time.Second, 0},
		{"SASL without TLS", with("CERTFLEET_KAFKA_SASL_MECHANISM=plain", "CERTFLEET_KAFKA_SASL_USER=worker", "CERTFLEET_KAFKA_SASL_PASSWORD_FILE="+openPassword), 2,
			[]string{"-kafka-sasl-mechanism: plain without TLS"}, 10 * time.Second, 0},
		{"EAB key file readable by others", with(eabCA(openEAB)), 2, []string{"-ca: CA pebble: eab-key-file", openEAB, "mode 0644"}, 10 * time.Second, 0},
		{"EAB key file without a MAC key", with(eabCA(badEAB)), 2, []string{"-ca: CA pebble: eab-key-file " + badEAB + " does not hold a base64url MAC key"}, 10 * time.Second, 0},
		{"database without verify-full", with("CERTFLEET_DATABASE_URL=postgresql://certfleet@db.example.invalid:26257/certfleet?sslmode=require"), 2,
			[]string{"-database-url", "sslmode=verify-full"}, 10 * time.Second, 0},
		{"wrong password", with(append(sec.kafkaEnv(testenv.PrincipalWorker), "CERTFLEET_KAFKA_SASL_PASSWORD_FILE="+filepath.Join(s.SecretsDir, "nobody.password"))...), 1,
			[]string{s.KafkaSASLBrokers[0], "SASL authentication as worker failed"}, 15 * time.Second, 0},
		{"untrusted CA", with(append(sec.kafkaEnv(testenv.PrincipalWorker), "CERTFLEET_KAFKA_TLS_CA="+s.ACMETLSCA)...), 1,
			[]string{s.KafkaSASLBrokers[0], "not signed by -kafka-tls-ca " + s.ACMETLSCA}, 15 * time.Second, 0},
		{"silent broker", with("CERTFLEET_KAFKA_BROKERS=" + silent), 1, []string{silent, "no answer within 2s"}, 15 * time.Second, 0},
		{"SIGTERM while the broker is silent", with("CERTFLEET_KAFKA_BROKERS="+silent, "CERTFLEET_KAFKA_TIMEOUT=5m"), 1, []string{"context canceled"},
			6 * time.Second, 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stderr, took := startWorker(t, bin, tc.env, tc.signal)
			if code != tc.code || took > tc.within {
				t.Fatalf("exit %d after %v, want %d within %v; stderr:\n%s", code, took, tc.code, tc.within, testenv.Tail(stderr, 10))
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Fatalf("stderr lacks %q:\n%s", w, testenv.Tail(stderr, 10))
				}
			}
		})
	}
}
