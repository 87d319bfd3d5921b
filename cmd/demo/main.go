// Command demo is `make run`: it drives a demo fleet through real
// issuer-worker processes on the testenv stack and shows live progress,
// then a summary. It expects `make testenv-up migrate` to have run (the
// Makefile does that) and leaves the stack running.
//
// What it does: generates (once) a key-encryption keyring under .testenv/,
// starts two issuer-worker processes in one consumer group (one also serves
// HTTP-01 from the database) and one scheduler (built by make run into
// ./bin, or by the demo itself without -bin), sets a tenant-specific
// override (tenant "gamma" may order only 40 certificates per 3 hours),
// manages -n SAN sets across three tenants (the scheduler emits their first
// issuance at the fleet budget), publishes a few hostile records as a broken
// upstream producer would, and follows the events and dead-letter topics
// until every certificate has settled: issued, failed, or waiting (deferred
// by a limit for more than a minute, ordered after the demo).
//
// Every connection is production-shaped: Kafka on testenv's SASL_SSL
// listener (SCRAM-SHA-512), the workers, the scheduler, the demo (as the
// operator) and the hostile upstream (as the producer) each as their own
// principal with only their ACLs; the database over TLS with verify-full and
// a client certificate; the keyring in a 0600 file.
//
// Progress goes to stdout: one line redrawn in place on a terminal, one line
// per change otherwise (progress.go).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/delivery"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/kafkaconn"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/scheduler"
	"github.com/certfleet/certfleet/seal"
	"github.com/certfleet/certfleet/testenv"
)

func main() {
	n := flag.Int("n", 300, "SAN sets to request, spread over three tenants")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
	bin := flag.String("bin", "", "directory holding issuer-worker and scheduler binaries already built (make run builds them into ./bin); empty: build them into .testenv/bin")
	flag.Parse()
	// The demo's names are under .test, which Pebble issues for: the demo
	// and the workers and scheduler it starts (through the environment)
	// accept them.
	testenv.UseLabNames()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *n, *timeout, *bin); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

var tenants = []string{"alpha", "beta", "gamma"}

func run(ctx context.Context, n int, timeout time.Duration, bin string) error {
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	s, err := testenv.Load()
	if err != nil {
		return fmt.Errorf("%w: run `make testenv-up` first (make run does)", err)
	}
	state, err := testenv.StateDir()
	if err != nil {
		return err
	}
	runID := time.Now().UTC().Format("150405")
	topics := events.DefaultTopics()
	// Everything connects as in production: Kafka on the SASL_SSL listener,
	// each component as its own principal with only its ACLs (the demo
	// itself as the operator, hostile records as the upstream producer), the
	// database over TLS with verify-full and a client certificate, the
	// keyring in a 0600 file.
	operator, err := principal(s, testenv.PrincipalOperator)
	if err != nil {
		return err
	}
	defer operator.Close()
	// The five, and the key delivery topic the README's walkthrough uses.
	provision := events.ProvisionOptions{Partitions: 6, ReplicationFactor: 1, MinInsyncReplicas: 1}
	if err := events.Provision(ctx, operator.Client(append(topics.All(), delivery.DefaultTopic)...),
		append(topics.SpecsWith(provision), delivery.TopicSpec(delivery.DefaultTopic, provision))...); err != nil {
		return fmt.Errorf("provisioning topics: %w", operator.Explain(err, "create topics"))
	}
	keys := filepath.Join(state, "demo-keys")
	if err := keyring(keys); err != nil {
		return err
	}
	dbURL, err := s.DatabaseTLSURLOf(s.DatabaseURL)
	if err != nil {
		return err
	}
	d, err := db.Open(ctx, db.Config{URL: dbURL})
	if err != nil {
		return err
	}
	defer d.Close()
	if err := setOverride(ctx, d); err != nil {
		return err
	}

	if bin == "" {
		bin = filepath.Join(state, "bin")
		step("building issuer-worker and scheduler into " + bin + " (a first build compiles every dependency: minutes on 2 cores)")
		for _, b := range []string{"issuer-worker", "scheduler"} {
			if _, err := testenv.BuildCommand(ctx, bin, b, "./cmd/"+b); err != nil {
				return err
			}
		}
	}
	step("starting 2 issuer-worker processes and a scheduler (logs in " + state + ")")
	env := append(os.Environ(), "CERTFLEET_DATABASE_URL="+dbURL, "CERTFLEET_SEAL_KEYS=", "CERTFLEET_SEAL_KEYS_FILE="+keys,
		"CERTFLEET_CAS=pebble="+s.ACMEDirectory, "CERTFLEET_ACME_TLS_CA="+s.ACMETLSCA)
	workerEnv := append(append([]string{}, env...), s.KafkaSASLEnv(testenv.PrincipalWorker)...)
	schedulerEnv := append(append([]string{}, env...), s.KafkaSASLEnv(testenv.PrincipalScheduler)...)
	var procs []worker
	for i, http01 := range []string{fmt.Sprintf("%s:%d", testenv.HTTP01AddrDemo, s.HTTP01Port), ""} {
		args := []string{"-owner", fmt.Sprintf("worker-%d", i+1), "-concurrency", "4", "-profile", testenv.PebbleShortProfile}
		if http01 != "" {
			args = append(args, "-http01-listen", http01)
		}
		w, err := startProc(filepath.Join(bin, "issuer-worker"), state, fmt.Sprintf("worker-%d", i+1), args, workerEnv)
		if err != nil {
			return err
		}
		procs = append(procs, w)
		defer stopWorker(w)
	}
	sched, err := startProc(filepath.Join(bin, "scheduler"), state, "scheduler",
		[]string{"-holder", "scheduler-1", "-tick-interval", "1s", "-budget", "10/1s"}, schedulerEnv)
	if err != nil {
		return err
	}
	procs = append(procs, sched)
	defer stopWorker(sched)

	step(fmt.Sprintf("managing %d SAN sets for tenants %s; publishing 5 hostile records", n, strings.Join(tenants, ", ")))
	follow, err := newFollower(ctx, operator, topics)
	if err != nil {
		return err
	}
	sent, err := manage(ctx, d, s, n, runID)
	if err != nil {
		return err
	}
	if err := publishHostile(ctx, s, topics); err != nil {
		return err
	}
	step("following " + topics.Events + " and " + topics.DLQ + " until every certificate has settled")
	fmt.Print(legend())
	sum := follow.until(ctx, sent, newProgressWriter(os.Stdout, isTerminal(os.Stdout)))
	sum.print(os.Stdout, time.Since(t0))
	for _, w := range procs {
		stopWorker(w)
	}
	if sum.settled() < len(sent) {
		return fmt.Errorf("only %d of %d certificates settled (issued, failed or waiting) before the timeout", sum.settled(), len(sent))
	}
	// Every request the demo sends is valid: a failure is a fault to look
	// at, not a result (waiting is: it is gamma's override at work).
	if sum.failed > 0 {
		return fmt.Errorf("%d of %d certificates failed permanently; the reasons are in %s", sum.failed, len(sent),
			filepath.Join(state, "worker-*.log"))
	}
	fmt.Printf("The stack is still running (make testenv-down stops it). Logs: %s, %s\n",
		filepath.Join(state, "worker-*.log"), filepath.Join(state, "scheduler.log"))
	return nil
}

