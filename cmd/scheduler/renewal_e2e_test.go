package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/scheduler"
	"github.com/certfleet/certfleet/seal"
	"github.com/certfleet/certfleet/testenv"
)

// Issue 6's end-to-end check, with real processes only: 50 managed
// certificates on Pebble's short-lived profile are issued through two
// issuer-worker processes (HTTP-01 validated by Pebble against the workers'
// database-backed responder), driven by two scheduler processes (leader and
// standby). Pebble's management API then moves their ARI windows into the
// past (they end now), as a CA signals an incident: the schedulers' ARI
// re-check puts them in the incident lane and the workers order the
// reissues (reason reissue, priority 9) with "replaces" naming the previous
// certificate. Midway through the
// renewals the active scheduler is killed with SIGKILL (no lease release):
// the standby takes over when the lease expires, and every certificate is
// renewed exactly once: 50 renewals, one request id each, 100 certificates
// stored in all (a job ordered twice would store a 101st, or be refused by
// Pebble as already replaced).
func TestRenewalEndToEnd(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 170*time.Second)
	defer cancel()
	const n = 50
	const leaseTTL = 3 * time.Second

	dir := t.TempDir()
	built := time.Now()
	schedBin, err := testenv.BuildCommand(ctx, dir, "scheduler", ".")
	if err != nil {
		t.Fatal(err)
	}
	workerBin, err := testenv.BuildCommand(ctx, dir, "issuer-worker", "../issuer-worker")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built scheduler and issuer-worker in %v", time.Since(built).Round(time.Millisecond))

	dbURL, d := migratedDatabase(t, ctx)
	sfx := randSuffix()
	topics := events.Topics{Requests: "rn.req." + sfx, Retry: "rn.retry." + sfx, DLQ: "rn.dlq." + sfx,
		Events: "rn.events." + sfx, RateLimitChanges: "rn.rl." + sfx}
	if err := events.Provision(ctx, &kafka.Client{Addr: kafka.TCP(s.KafkaBrokers...)}, topics.Specs(4, 1)...); err != nil {
		t.Fatal(err)
	}

	// The inventory: one registered domain per certificate, each pointed at
	// this package's HTTP-01 address.
	chall := testenv.ChallTestSrv{URL: s.ChallTestSrvURL}
	inv := scheduler.NewInventory(d, nil)
	tenant := "renew-" + sfx
	managed := map[string]bool{} // identities managed now
	names := 0
	manage := func(k int) {
		t.Helper()
		var ms []scheduler.Managed
		for range k {
			name := fmt.Sprintf("www.r%d-%s.test", names, sfx)
			names++
			if err := chall.AddA(ctx, name, testenv.HTTP01AddrSchedulerTests); err != nil {
				t.Fatal(err)
			}
			m, err := scheduler.Normalize(scheduler.Spec{SANs: []string{name}, Tenant: tenant, CA: s.ACMEDirectory,
				Profile: testenv.PebbleShortProfile})
			if err != nil {
				t.Fatal(err)
			}
			ms = append(ms, m)
			managed[m.Identity] = true
		}
		if res, err := inv.Manage(ctx, ms...); err != nil || res.Added != k {
			t.Fatalf("manage: %+v %v", res, err)
		}
	}
	manage(n)

	keyLine, err := seal.GenerateKeyText("k1")
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "CERTFLEET_KAFKA_BROKERS="+strings.Join(s.KafkaBrokers, ","), "CERTFLEET_DATABASE_URL="+dbURL,
		"CERTFLEET_ACME_TLS_CA="+s.ACMETLSCA)
	// Two workers, 3 orders each: testenv.MaxConcurrentOrdersPerPackage in all.
	// Only worker-a serves HTTP-01; it answers for both from the database.
	var workers []*process
	for i, name := range []string{"worker-a", "worker-b"} {
		p := &process{name: name, listen: freePort(t)}
		args := []string{"-owner", name, "-listen", p.listen, "-concurrency", fmt.Sprint(testenv.MaxConcurrentOrdersPerPackage / 2),
			"-topic-requests", topics.Requests, "-topic-retry", topics.Retry, "-topic-dlq", topics.DLQ,
			"-topic-events", topics.Events, "-topic-ratelimit-changes", topics.RateLimitChanges, "-group", "rn-w-" + sfx}
		if i == 0 {
			args = append(args, "-http01-listen", fmt.Sprintf("%s:%d", testenv.HTTP01AddrSchedulerTests, s.HTTP01Port))
		}
		p.start(t, workerBin, args, append(env, "CERTFLEET_SEAL_KEYS="+keyLine, "CERTFLEET_CAS=pebble="+s.ACMEDirectory))
		workers = append(workers, p)
	}
	// Schedulers: 5 jobs/s so the renewals take long enough to kill the
	// leader among them; ARI re-checked every 2 s instead of Pebble's 6 h.
	startScheduler := func(name string) *process {
		p := &process{name: name, listen: freePort(t)}
		p.start(t, schedBin, []string{"-holder", name, "-listen", p.listen, "-group", "rn-s-" + sfx,
			"-topic-requests", topics.Requests, "-topic-events", topics.Events, "-topic-dlq", topics.DLQ,
			"-tick-interval", "200ms", "-lease-ttl", leaseTTL.String(), "-budget", "5/1s/5",
			"-ari-recheck-min", "1s", "-ari-recheck-max", "2s", "-shutdown-timeout", "10s"},
			append(env, "CERTFLEET_CAS=pebble="+s.ACMEDirectory)) // ARI only from configured CAs
		return p
	}
	t0 := time.Now()
	schedA := startScheduler("sched-a")
	poll(t, ctx, "sched-a leads", func() bool { return strings.Contains(get(schedA.listen, "/readyz"), "leader") })
	schedB := startScheduler("sched-b")
	poll(t, ctx, "sched-b is the standby", func() bool { return strings.Contains(get(schedB.listen, "/readyz"), "standby") })
	for _, w := range workers {
		poll(t, ctx, w.name+" ready", func() bool { return get(w.listen, "/readyz") == "ready\n" })
	}

	// Phase 1: first issuance, recorded by the schedulers with an ARI plan.
	initial := map[string]*events.CertObtained{} // identity -> first certificate
	var obtained []*events.CertObtained
	readObtained := func() {
		all, err := events.ReadTopic(ctx, nil, s.KafkaBrokers, topics.Events, 0)
		if err != nil {
			return
		}
		obtained = obtained[:0]
		for _, m := range all {
			ev, err := events.Decode(m)
			if err != nil {
				t.Fatalf("undecodable event at %d/%d: %v", m.Partition, m.Offset, err)
			}
			switch p := ev.Data.(type) {
			case *events.CertObtained:
				obtained = append(obtained, p)
			case *events.CertFailed:
				t.Fatalf("cert_failed: %+v", p)
			}
		}
	}
	// Pebble v2.10.1 refused to see about one certificate in 256 replaced
	// (pebble#550: a serial whose first byte is 0x80 or more); v2.10.3, which
	// testenv runs, fixed it, so every first certificate must renew.
	poll(t, ctx, "a first certificate for every managed SAN set", func() bool {
		readObtained()
		clear(initial)
		for _, o := range obtained {
			if id := events.Identity(o.SANs); managed[id] {
				initial[id] = o
			}
		}
		return len(initial) == n
	})
	issued := time.Since(t0)
	for id, o := range initial {
		if o.Replaces != "" {
			t.Errorf("%s: first certificate replaces %q", id, o.Replaces)
		}
		if life := o.NotAfter.Sub(o.NotBefore); life > 7*24*time.Hour {
			t.Fatalf("%s: lifetime %v, not the %s profile", id, life, testenv.PebbleShortProfile)
		}
	}
	poll(t, ctx, "first certificates recorded with an ARI plan", func() bool {
		var k int
		err := d.Pool().QueryRow(ctx, `SELECT count(*) FROM managed_certificates
			WHERE request_id IS NULL AND renewal_basis = 'ari' AND next_renewal_at > now() + interval '1 day'`).Scan(&k)
		return err == nil && k == n
	})
	t.Logf("issuance: %d certificates in %v", n, issued.Round(time.Millisecond))

	// Phase 2: the CA moves every window into the past (ending now: by the
	// re-check it has ended, an incident); kill -9 the leader while the
	// reissue jobs are going out.
	t1 := time.Now()
	for _, o := range initial {
		if err := s.SetRenewalInfo(ctx, o.ChainPEM, t1.Add(-time.Hour), t1); err != nil {
			t.Fatal(err)
		}
	}
	emittedRenewals := func(p *process) int {
		return int(metricValue(get(p.listen, "/metrics"), `certfleet_scheduler_jobs_emitted_total{reason="incident"}`))
	}
	var atKill int
	poll(t, ctx, "sched-a emits 10 renewal jobs", func() bool { atKill = emittedRenewals(schedA); return atKill >= 10 })
	if err := schedA.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	<-schedA.done
	poll(t, ctx, "sched-b takes over", func() bool { return strings.Contains(get(schedB.listen, "/readyz"), "leader") })
	takeover := time.Since(killed)
	if takeover > leaseTTL+leaseTTL/3+time.Second {
		t.Errorf("standby led %v after the leader died, more than one lease period (%v) plus a renewal interval", takeover, leaseTTL)
	}

	renewals := map[string]*events.CertObtained{} // identity -> renewal
	requestIDs := map[string]string{}             // request id -> identity
	poll(t, ctx, "50 renewals", func() bool {
		readObtained()
		clear(renewals)
		for _, o := range obtained {
			if id := events.Identity(o.SANs); managed[id] && o.RequestID != initial[id].RequestID {
				renewals[id] = o
			}
		}
		return len(renewals) == n
	})
	renewed := time.Since(t1)
	for id, r := range renewals {
		if want := initial[id].ARICertID; r.Replaces != want || want == "" {
			t.Errorf("%s: renewal replaces %q, want the previous ARI id %q", id, r.Replaces, want)
		}
		if life := r.NotAfter.Sub(r.NotBefore); life > 7*24*time.Hour {
			t.Errorf("%s: renewal lifetime %v", id, life)
		}
	}
	// Both leaders emitted renewal jobs, each under its own fencing token.
	jobs, err := events.ReadTopic(ctx, nil, s.KafkaBrokers, topics.Requests, 0)
	if err != nil {
		t.Fatal(err)
	}
	byToken := map[string]int{}
	jobIDs := map[string]bool{}
	for _, m := range jobs {
		ev, err := events.Decode(m)
		if err != nil {
			t.Fatal(err)
		}
		if q := ev.Data.(*events.IssuanceRequest); q.Reason == events.ReasonReissue && q.Priority == events.MaxPriority {
			byToken[header(m, scheduler.HeaderFencingToken)]++
			jobIDs[q.RequestID] = true
		}
	}
	if byToken["1"] == 0 || byToken["2"] == 0 {
		t.Errorf("renewal jobs by fencing token %v: want some from the first leader (1) and some from the standby (2)", byToken)
	}
	if len(jobIDs) != n {
		t.Errorf("%d distinct renewal request ids emitted, want %d", len(jobIDs), n)
	}
	// The surviving scheduler records every renewal (the dead member's
	// partitions move to it after the group's session timeout) and plans the
	// next one by the new certificate's ARI window.
	poll(t, ctx, "renewals recorded", func() bool {
		rows, err := d.Pool().Query(ctx, `SELECT identity, cert_ari_id FROM managed_certificates
			WHERE request_id IS NULL AND renewal_basis = 'ari' AND next_renewal_at > now() + interval '1 day'`)
		if err != nil {
			return false
		}
		defer rows.Close()
		k := 0
		for rows.Next() {
			var id, ari string
			if rows.Scan(&id, &ari) == nil && renewals[id] != nil && ari == renewals[id].ARICertID {
				k++
			}
		}
		return k == n
	})
	// Doubled jobs (checked last, so a late duplicate has had time to show):
	// every cert_obtained request id belongs to one certificate, each
	// certificate has exactly two (first and renewal), and exactly 100
	// certificates were issued and stored.
	readObtained()
	perIdentity := map[string]map[string]bool{}
	for _, o := range obtained {
		id := events.Identity(o.SANs)
		if prev, ok := requestIDs[o.RequestID]; ok && prev != id {
			t.Errorf("request id %s used for two certificates", o.RequestID)
		}
		requestIDs[o.RequestID] = id
		if perIdentity[id] == nil {
			perIdentity[id] = map[string]bool{}
		}
		perIdentity[id][o.RequestID] = true
	}
	for id, reqs := range perIdentity {
		if managed[id] && len(reqs) != 2 {
			t.Errorf("%s: %d request ids obtained a certificate, want 2 (first + renewal)", id, len(reqs))
		}
	}
	if len(requestIDs) != 2*n {
		t.Errorf("%d distinct request ids in cert_obtained events, want %d", len(requestIDs), 2*n)
	}
	var stored int
	if err := d.Pool().QueryRow(ctx, `SELECT count(*) FROM issued_certificates`).Scan(&stored); err != nil || stored != 2*n {
		t.Errorf("issued_certificates holds %d rows (%v), want %d: %d first + %d renewals", stored, err, 2*n, n, n)
	}
	t.Logf("renewal: %d renewals in %v; leader killed after emitting %d renewal jobs, standby led %v later; renewal jobs by fencing token %v (%d records, %d distinct ids); recorded %v after the windows moved",
		n, renewed.Round(time.Millisecond), atKill, takeover.Round(time.Millisecond), byToken, byToken["1"]+byToken["2"], len(jobIDs),
		time.Since(t1).Round(time.Millisecond))
	for _, w := range workers {
		t.Logf("%s: %s", w.name, grepLines(get(w.listen, "/metrics"), "certfleet_worker_jobs_total"))
	}

	// The survivor stops cleanly.
	_ = schedB.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-schedB.done:
		if err != nil {
			t.Errorf("sched-b exited with %v after SIGTERM", err)
		}
	case <-time.After(15 * time.Second):
		t.Error("sched-b did not stop within 15s of SIGTERM")
	}
}

// process is a child process of a test: its listen address, log and exit.
type process struct {
	name, listen string
	cmd          *exec.Cmd
	log          testenv.LogBuffer
	done         chan error
}

func (p *process) start(t *testing.T, bin string, args, env []string) {
	t.Helper()
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = io.Discard, &p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.done = make(chan error, 1)
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
		}
		if t.Failed() {
			t.Logf("%s log (last lines):\n%s", p.name, testenv.Tail(p.log.String(), 25))
		}
	})
}

// poll waits until ok, failing the test when ctx ends first. The failure
// says whether the stack is still healthy.
func poll(t *testing.T, ctx context.Context, what string, ok func() bool) {
	t.Helper()
	for !ok() {
		select {
		case <-ctx.Done():
			var status strings.Builder
			sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			err := testenv.Status(sctx, &status)
			cancel()
			t.Fatalf("timed out waiting until %s; stack status (%v):\n%s", what, err, status.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func randSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// metricValue reads one sample of a Prometheus text exposition; 0 when absent.
func metricValue(exposition, series string) float64 {
	for _, l := range strings.Split(exposition, "\n") {
		if rest, ok := strings.CutPrefix(l, series+" "); ok {
			v, _ := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v
		}
	}
	return 0
}

func header(m kafka.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
