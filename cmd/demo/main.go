// Command demo is `make run`: it drives a demo fleet through real
// issuer-worker processes on the testenv stack and shows live progress,
// then a summary. It expects `make testenv-up migrate` to have run (the
// Makefile does that) and leaves the stack running.
//
// What it does: generates (once) a key-encryption keyring under .testenv/,
// builds and starts two issuer-worker processes in one consumer group (one
// also serves HTTP-01 from the database) and one scheduler, sets a
// tenant-specific override (tenant "gamma" may order only 40 certificates per
// 3 hours), manages -n SAN sets across three tenants (the scheduler emits
// their first issuance at the fleet budget), publishes a few hostile records
// as a broken upstream producer would, and follows the events and
// dead-letter topics until every certificate is obtained, failed, or
// deferred past the demo's horizon.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/scheduler"
	"github.com/certfleet/certfleet/seal"
	"github.com/certfleet/certfleet/testenv"
)

func main() {
	n := flag.Int("n", 300, "SAN sets to request, spread over three tenants")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *n, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

var tenants = []string{"alpha", "beta", "gamma"}

func run(ctx context.Context, n int, timeout time.Duration) error {
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
	if err := events.Provision(ctx, &kafka.Client{Addr: kafka.TCP(s.KafkaBrokers...)}, topics.Specs(6, 1)...); err != nil {
		return fmt.Errorf("provisioning topics: %w", err)
	}
	keys, err := keyring(filepath.Join(state, "demo-keys"))
	if err != nil {
		return err
	}
	d, err := db.Open(ctx, db.Config{URL: s.DatabaseURL})
	if err != nil {
		return err
	}
	defer d.Close()
	if err := setOverride(ctx, d); err != nil {
		return err
	}

	step("building and starting 2 issuer-worker processes and a scheduler")
	for _, b := range []string{"issuer-worker", "scheduler"} {
		if _, err := testenv.BuildCommand(ctx, filepath.Join(state, "bin"), b, "./cmd/"+b); err != nil {
			return err
		}
	}
	env := append(os.Environ(), "CERTFLEET_KAFKA_BROKERS="+strings.Join(s.KafkaBrokers, ","), "CERTFLEET_DATABASE_URL="+s.DatabaseURL,
		"CERTFLEET_SEAL_KEYS="+keys, "CERTFLEET_CAS=pebble="+s.ACMEDirectory, "CERTFLEET_ACME_TLS_CA="+s.ACMETLSCA)
	var procs []worker
	for i, http01 := range []string{fmt.Sprintf("%s:%d", testenv.HTTP01AddrDemo, s.HTTP01Port), ""} {
		args := []string{"-owner", fmt.Sprintf("worker-%d", i+1), "-concurrency", "4", "-profile", testenv.PebbleShortProfile}
		if http01 != "" {
			args = append(args, "-http01-listen", http01)
		}
		w, err := startProc(filepath.Join(state, "bin", "issuer-worker"), state, fmt.Sprintf("worker-%d", i+1), args, env)
		if err != nil {
			return err
		}
		procs = append(procs, w)
		defer stopWorker(w)
	}
	sched, err := startProc(filepath.Join(state, "bin", "scheduler"), state, "scheduler",
		[]string{"-holder", "scheduler-1", "-tick-interval", "1s", "-budget", "10/1s"}, env)
	if err != nil {
		return err
	}
	procs = append(procs, sched)
	defer stopWorker(sched)

	step(fmt.Sprintf("managing %d SAN sets for tenants %s; publishing 5 hostile records", n, strings.Join(tenants, ", ")))
	follow, err := newFollower(ctx, s.KafkaBrokers, topics)
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
	step("following " + topics.Events + " and " + topics.DLQ)
	sum := follow.until(ctx, sent)
	fmt.Println()
	sum.print(os.Stdout, time.Since(t0))
	for _, w := range procs {
		stopWorker(w)
	}
	if sum.obtained+sum.deferredLong+sum.failed < len(sent) {
		return fmt.Errorf("only %d of %d certificates reached an outcome before the timeout", sum.obtained+sum.deferredLong+sum.failed, len(sent))
	}
	fmt.Println("The stack is still running (make testenv-down stops it). Logs: .testenv/worker-*.log, .testenv/scheduler.log")
	return nil
}

func step(msg string) { fmt.Printf("==> %s\n", msg) }

// keyring loads the demo keyring, creating it on first use.
func keyring(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	line, err := seal.GenerateKeyText("demo1")
	if err != nil {
		return "", err
	}
	return line, os.WriteFile(path, []byte(line+"\n"), 0o600)
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
	prod, err := events.NewProducer(events.ProducerConfig{Brokers: s.KafkaBrokers, Topics: topics})
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

// follower reads the events and DLQ topics from their ends at creation.
type follower struct {
	brokers []string
	readers []*kafka.Reader
	msgs    chan kafka.Message
}

func newFollower(ctx context.Context, brokers []string, topics events.Topics) (*follower, error) {
	f := &follower{brokers: brokers, msgs: make(chan kafka.Message, 1024)}
	for _, topic := range []string{topics.Events, topics.DLQ} {
		conn, err := kafka.DialContext(ctx, "tcp", brokers[0])
		if err != nil {
			return nil, err
		}
		parts, err := conn.ReadPartitions(topic)
		conn.Close()
		if err != nil {
			return nil, err
		}
		for _, p := range parts {
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p.ID, MaxWait: 100 * time.Millisecond})
			if err := r.SetOffset(kafka.LastOffset); err != nil {
				return nil, err
			}
			f.readers = append(f.readers, r)
			go func() {
				for {
					m, err := r.ReadMessage(ctx)
					if err != nil {
						return
					}
					f.msgs <- m
				}
			}()
		}
	}
	return f, nil
}

