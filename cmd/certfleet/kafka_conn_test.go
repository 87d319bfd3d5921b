package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/delivery"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/testenv"
)

// clearKafkaEnv keeps the caller's environment (a sourced testenv env file
// exports CERTFLEET_KAFKA_TLS_CA, for one) out of these tests.
func clearKafkaEnv(t *testing.T) {
	for _, k := range []string{"CERTFLEET_KAFKA_BROKERS", "CERTFLEET_KAFKA_TLS", "CERTFLEET_KAFKA_TLS_CA", "CERTFLEET_KAFKA_TLS_CERT",
		"CERTFLEET_KAFKA_TLS_KEY", "CERTFLEET_KAFKA_TLS_SERVER_NAME", "CERTFLEET_KAFKA_SASL_MECHANISM", "CERTFLEET_KAFKA_SASL_USER",
		"CERTFLEET_KAFKA_SASL_PASSWORD_FILE", "CERTFLEET_KAFKA_INSECURE_SASL_PLAINTEXT", "CERTFLEET_KAFKA_TIMEOUT"} {
		t.Setenv(k, "")
	}
}

// aclTopics are fresh topic names under the defaults (testenv grants its
// principals' ACLs on the default names as prefixes).
func aclTopics(prefix string) events.Topics {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	sfx := "." + prefix + "-" + hex.EncodeToString(b)
	d := events.DefaultTopics()
	return events.Topics{Requests: d.Requests + sfx, Retry: d.Retry + sfx, DLQ: d.DLQ + sfx, Events: d.Events + sfx, RateLimitChanges: d.RateLimitChanges + sfx}
}

// kafkaCommands are the CLI's Kafka commands. dlq replay records what it
// sends in the database, so it needs a URL before it starts; it asks the
// broker first, so this one is never opened.
var kafkaCommands = map[string][]string{
	"request --wait":   {"request", "--san", "a.example", "--tenant", "t1", "--wait", "1m"},
	"dlq list":         {"dlq", "list"},
	"dlq replay --all": {"dlq", "replay", "--all", "--database-url", "postgres://certfleet@127.0.0.1:1/unused"},
	"topics create":    {"topics", "create"},
}

// Against a broker that accepts TCP and never answers, the Kafka commands
// end within -kafka-timeout naming the broker (they used to block for ever
// in kafka-go's partition lookup), and a cancelled context (SIGINT, SIGTERM:
// main's signal.NotifyContext) ends them at once.
func TestKafkaCommandsAgainstASilentBroker(t *testing.T) {
	clearKafkaEnv(t)
	addr := testenv.SilentListener(t)
	for name, args := range kafkaCommands {
		t.Run(name, func(t *testing.T) {
			var out, errb bytes.Buffer
			start := time.Now()
			code := run(context.Background(), append(args, "--brokers", addr, "--kafka-timeout", "500ms"), &out, &errb)
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("took %v with --kafka-timeout 500ms", d)
			}
			if code != exitError || !strings.Contains(errb.String(), addr) || !strings.Contains(errb.String(), "no answer within 500ms") {
				t.Fatalf("code %d, stderr %q", code, errb.String())
			}

			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(300*time.Millisecond, cancel)
			errb.Reset()
			start = time.Now()
			code = run(ctx, append(args, "--brokers", addr, "--kafka-timeout", "1m"), &out, &errb)
			if d := time.Since(start); d > 2*time.Second || code != exitError {
				t.Fatalf("cancelled after 300ms: code %d after %v, stderr %q", code, d, errb.String())
			}
		})
	}
}

// A configuration error is a usage error (exit status 2) naming the flag
// and, for a secret file others may read, the file and its mode.
func TestKafkaConfigurationErrors(t *testing.T) {
	clearKafkaEnv(t)
	dir := t.TempDir()
	open := filepath.Join(dir, "password")
	if err := os.WriteFile(open, []byte("pw"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--kafka-sasl-mechanism", "scram-sha-512", "--kafka-sasl-user", "u", "--kafka-sasl-password-file", open},
			[]string{"-kafka-sasl-mechanism", "without TLS"}},
		{[]string{"--kafka-tls", "--kafka-sasl-mechanism", "scram-sha-512", "--kafka-sasl-user", "u", "--kafka-sasl-password-file", open},
			[]string{"-kafka-sasl-password-file", open, "mode 0644"}},
		{[]string{"--kafka-sasl-mechanism", "kerberos"}, []string{`-kafka-sasl-mechanism: "kerberos"`}},
	} {
		for name, args := range kafkaCommands {
			var out, errb bytes.Buffer
			code := run(context.Background(), append(append(args, "--brokers", "127.0.0.1:1"), tc.args...), &out, &errb)
			for _, w := range tc.want {
				if code != exitUsage || !strings.Contains(errb.String(), w) {
					t.Errorf("%s %v: code %d, stderr %q, want %q", name, tc.args, code, errb.String(), w)
				}
			}
		}
	}
	t.Setenv("CERTFLEET_KAFKA_TLS", "yes")
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"dlq", "list", "--brokers", "127.0.0.1:1"}, &out, &errb); code != exitUsage ||
		!strings.Contains(errb.String(), `-kafka-tls: CERTFLEET_KAFKA_TLS="yes"`) {
		t.Fatalf("bad environment: code %d, %q", code, errb.String())
	}
}