func step(msg string) { fmt.Printf("==> %s\n", msg) }

// keyring creates the demo keyring file (mode 0600) on first use.
func keyring(path string) error {
	if _, err := os.Stat(path); err == nil {
		return os.Chmod(path, 0o600)
	}
	line, err := seal.GenerateKeyText("demo1")
	if err != nil {
		return err
	}
	return os.WriteFile(path, []byte(line+"\n"), 0o600)
}

// principal connects to the SASL_SSL listener as the testenv principal p and
// checks the connection, so a stack without the production-shaped listeners
// (or a broken one) fails here with the cause named.
func principal(s testenv.Settings, p string) (*kafkaconn.Connector, error) {
	if len(s.KafkaSASLBrokers) == 0 {
		return nil, fmt.Errorf("the stack has no SASL_SSL listener (%s): restart it with `make testenv-up`", testenv.EnvKafkaSASLBrokers)
	}
	c, err := kafkaconn.New(s.KafkaSASLConfig(p))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout())
	defer cancel()
	if err := c.Check(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// setOverride gives tenant gamma a lower order budget than the default, so
// the demo shows limit deferrals. Re-running keeps the existing override.
func setOverride(ctx context.Context, d *db.DB) error {
	store := ratelimit.NewOverrideStore(d, nil)
	existing, err := store.List(ctx, ratelimit.NewOrdersPerAccount, 1000)
	if err != nil {
		return fmt.Errorf("listing overrides: %w", err)
	}
	for _, o := range existing {
		if o.Key == "gamma" && o.Enabled {
			fmt.Printf("    override in place: NewOrdersPerAccount for gamma = %d per %v\n", o.Limit.Count, o.Limit.Period)
			return nil
		}
	}
	o, err := store.Create(ctx, ratelimit.Override{Name: ratelimit.NewOrdersPerAccount, Key: "gamma",
		Limit: ratelimit.Limit{Count: 40, Period: 3 * time.Hour, Burst: 40}, ValidFrom: time.Now(), Comment: "demo: gamma is on a small plan", CreatedBy: "make-run"})
	if err != nil {
		return fmt.Errorf("creating the demo override: %w", err)
	}
	fmt.Printf("    override set: NewOrdersPerAccount for gamma = %d per %v (id %s)\n", o.Limit.Count, o.Limit.Period, o.ID)
	return nil
}

// startProc starts a certfleet binary with its logs in the state directory
// and waits until its /readyz answers.
func startProc(bin, state, name string, args, env []string) (worker, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return worker{}, err
	}
	listen := l.Addr().String()
	l.Close()
	logf, err := os.Create(filepath.Join(state, name+".log"))
	if err != nil {
		return worker{}, err
	}
	cmd := exec.Command(bin, append(args, "-listen", listen)...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return worker{}, err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return worker{}, fmt.Errorf("%s exited at start; see %s", name, logf.Name())
		default:
		}
		if resp, err := http.Get("http://" + listen + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				fmt.Printf("    %s ready (pid %d, metrics http://%s/metrics)\n", name, cmd.Process.Pid, listen)
				return worker{cmd, exited}, nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	return worker{}, fmt.Errorf("%s did not become ready; see %s", name, logf.Name())
}

type worker struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

func stopWorker(w worker) {
	select {
	case <-w.exited:
		return
	default:
	}
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.exited:
	case <-time.After(30 * time.Second):
		_ = w.cmd.Process.Kill()
	}
}

