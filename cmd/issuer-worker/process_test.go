package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/delivery"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/schema"
	"github.com/certfleet/certfleet/testenv"
)

// The end-to-end check with real processes: requests through two
// issuer-worker processes in one group, HTTP-01 validated by Pebble against
// the database-backed responder that only one of them serves; every request
// ends as cert_obtained; keys sealed; every key delivered, sealed to the
// one recipient registered (-deliver-keys); no key material on any topic,
// the delivery topic included, nor in any log; SIGTERM
// stops both cleanly (exit 0) within the shutdown deadline. Every
// connection is production-shaped: the workers reach Kafka on the SASL_SSL
// listener as the worker principal (SCRAM-SHA-512, its ACLs only) and the
// database over TLS with verify-full and a client certificate; the keyring
// and the password are 0600 files; the upstream producer publishes as the
// producer principal.
func TestTwoWorkerProcesses(t *testing.T) {
	s := testenv.Require(t)
	sec := productionConnections(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	f := newFixture(t, ctx, s, "p", 4)
	bin, dbURL, d, suffix, topics := f.bin, f.dbURL, f.d, f.suffix, f.topics
	deliveries := delivery.DefaultTopic + ".p-" + suffix
	if err := events.Provision(ctx, &kafka.Client{Addr: kafka.TCP(s.KafkaBrokers...)},
		delivery.TopicSpec(deliveries, events.ProvisionOptions{Partitions: 4, ReplicationFactor: 1})); err != nil {
		t.Fatal(err)
	}
	recipientKey, err := delivery.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := delivery.NewStore(d).Add(ctx, delivery.Recipient{Name: "edge", Key: recipientKey.Public(), Tenants: []string{"tenant-" + suffix}}, "test"); err != nil {
		t.Fatal(err)
	}
	keyring := sec.keyringFile(t)
	http01 := fmt.Sprintf("%s:%d", testenv.HTTP01AddrWorkerTests, s.HTTP01Port)
	type proc struct {
		cmd    *exec.Cmd
		listen string
		log    *testenv.LogBuffer
		done   chan error
	}
	start := func(name string, serveHTTP01 bool) *proc {
		p := &proc{listen: testenv.FreeAddr(t, "127.0.0.1"), log: &testenv.LogBuffer{}, done: make(chan error, 1)}
		args := []string{"-owner", name, "-listen", p.listen, "-concurrency", fmt.Sprint(testenv.MaxConcurrentOrdersPerPackage / 2), "-shutdown-timeout", "20s",
			"-topic-requests", topics.Requests, "-topic-retry", topics.Retry, "-topic-dlq", topics.DLQ,
			"-topic-events", topics.Events, "-topic-ratelimit-changes", topics.RateLimitChanges,
			"-group", "certfleet-p-" + suffix, "-profile", testenv.PebbleShortProfile, "-seal-keys-file", keyring,
			"-deliver-keys", "-topic-deliveries", deliveries}
		if serveHTTP01 {
			args = append(args, "-http01-listen", http01)
		}
		p.cmd = exec.Command(bin, args...)
		p.cmd.Env = append(append(os.Environ(), sec.kafkaEnv(testenv.PrincipalWorker)...),
			"CERTFLEET_DATABASE_URL="+sec.databaseURL(t, dbURL), "CERTFLEET_SEAL_KEYS=",
			"CERTFLEET_CAS=pebble="+s.ACMEDirectory, "CERTFLEET_ACME_TLS_CA="+s.ACMETLSCA)
		p.cmd.Stdout, p.cmd.Stderr = io.Discard, p.log
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { p.done <- p.cmd.Wait() }()
		t.Cleanup(func() {
			_ = p.cmd.Process.Kill()
			if t.Failed() {
				t.Logf("%s log:\n%s", name, testenv.Tail(p.log.String(), 30))
			}
		})
		return p
	}
	a, bproc := start("worker-a", true), start("worker-b", false)
	for _, p := range []*proc{a, bproc} {
		waitReady(t, ctx, p.listen)
	}

	const n = 200
	chall := testenv.ChallTestSrv{URL: s.ChallTestSrvURL}
	var evs []events.Event
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("www.p%d-%s.test", i, suffix)
		if err := chall.AddA(ctx, name, testenv.HTTP01AddrWorkerTests); err != nil {
			t.Fatal(err)
		}
		ev, err := events.New("//test", time.Now(), &events.IssuanceRequest{RequestID: fmt.Sprintf("p-%d-%s", i, suffix),
			SANs: []string{name}, Tenant: "tenant-" + suffix, KeyType: events.KeyECDSAP256, CA: "pebble", Reason: events.ReasonNew})
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	upstream := sec.connector(t, testenv.PrincipalProducer)
	prod, err := events.NewProducer(events.ProducerConfig{Brokers: upstream.Brokers(), Topics: topics, Transport: upstream.Transport(topics.Requests)})
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	t0 := time.Now()
	if err := prod.Publish(ctx, evs...); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	err = waitTopic(ctx, s.KafkaBrokers, topics.Events, func(all []kafka.Message) bool {
		clear(got)
		for _, m := range all {
			if ev, err := events.Decode(m); err == nil {
				if ob, ok := ev.Data.(*events.CertObtained); ok {
					got[ob.RequestID] = true
				}
			}
		}
		return len(got) == n
	})
	if err != nil {
		t.Fatalf("%d of %d certificates: %v", len(got), n, err)
	}
	t.Logf("%d certificates through 2 worker processes in %v (%.1f/s)", n, time.Since(t0).Round(time.Millisecond), n/time.Since(t0).Seconds())

	var stored int
	if err := d.Pool().QueryRow(ctx, `SELECT count(*) FROM issued_certificates WHERE position('PRIVATE KEY' in encode(sealed_key, 'escape')) = 0`).Scan(&stored); err != nil || stored != n {
		t.Fatalf("%d sealed certificates stored (%v), want %d", stored, err, n)
	}
	for _, topic := range []string{topics.Requests, topics.Retry, topics.DLQ, topics.Events, deliveries} {
		msgs, err := events.ReadTopic(ctx, nil, s.KafkaBrokers, topic, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if strings.Contains(string(m.Value), "PRIVATE KEY") {
				t.Fatalf("key material on %s", topic)
			}
		}
		if topic != deliveries {
			continue
		}
		opened := map[string]bool{}
		for _, m := range msgs {
			r, err := delivery.Decode(m)
			if err == nil {
				_, err = delivery.Open(recipientKey, r)
			}
			if err != nil {
				t.Fatalf("delivery at %d/%d: %v", m.Partition, m.Offset, err)
			}
			opened[r.RequestID] = true
		}
		if len(opened) != n {
			t.Errorf("%d certificates delivered to the recipient, want %d", len(opened), n)
		}
	}
	metrics := httpGet(t, ctx, "http://"+a.listen+"/metrics")
	if !strings.Contains(metrics, `certfleet_worker_jobs_total{outcome="obtained"}`) || !strings.Contains(metrics, "certfleet_worker_consumer_lag") {
		t.Errorf("metrics lack the jobs counter:\n%s", testenv.Tail(metrics, 20))
	}
	for name, p := range map[string]*proc{"worker-a": a, "worker-b": bproc} {
		t1 := time.Now()
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.done:
			if err != nil {
				t.Errorf("%s exited with %v after SIGTERM", name, err)
			}
			t.Logf("%s stopped %v after SIGTERM", name, time.Since(t1).Round(time.Millisecond))
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not stop within 30s of SIGTERM", name)
		}
		if strings.Contains(p.log.String(), "PRIVATE KEY") {
			t.Errorf("%s logged key material", name)
		}
	}
}