// The CLI on the SASL_SSL and mTLS listeners: the operator publishes and
// reads; a principal without the ACL, a wrong password and an untrusted CA
// each fail fast with the cause named.
func TestKafkaCommandsOverSASLAndMTLS(t *testing.T) {
	clearKafkaEnv(t)
	s := testenv.Require(t)
	if len(s.KafkaSASLBrokers) == 0 || len(s.KafkaMTLSBrokers) == 0 || s.SecretsDir == "" {
		t.Fatalf("testenv has no SASL_SSL/mTLS listeners: restart it with `go run ./cmd/testenv up`")
	}
	tp := aclTopics("cli")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := events.Provision(ctx, &kafka.Client{Addr: kafka.TCP(s.KafkaBrokers...)}, tp.Specs(2, 1)...); err != nil {
		t.Fatal(err)
	}
	topics := []string{"--topic-requests", tp.Requests, "--topic-events", tp.Events, "--topic-dlq", tp.DLQ}
	scram := func(user, passwordOf string) []string {
		return append([]string{"--brokers", strings.Join(s.KafkaSASLBrokers, ","), "--kafka-tls", "--kafka-tls-ca", s.KafkaTLSCA,
			"--kafka-sasl-mechanism", "scram-sha-512", "--kafka-sasl-user", user,
			"--kafka-sasl-password-file", filepath.Join(s.SecretsDir, passwordOf+".password")}, topics...)
	}
	mtls := func(principal string) []string {
		return append([]string{"--brokers", strings.Join(s.KafkaMTLSBrokers, ","), "--kafka-tls", "--kafka-tls-ca", s.KafkaTLSCA,
			"--kafka-tls-cert", filepath.Join(s.SecretsDir, principal+".crt"), "--kafka-tls-key", filepath.Join(s.SecretsDir, principal+".key")}, topics...)
	}
	request := []string{"request", "--san", "sasl.example.org", "--tenant", "t1"}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"operator over SCRAM", append(request, scram("operator", "operator")...), exitOK, "published request"},
		{"producer over SCRAM", append(request, scram("producer", "producer")...), exitOK, "published request"},
		{"operator over mTLS", append(request, mtls("operator")...), exitOK, "published request"},
		{"dlq list over mTLS", append([]string{"dlq", "list"}, mtls("operator")...), exitOK, "0 record(s)"},
		{"worker may read but not write requests", append(request, scram("worker", "worker")...), exitError,
			"principal worker may not write to topic " + tp.Requests + " (missing ACL"},
		{"nobody over SCRAM", append(request, scram("nobody", "nobody")...), exitError,
			"principal nobody may not describe topic " + tp.Requests + " (missing ACL"},
		{"nobody over mTLS", append(request, mtls("nobody")...), exitError, "principal nobody may not describe topic"},
		{"wrong password", append(request, scram("producer", "nobody")...), exitError, "SASL authentication as producer failed (wrong password"},
		{"untrusted CA", append(append(request, scram("producer", "producer")...), "--kafka-tls-ca", s.ACMETLSCA), exitError,
			"the broker's certificate is not signed by -kafka-tls-ca " + s.ACMETLSCA},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			start := time.Now()
			code := run(ctx, tc.args, &out, &errb)
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %v", d)
			}
			if code != tc.code || !strings.Contains(out.String()+errb.String(), tc.want) {
				t.Fatalf("code %d (want %d), stdout %q, stderr %q, want %q", code, tc.code, out.String(), errb.String(), tc.want)
			}
		})
	}
	msgs, err := events.ReadTopic(ctx, nil, s.KafkaBrokers, tp.Requests, 0)
	if err != nil || len(msgs) != 3 {
		t.Fatalf("requests topic holds %d records (%v), want the 3 allowed", len(msgs), err)
	}
}