type summary struct {
	total, obtained, failed, deferredLong, deferrals, dlq int
	latencies                                             []time.Duration
	byLimit                                               map[string]int
	issuedBy                                              map[string]int
}

// until follows outcomes until every managed certificate has one (deferred past
// the next minute counts: it will be retried after the demo), or ctx ends.
func (f *follower) until(ctx context.Context, sent map[string]time.Time) summary {
	defer func() {
		for _, r := range f.readers {
			r.Close()
		}
	}()
	sum := summary{total: len(sent), byLimit: map[string]int{}, issuedBy: map[string]int{}}
	done := map[string]bool{}
	longDeferred := map[string]bool{}
	start := time.Now()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case m := <-f.msgs:
			if _, ok := events.ReadDeadLetter(m); ok {
				sum.dlq++
				continue
			}
			e, err := events.Decode(m)
			if err != nil {
				continue
			}
			switch d := e.Data.(type) {
			case *events.CertObtained:
				id := events.Identity(d.SANs)
				if at, ok := sent[id]; ok && !done[id] {
					done[id] = true
					delete(longDeferred, id)
					sum.obtained++
					sum.issuedBy[d.Tenant]++
					sum.latencies = append(sum.latencies, time.Since(at))
				}
			case *events.CertFailed:
				id := events.Identity(d.SANs)
				if _, ok := sent[id]; ok && !d.Retryable && !done[id] {
					done[id] = true
					sum.failed++
				}
			case *events.IssuanceDeferred:
				id := events.Identity(d.SANs)
				if _, ok := sent[id]; ok {
					sum.deferrals++
					sum.byLimit[d.Limit]++
					if time.Until(d.RetryAt) > time.Minute && !done[id] {
						longDeferred[id] = true
					}
				}
			}
		case <-tick.C:
			sum.deferredLong = len(longDeferred)
			progress(sum, time.Since(start))
			if sum.obtained+sum.failed+sum.deferredLong >= sum.total {
				return sum
			}
		case <-ctx.Done():
			sum.deferredLong = len(longDeferred)
			return sum
		}
	}
}

func progress(s summary, elapsed time.Duration) {
	const width = 30
	filled := width * (s.obtained + s.failed + s.deferredLong) / max(s.total, 1)
	bar := strings.Repeat("#", filled) + strings.Repeat(".", width-filled)
	rate := float64(s.obtained) / max(elapsed.Seconds(), 0.001)
	fmt.Printf("\r  [%s] issued %d/%d (%.1f/s)  deferred %d (waiting %d)  failed %d  DLQ %d   ",
		bar, s.obtained, s.total, rate, s.deferrals, s.deferredLong, s.failed, s.dlq)
}

func (s summary) print(w io.Writer, elapsed time.Duration) {
	slices.Sort(s.latencies)
	pct := func(p float64) string {
		if len(s.latencies) == 0 {
			return "-"
		}
		return s.latencies[min(len(s.latencies)-1, int(p*float64(len(s.latencies))))].Round(time.Millisecond).String()
	}
	fmt.Fprintln(w, "\nsummary")
	rows := [][2]string{
		{"certificates managed", fmt.Sprint(s.total)},
		{"certificates issued", fmt.Sprint(s.obtained)},
		{"  by tenant", fmt.Sprintf("alpha %d, beta %d, gamma %d", s.issuedBy["alpha"], s.issuedBy["beta"], s.issuedBy["gamma"])},
		{"deferred by a limit (retried later)", fmt.Sprint(s.deferredLong)},
		{"deferral events", limitsText(s.byLimit)},
		{"failed", fmt.Sprint(s.failed)},
		{"dead-lettered records", fmt.Sprint(s.dlq)},
		{"CA orders (one per issued certificate)", fmt.Sprint(s.obtained)},
		{"time to certificate p50 / p99", pct(0.50) + " / " + pct(0.99)},
		{"demo wall time", elapsed.Round(100 * time.Millisecond).String()},
	}
	for _, r := range rows {
		fmt.Fprintf(w, "  %-40s %s\n", r[0], r[1])
	}
}

func limitsText(m map[string]int) string {
	if len(m) == 0 {
		return "0"
	}
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s %d", k, v))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}