// fixture is what a process test starts workers with: the binary, a fresh
// migrated database, and fresh topics under the ACL prefixes.
type fixture struct {
	bin, dbURL, suffix string
	d                  *db.DB
	topics             events.Topics
}

func newFixture(t *testing.T, ctx context.Context, s testenv.Settings, prefix string, partitions int) fixture {
	t.Helper()
	bin, err := testenv.BuildCommand(ctx, t.TempDir(), "issuer-worker", ".")
	if err != nil {
		t.Fatal(err)
	}
	f := fixture{bin: bin, dbURL: testenv.FreshDatabase(t)}
	if f.d, err = db.Open(ctx, db.Config{URL: f.dbURL}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.d.Close)
	if _, err := schema.Migrate(ctx, f.d, schema.Options{}); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	f.suffix = hex.EncodeToString(b)
	f.topics = aclTopics("." + prefix + "-" + f.suffix)
	if err := events.Provision(ctx, &kafka.Client{Addr: kafka.TCP(s.KafkaBrokers...)}, f.topics.Specs(partitions, 1)...); err != nil {
		t.Fatal(err)
	}
	return f
}

// waitTopic polls topic until done accepts its records or ctx ends.
func waitTopic(ctx context.Context, brokers []string, topic string, done func([]kafka.Message) bool) error {
	for {
		all, err := events.ReadTopic(ctx, nil, brokers, topic, 0)
		if err == nil && done(all) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for records on %s: %v (last read error: %v)", topic, ctx.Err(), err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func waitReady(t *testing.T, ctx context.Context, addr string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("worker at %s not ready within 60s", addr)
}

func httpGet(t *testing.T, ctx context.Context, url string) string {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
