package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/scheduler"
	"github.com/certfleet/certfleet/testenv"
)

// Two schedulers on one database: one leads and emits the managed
// certificate's job; on SIGTERM (context cancelled) it releases the lease and
// the standby takes over at once; metrics and probes tell which is which.
// Both reach Kafka on the SASL_SSL listener as the scheduler principal (its
// ACLs only) and the database over TLS with verify-full and a client
// certificate.
func TestSchedulerProcesses(t *testing.T) {
	s := testenv.Require(t)
	if len(s.KafkaSASLBrokers) == 0 || s.SecretsDir == "" || (s.DatabaseTLSURL == "" && s.DatabaseKind != "cockroach") {
		t.Fatalf("testenv has no SASL_SSL listener or TLS database: restart it with `go run ./cmd/testenv up`")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	url, d := migratedDatabase(t, ctx)
	sfx := fmt.Sprint(time.Now().UnixNano())
	def := events.DefaultTopics() // testenv's ACLs are granted on the default names as prefixes
	topics := events.Topics{Requests: def.Requests + ".sch-" + sfx, Events: def.Events + ".sch-" + sfx, DLQ: def.DLQ + ".sch-" + sfx}
	tlsURL, err := s.DatabaseTLSURLOf(url)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, kv := range s.KafkaSASLEnv(testenv.PrincipalScheduler) {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	for _, tp := range []string{topics.Requests, topics.Events, topics.DLQ} {
		if err := testenv.CreateTopic(ctx, s.KafkaBrokers, tp, 1); err != nil {
			t.Fatal(err)
		}
	}
	m, _ := scheduler.Normalize(scheduler.Spec{SANs: []string{"proc.example.com"}, Tenant: "t", CA: s.ACMEDirectory})
	if _, err := scheduler.NewInventory(d, nil).Manage(ctx, m); err != nil {
		t.Fatal(err)
	}
	start := func(name string) (addr string, stop func() error) {
		cfg, err := parseConfig([]string{"-database-url", tlsURL,
			"-topic-requests", topics.Requests, "-topic-events", topics.Events, "-topic-dlq", topics.DLQ,
			"-group", "certfleet-sch-" + sfx, "-listen", "127.0.0.1:0", "-tick-interval", "100ms", "-lease-ttl", "2s",
			"-ari=false", "-budget", "100/1s", "-holder", name, "-shutdown-timeout", "10s"}, func(k string) string { return env[k] }, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		rctx, rcancel := context.WithCancel(ctx)
		ch := make(chan string, 1)
		done := make(chan error, 1)
		go func() { done <- run(rctx, cfg, slog.New(slog.DiscardHandler), ch) }()
		select {
		case addr = <-ch:
		case err := <-done:
			t.Fatalf("%s: %v", name, err)
		}
		return addr, func() error { rcancel(); return <-done }
	}
	addrA, stopA := start("a")
	waitFor(t, "a leads", func() bool { return strings.Contains(get(addrA, "/readyz"), "leader") })
	addrB, stopB := start("b")
	waitFor(t, "b ready as standby", func() bool { return strings.Contains(get(addrB, "/readyz"), "standby") })
	if get(addrA, "/healthz") != "ok\n" {
		t.Error("healthz")
	}

	// The job reaches the requests topic.
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: s.KafkaBrokers, Topic: topics.Requests, Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	rctx, rc := context.WithTimeout(ctx, 20*time.Second)
	msg, err := r.ReadMessage(rctx)
	rc()
	if err != nil {
		t.Fatalf("no job emitted: %v", err)
	}
	ev, err := events.Decode(msg)
	if err != nil {
		t.Fatal(err)
	}
	if q := ev.Data.(*events.IssuanceRequest); q.Reason != events.ReasonNew || q.SANs[0] != "proc.example.com" {
		t.Errorf("job %+v", q)
	}
	// The counter moves once the tick has also marked the job emitted, a
	// moment after the record reaches Kafka.
	for _, want := range []string{"\ncertfleet_scheduler_leader 1\n", `certfleet_scheduler_jobs_emitted_total{reason="new"} 1`, "certfleet_scheduler_lease_token 1"} {
		waitFor(t, "metrics show "+want, func() bool { return strings.Contains(get(addrA, "/metrics"), want) })
	}
	// SIGTERM to the leader: it releases the lease; the standby leads within a renewal interval.
	stopped := time.Now()
	if err := stopA(); err != nil {
		t.Fatalf("a: %v", err)
	}
	waitFor(t, "b takes over", func() bool { return strings.Contains(get(addrB, "/metrics"), "\ncertfleet_scheduler_leader 1\n") })
	t.Logf("standby led %v after the leader's SIGTERM", time.Since(stopped).Round(time.Millisecond))
	if !strings.Contains(get(addrB, "/metrics"), "certfleet_scheduler_lease_token 2") {
		t.Errorf("takeover did not increment the fencing token: %s", grepLines(get(addrB, "/metrics"), "certfleet_scheduler_lease"))
	}
	if err := stopB(); err != nil {
		t.Fatalf("b: %v", err)
	}
}

func get(addr, path string) string {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "; ")
}