// topics create provisions the five topics and the delivery topic with the
// given replication, min.insync.replicas and retention as a principal that
// may create topics; one that may not is told which ACL it lacks.
func TestTopicsCreate(t *testing.T) {
	clearKafkaEnv(t)
	s := testenv.Require(t)
	if len(s.KafkaSASLBrokers) == 0 || s.SecretsDir == "" {
		t.Fatalf("testenv has no SASL_SSL listener: restart it with `go run ./cmd/testenv up`")
	}
	tp := aclTopics("create")
	deliveries := delivery.DefaultTopic + strings.TrimPrefix(tp.Requests, events.DefaultTopics().Requests)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t.Cleanup(func() {
		client := &kafka.Client{Addr: kafka.TCP(s.KafkaBrokers...), Timeout: 10 * time.Second}
		_, _ = client.DeleteTopics(context.Background(), &kafka.DeleteTopicsRequest{Topics: append(tp.All(), deliveries)})
	})
	as := func(user string) []string {
		return []string{"topics", "create", "--brokers", strings.Join(s.KafkaSASLBrokers, ","), "--kafka-tls", "--kafka-tls-ca", s.KafkaTLSCA,
			"--kafka-sasl-mechanism", "scram-sha-256", "--kafka-sasl-user", user, "--kafka-sasl-password-file", filepath.Join(s.SecretsDir, user+".password"),
			"--topic-requests", tp.Requests, "--topic-retry", tp.Retry, "--topic-dlq", tp.DLQ, "--topic-events", tp.Events,
			"--topic-ratelimit-changes", tp.RateLimitChanges, "--topic-deliveries", deliveries, "--partitions", "3", "--replication-factor", "1", "--min-insync-replicas", "1",
			"--dlq-retention", "48h"}
	}
	var out, errb bytes.Buffer
	if code := run(ctx, as("worker"), &out, &errb); code != exitError ||
		!strings.Contains(errb.String(), "principal worker may not create topics") || !strings.Contains(errb.String(), "missing ACL") {
		t.Fatalf("worker: code %d, stderr %q", code, errb.String())
	}
	for i := 0; i < 2; i++ { // the second run finds them
		out.Reset()
		errb.Reset()
		if code := run(ctx, as("operator"), &out, &errb); code != exitOK || !strings.Contains(out.String(), "topics ready") {
			t.Fatalf("operator, run %d: code %d, stdout %q, stderr %q", i+1, code, out.String(), errb.String())
		}
	}
	client := &kafka.Client{Addr: kafka.TCP(s.KafkaBrokers...), Timeout: 10 * time.Second}
	resp, err := client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{
		{ResourceType: kafka.ResourceTypeTopic, ResourceName: tp.DLQ, ConfigNames: []string{"retention.ms", "min.insync.replicas"}}}})
	if err != nil || len(resp.Resources) != 1 {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range resp.Resources[0].ConfigEntries {
		got[e.ConfigName] = e.ConfigValue
	}
	if got["retention.ms"] != "172800000" || got["min.insync.replicas"] != "1" {
		t.Fatalf("DLQ configs %v", got)
	}
	resp, err = client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{
		{ResourceType: kafka.ResourceTypeTopic, ResourceName: deliveries, ConfigNames: []string{"cleanup.policy", "retention.ms"}}}})
	if err != nil || len(resp.Resources) != 1 {
		t.Fatalf("the delivery topic: %v", err)
	}
	for _, e := range resp.Resources[0].ConfigEntries {
		got[e.ConfigName] = e.ConfigValue
	}
	if got["cleanup.policy"] != "compact,delete" || got["retention.ms"] != "8640000000" {
		t.Fatalf("delivery topic configs %v", got)
	}
}

// The binary itself: SIGINT and SIGTERM end a command blocked on a silent
// broker at once (main's signal context closes its Kafka connections).
func TestSignalEndsABlockedCommand(t *testing.T) {
	clearKafkaEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin, err := testenv.BuildCommand(ctx, t.TempDir(), "certfleet", ".")
	if err != nil {
		t.Fatal(err)
	}
	addr := testenv.SilentListener(t)
	for _, sig := range []os.Signal{os.Interrupt, syscall.SIGTERM} {
		for name, args := range kafkaCommands {
			cmd := exec.Command(bin, append(args, "--brokers", addr, "--kafka-timeout", "5m")...)
			var errb bytes.Buffer
			cmd.Stderr = &errb
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond)
			start := time.Now()
			_ = cmd.Process.Signal(sig)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
				if d := time.Since(start); d > 2*time.Second {
					t.Errorf("%s: %v took %v to end it", name, sig, d)
				}
				if cmd.ProcessState.ExitCode() != exitError {
					t.Errorf("%s after %v: exit %d, stderr %q", name, sig, cmd.ProcessState.ExitCode(), errb.String())
				}
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				t.Fatalf("%s: still running 10s after %v", name, sig)
			}
		}
	}
}