// manage puts the demo fleet under management (names pointed at the demo's
// HTTP-01 responder); the scheduler emits their first issuance. It returns
// certificate identity -> time managed.
func manage(ctx context.Context, d *db.DB, s testenv.Settings, n int, runID string) (map[string]time.Time, error) {
	chall := testenv.ChallTestSrv{URL: s.ChallTestSrvURL}
	inv := scheduler.NewInventory(d, nil)
	sent := map[string]time.Time{}
	var ms []scheduler.Managed
	for i := 0; i < n; i++ {
		tenant := tenants[i%len(tenants)]
		host := fmt.Sprintf("%s-%d-%s.test", tenant, i, runID) // its own registered domain, like a SaaS custom domain
		sans := []string{host, "www." + host}
		for _, name := range sans {
			if err := chall.AddA(ctx, name, testenv.HTTP01AddrDemo); err != nil {
				return nil, err
			}
		}
		m, err := scheduler.Normalize(scheduler.Spec{SANs: sans, Tenant: tenant, CA: "pebble", Profile: testenv.PebbleShortProfile})
		if err != nil {
			return nil, err
		}
		ms = append(ms, m)
		sent[m.Identity] = time.Now()
	}
	if _, err := inv.Manage(ctx, ms...); err != nil {
		return nil, fmt.Errorf("managing the demo fleet: %w", err)
	}
	return sent, nil
}

// publishHostile writes records a broken upstream producer might send.
func publishHostile(ctx context.Context, s testenv.Settings, topics events.Topics) error {
	upstream, err := principal(s, testenv.PrincipalProducer)
	if err != nil {
		return err
	}
	defer upstream.Close()
	prod, err := events.NewProducer(events.ProducerConfig{Brokers: upstream.Brokers(), Topics: topics, Transport: upstream.Transport(topics.Requests)})
	if err != nil {
		return err
	}
	defer prod.Close()
	hostile := []kafka.Message{
		{Topic: topics.Requests, Value: []byte("{not json")},
		{Topic: topics.Requests, Value: make([]byte, 70<<10)},
		{Topic: topics.Requests, Value: []byte(`{"request_id":"x"}`), Headers: []kafka.Header{{Key: "ce_specversion", Value: []byte("0.3")}}},
		{Topic: topics.Requests, Value: []byte(`{"request_id":"<script>","sans":["exa mple..com"]}`)},
		{Topic: topics.Requests, Value: []byte("\xff\xfe junk")},
	}
	return prod.WriteMessages(ctx, hostile...)
}

// follower follows the events and DLQ topics from their ends at creation.
type follower struct {
	msgs <-chan kafka.Message
	stop context.CancelFunc
}

func newFollower(ctx context.Context, conn *kafkaconn.Connector, topics events.Topics) (*follower, error) {
	ctx, stop := context.WithCancel(ctx)
	msgs, err := events.Follow(ctx, conn.DialerContext(ctx), conn.Brokers(), topics.Events, topics.DLQ)
	if err != nil {
		stop()
		return nil, err
	}
	return &follower{msgs: msgs, stop: stop}, nil
}

// until follows outcomes until every managed certificate has settled
// (issued, failed, or waiting: deferred past the next minute, to be ordered
// after the demo), or ctx ends.
func (f *follower) until(ctx context.Context, sent map[string]time.Time, out *progressWriter) summary {
	defer f.stop()
	t := newTracker(sent)
	start := time.Now()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case m, open := <-f.msgs:
			if !open {
				f.msgs = nil // ctx ended: the case below ends the loop
				continue
			}
			if _, ok := events.ReadDeadLetter(m); ok {
				t.deadLetter()
				continue
			}
			if e, err := events.Decode(m); err == nil {
				t.observe(e, time.Now())
			}
		case <-tick.C:
			sum := t.summary()
			done := sum.settled() >= sum.total
			out.update(sum, time.Since(start), done)
			if done {
				return sum
			}
		case <-ctx.Done():
			sum := t.summary()
			out.update(sum, time.Since(start), true)
			return sum
		}
	}
}
