package chaos

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/schema"
	"github.com/certfleet/certfleet/seal"
	"github.com/certfleet/certfleet/testenv"
	"github.com/certfleet/certfleet/testenv/caproxy"
)

const (
	envChaos        = "CERTFLEET_CHAOS"
	envFriendliness = "CERTFLEET_FRIENDLINESS"
	caName          = "pebble"
	tenant          = "chaos"
	// With fleetConfig.failover: the second CA (its own proxy in front of
	// the same Pebble) and the group requests name, caName first.
	caName2   = "pebble2"
	groupName = "pebbles"
)

// workerBin is the issuer-worker binary built once by TestMain.
var workerBin string

func TestMain(m *testing.M) {
	if os.Getenv(envChaos) == "" && os.Getenv(envFriendliness) == "" {
		os.Exit(m.Run()) // every test skips and says how to run it
	}
	dir, err := os.MkdirTemp("", "certfleet-chaos-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if workerBin, err = testenv.BuildCommand(context.Background(), dir, "issuer-worker", "github.com/certfleet/certfleet/cmd/issuer-worker"); err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// size is how big a scenario is: "ci" for make test, "full" for make chaos.
type size struct {
	name       string
	jobs       int           // valid jobs per scenario
	kills      int           // kill -9 in TestWorkerKills
	restarts   int           // service restarts in TestKafkaRestart / TestDatabaseRestart
	hostileX   int           // hostile records per valid job in TestHostileInput
	orders     caproxy.Limit // the workers' NewOrdersPerAccount; the CA enforces 10% more
	timeout    time.Duration // per scenario
	concurrent int           // orders in flight per worker
}

func sizeFor(t *testing.T) size {
	t.Helper()
	switch v := os.Getenv(envChaos); v {
	case "ci":
		return size{name: "ci", jobs: 60, kills: 2, restarts: 1, hostileX: 10,
			orders: caproxy.Limit{Count: 20, Period: 10 * time.Second}, timeout: 4 * time.Minute, concurrent: 2}
	case "full":
		return size{name: "full", jobs: 1000, kills: 5, restarts: 2, hostileX: 10,
			orders: caproxy.Limit{Count: 100, Period: 10 * time.Second}, timeout: 20 * time.Minute, concurrent: 2}
	case "":
		t.Skipf("chaos scenarios restart services of the shared test stack, so they run alone: "+
			"`make chaos` (%s=full) or the CI-sized run at the end of `make test` (%s=ci)", envChaos, envChaos)
	default:
		t.Fatalf("%s=%q: want ci or full", envChaos, v)
	}
	return size{}
}

// fleetConfig describes one scenario's fleet and CA.
type fleetConfig struct {
	workers     int
	concurrency int
	// limits is the workers' catalogue for the CA (name → count, period).
	limits map[string]limitJSON
	// ca is what the CA proxy enforces and injects.
	ca     caproxy.Limits
	faults caproxy.Faults
	// lease is the workers' claim lease: a killed worker's jobs wait for it.
	lease time.Duration
	// failover: a second CA behind a proxy of its own, requests naming the
	// group caName+caName2, and the workers' breakers quick to open and
	// probe (3 failures, 2-4 s).
	failover bool
}

type limitJSON struct {
	Count  int    `json:"count"`
	Period string `json:"period"`
}

// limitsFor returns the workers' limits for a scenario whose binding limit is
// NewOrdersPerAccount = orders, with the CA enforcing caFactor of it.
func limitsFor(orders caproxy.Limit, caFactor float64) (map[string]limitJSON, caproxy.Limits) {
	w := map[string]limitJSON{
		"NewOrdersPerAccount":                     {orders.Count, orders.Period.String()},
		"CertificatesPerDomain":                   {10_000, "1h"},
		"CertificatesPerFQDNSet":                  {5, "1h"},
		"FailedAuthorizationsPerDomainPerAccount": {5, "1h"},
		"FleetOrdersPerSecond":                    {50, "1s"},
	}
	ca := caproxy.Limits{
		OrdersPerAccount: caproxy.Limit{Count: int(float64(orders.Count) * caFactor), Period: orders.Period},
		OrdersPerDomain:  caproxy.Limit{Count: 11_000, Period: time.Hour},
		OrdersPerFQDNSet: caproxy.Limit{Count: 5, Period: time.Hour},
	}
	return w, ca
}

// fleet is one scenario's world: a fresh database and topics, the CA proxy
// in front of the shared Pebble, and issuer-worker processes.
type fleet struct {
	t     *testing.T
	ctx   context.Context
	cfg   fleetConfig
	s     testenv.Settings
	d     *db.DB
	dbURL string
	// workerDBURL is dbURL over TLS with verify-full and a client
	// certificate, as the workers reach it.
	workerDBURL string
	suffix      string
	topics      events.Topics
	proxy       *caproxy.Proxy
	proxy2      *caproxy.Proxy // the second CA, with fleetConfig.failover
	caFile      string         // the proxies' serving CAs, one PEM file
	limits      string         // limits file
	keys        string         // keyring file (mode 0600)
	t0          time.Time

	mu      sync.Mutex
	live    []*worker
	all     []*worker
	kills   int
	started int
	// orphans are the orders a killed worker had in flight (recorded on
	// its claims just before the kill), each to be continued by another.
	orphans []orphan
}

// orphan is an order in flight at a kill: the request whose claim held it
// and the kill's time on the database's clock.
type orphan struct {
	requestID string
	killedAt  time.Time
}

// maxTakeover bounds how long after a kill every order the killed worker
// had in flight is continued (and its certificate stored): the group
// notices within its session (10 s), the claim's lease (15 s, renewed
// every 5 s) lapses at most 15 s after the last renewal.
const maxTakeover = 30 * time.Second

type worker struct {
	name   string
	cmd    *exec.Cmd
	log    *testenv.LogBuffer
	done   chan struct{}
	err    error // exit status, valid after done
	killed bool
	listen string
}

func newFleet(t *testing.T, ctx context.Context, cfg fleetConfig) *fleet {
	t.Helper()
	s := testenv.Require(t)
	f := &fleet{t: t, ctx: ctx, cfg: cfg, s: s, t0: time.Now()}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	f.suffix = hex.EncodeToString(b)
	f.dbURL = testenv.FreshDatabase(t)
	d, err := db.Open(ctx, db.Config{URL: f.dbURL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	f.d = d
	if _, err := schema.Migrate(ctx, d, schema.Options{}); err != nil {
		t.Fatal(err)
	}
	// The workers run as in production: on the SASL_SSL listener as the
	// worker principal (its ACLs are granted on certfleet's default topic
	// and group names as prefixes, hence these names), the database over
	// TLS with verify-full and a client certificate, the keyring in a 0600
	// file. The harness itself (publishing, reading outcomes) uses the
	// plaintext listener.
	if len(s.KafkaSASLBrokers) == 0 || s.SecretsDir == "" || (s.DatabaseTLSURL == "" && s.DatabaseKind != "cockroach") {
		t.Fatalf("testenv has no SASL_SSL listener or TLS database: restart it with `go run ./cmd/testenv up`")
	}
	if f.workerDBURL, err = s.DatabaseTLSURLOf(f.dbURL); err != nil {
		t.Fatal(err)
	}
	d0 := events.DefaultTopics()
	sfx := ".chaos-" + f.suffix
	f.topics = events.Topics{Requests: d0.Requests + sfx, Retry: d0.Retry + sfx, DLQ: d0.DLQ + sfx,
		Events: d0.Events + sfx, RateLimitChanges: d0.RateLimitChanges + sfx}
	if err := events.Provision(ctx, &kafka.Client{Addr: kafka.TCP(s.KafkaBrokers...)}, f.topics.Specs(6, 1)...); err != nil {
		t.Fatal(err)
	}
	p, err := caproxy.Start(ctx, caproxy.Config{Upstream: s.ACMEDirectory, UpstreamCA: s.ACMETLSCA,
		Limits: cfg.ca, Faults: cfg.faults, Seed: uint64(time.Now().UnixNano())})
	if err != nil {
		t.Fatalf("starting the CA proxy: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	f.proxy, f.caFile = p, p.CAFile()
	cas := []any{map[string]any{"id": caName, "directory": p.DirectoryURL(), "limits": cfg.limits}}
	if cfg.failover {
		p2, err := caproxy.Start(ctx, caproxy.Config{Upstream: s.ACMEDirectory, UpstreamCA: s.ACMETLSCA,
			Limits: cfg.ca, Faults: cfg.faults, Seed: uint64(time.Now().UnixNano())})
		if err != nil {
			t.Fatalf("starting the second CA proxy: %v", err)
		}
		t.Cleanup(func() { _ = p2.Close() })
		f.proxy2 = p2
		cas = append(cas, map[string]any{"id": caName2, "directory": p2.DirectoryURL(), "limits": cfg.limits})
		// The workers trust one extra PEM file: both proxies' CAs in it.
		var pems []byte
		for _, file := range []string{p.CAFile(), p2.CAFile()} {
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			pems = append(pems, b...)
		}
		f.caFile = filepath.Join(t.TempDir(), "proxies-ca.pem")
		if err := os.WriteFile(f.caFile, pems, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cat, _ := json.Marshal(map[string]any{"cas": cas})
	f.limits = filepath.Join(t.TempDir(), "limits.json")
	if err := os.WriteFile(f.limits, cat, 0o600); err != nil {
		t.Fatal(err)
	}
	keyLine, err := seal.GenerateKeyText("chaos1")
	if err != nil {
		t.Fatal(err)
	}
	f.keys = filepath.Join(t.TempDir(), "keyring")
	if err := os.WriteFile(f.keys, []byte(keyLine+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < cfg.workers; i++ {
		f.startWorker()
	}
	for _, w := range f.live {
		waitReady(t, ctx, w)
	}
	f.waitGroupStable(cfg.workers)
	t.Cleanup(func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		logDir := os.Getenv("CERTFLEET_CHAOS_LOGS")
		for _, w := range f.all {
			_ = w.cmd.Process.Kill()
			if logDir != "" {
				_ = os.WriteFile(filepath.Join(logDir, t.Name()+"-"+w.name+".log"), []byte(w.log.String()), 0o644)
			}
			if t.Failed() {
				t.Logf("--- %s log (last 40 lines) ---\n%s", w.name, testenv.Tail(w.log.String(), 40))
			}
		}
	})
	return f
}

// waitGroupStable waits until the workers' consumer group is Stable with
// members members, so the scenario's numbers measure what it breaks, not the
// rebalances of the fleet starting up.
func (f *fleet) waitGroupStable(members int) {
	f.t.Helper()
	client := &kafka.Client{Addr: kafka.TCP(f.s.KafkaBrokers...), Timeout: 5 * time.Second}
	var last string
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		resp, err := client.DescribeGroups(f.ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{f.group()}})
		if err != nil {
			last = err.Error()
			continue
		}
		if len(resp.Groups) == 1 {
			g := resp.Groups[0]
			last = fmt.Sprintf("state %s with %d members", g.GroupState, len(g.Members))
			if g.GroupState == "Stable" && len(g.Members) == members {
				return
			}
		}
	}
	f.t.Fatalf("consumer group not stable with %d members within 60s: %s", members, last)
}

// group is the workers' consumer group, under the "certfleet" prefix the
// worker principal's ACLs allow.
func (f *fleet) group() string { return "certfleet-chaos-" + f.suffix }

// startWorker starts one more issuer-worker process.
func (f *fleet) startWorker() *worker {
	f.mu.Lock()
	f.started++
	name := fmt.Sprintf("w%d", f.started)
	f.mu.Unlock()
	w := &worker{name: name, log: &testenv.LogBuffer{}, done: make(chan struct{}), listen: testenv.FreeAddr(f.t, "127.0.0.1")}
	lease := f.cfg.lease
	if lease == 0 {
		lease = 15 * time.Second
	}
	cas := caName + "=" + f.proxy.DirectoryURL()
	var extra []string
	if f.proxy2 != nil {
		cas += "," + caName2 + "=" + f.proxy2.DirectoryURL()
		extra = []string{"-ca-group", groupName + "=" + caName + "+" + caName2,
			"-ca-breaker-failures", "3", "-ca-breaker-cooldown", "2s", "-ca-breaker-max-cooldown", "4s"}
	}
	w.cmd = exec.Command(workerBin, append([]string{
		"-owner", name, "-listen", w.listen, "-concurrency", fmt.Sprint(f.cfg.concurrency), "-shutdown-timeout", "20s",
		"-topic-requests", f.topics.Requests, "-topic-retry", f.topics.Retry, "-topic-dlq", f.topics.DLQ,
		"-topic-events", f.topics.Events, "-topic-ratelimit-changes", f.topics.RateLimitChanges,
		"-group", f.group(), "-profile", testenv.PebbleShortProfile, "-lease", lease.String(), "-order-timeout", (lease * 2 / 3).String(),
		"-challenge-types", "dns-01", "-dns01-challtestsrv", f.s.ChallTestSrvURL, "-limits", f.limits}, extra...)...)
	w.cmd.Env = append(append(os.Environ(), f.s.KafkaSASLEnv(testenv.PrincipalWorker)...),
		"CERTFLEET_DATABASE_URL="+f.workerDBURL, "CERTFLEET_SEAL_KEYS=", "CERTFLEET_SEAL_KEYS_FILE="+f.keys,
		"CERTFLEET_CAS="+cas, "CERTFLEET_ACME_TLS_CA="+f.caFile)
	w.cmd.Stdout, w.cmd.Stderr = w.log, w.log
	if err := w.cmd.Start(); err != nil {
		f.t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		w.err = w.cmd.Wait()
		close(w.done)
	}()
	f.mu.Lock()
	f.live = append(f.live, w)
	f.all = append(f.all, w)
	f.mu.Unlock()
	return w
}

// killOne sends SIGKILL to a live worker with orders in flight (the
// oldest, when none has one within 30 s), waits for it to die and starts a
// replacement.
func (f *fleet) killOne() {
	f.mu.Lock()
	live := slices.Clone(f.live)
	f.mu.Unlock()
	victim := 0
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if i := slices.IndexFunc(live, func(w *worker) bool { return len(f.ordersOf(w.name)) > 0 }); i >= 0 {
			victim = i
			break
		}
	}
	f.mu.Lock()
	w := live[victim]
	f.live = slices.DeleteFunc(f.live, func(o *worker) bool { return o == w })
	w.killed = true
	f.kills++
	f.mu.Unlock()
	inFlight := scrapeGauge(f.ctx, w.listen, "certfleet_worker_jobs_in_flight")
	ids := f.ordersOf(w.name)
	_ = w.cmd.Process.Signal(syscall.SIGKILL)
	<-w.done
	var killedAt time.Time
	if err := f.d.Pool().QueryRow(f.ctx, `SELECT now()`).Scan(&killedAt); err != nil {
		f.t.Fatalf("reading the database's clock: %v", err)
	}
	f.mu.Lock()
	for _, id := range ids {
		f.orphans = append(f.orphans, orphan{requestID: id, killedAt: killedAt})
	}
	f.mu.Unlock()
	f.t.Logf("%v: %d orders of %s in flight at the kill: %v", time.Since(f.t0).Round(time.Millisecond), len(ids), w.name, ids)
	f.t.Logf("%v: killed %s with SIGKILL (%s jobs held order slots just before)", time.Since(f.t0).Round(time.Millisecond), w.name, inFlight)
	waitReady(f.t, f.ctx, f.startWorker())
}

// ordersOf lists the requests whose order worker name has placed and not
// finished (recorded on its claims: owner "<name>/<job>").
func (f *fleet) ordersOf(name string) []string {
	f.t.Helper()
	rows, err := f.d.Pool().Query(f.ctx, `SELECT request_id FROM issuance_requests
 WHERE state = 'ordering' AND owner LIKE $1 AND order_url IS NOT NULL ORDER BY request_id`, name+"/%")
	if err != nil {
		f.t.Fatalf("listing the orders of %s: %v", name, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		f.t.Fatalf("listing the orders of %s: %v", name, err)
	}
	return ids
}

// checkTakeovers asserts that every order in flight at a kill was continued
// by another worker within maxTakeover of the kill (its certificate stored
// by then, on the database's clock) and never ordered a second time (one
// order for its SAN set at the CA). It returns the longest takeover.
func (f *fleet) checkTakeovers(valid []events.Event, st caproxy.Stats) time.Duration {
	t := f.t
	t.Helper()
	sans := map[string]string{}
	for _, ev := range valid {
		req := ev.Data.(*events.IssuanceRequest)
		sans[req.RequestID] = req.SANs[0]
	}
	f.mu.Lock()
	orphans := f.orphans
	f.mu.Unlock()
	var longest time.Duration
	for _, o := range orphans {
		var stored time.Time
		if err := f.d.Pool().QueryRow(f.ctx, `SELECT created_at FROM issued_certificates WHERE request_id = $1`, o.requestID).Scan(&stored); err != nil {
			t.Errorf("the order of %s, in flight at a kill: no certificate stored (%v)", o.requestID, err)
			continue
		}
		d := stored.Sub(o.killedAt)
		longest = max(longest, d)
		if d > maxTakeover {
			t.Errorf("the order of %s, in flight at a kill, was finished %v after it (at most %v)", o.requestID, d.Round(time.Millisecond), maxTakeover)
		}
		if n := st.OrdersBySANSet[sans[o.requestID]]; n != 1 {
			t.Errorf("the order of %s, in flight at a kill: %d orders for %s at the CA, want 1 (continued, not ordered again)", o.requestID, n, sans[o.requestID])
		}
	}
	return longest
}

// request is one valid job of a scenario.
func (f *fleet) requests(n, domains int) []events.Event {
	f.t.Helper()
	evs := make([]events.Event, 0, n)
	ca := caName
	if f.proxy2 != nil {
		ca = groupName
	}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("j%d.d%d-%s.test", i, i%domains, f.suffix)
		ev, err := events.New("//chaos", time.Now(), &events.IssuanceRequest{RequestID: fmt.Sprintf("r%d-%s", i, f.suffix),
			SANs: []string{name}, Tenant: tenant, KeyType: events.KeyECDSAP256, CA: ca, Reason: events.ReasonNew})
		if err != nil {
			f.t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	return evs
}

// publish writes records to the requests topic.
func (f *fleet) publish(msgs []kafka.Message) {
	f.t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(f.s.KafkaBrokers...), Topic: f.topics.Requests, Balancer: &kafka.Hash{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: 5 * time.Millisecond, BatchSize: 500}
	defer w.Close()
	for len(msgs) > 0 {
		n := min(len(msgs), 500)
		if err := w.WriteMessages(f.ctx, msgs[:n]...); err != nil {
			f.t.Fatalf("publishing %d records: %v", n, err)
		}
		msgs = msgs[n:]
	}
}

func encodeAll(t *testing.T, evs []events.Event) []kafka.Message {
	t.Helper()
	msgs := make([]kafka.Message, len(evs))
	for i, ev := range evs {
		m, err := events.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		msgs[i] = m
	}
	return msgs
}

// outcome is what the topics say after a scenario.
type outcome struct {
	obtained map[string]map[string]int // request id → event id → records
	issuedBy map[string]string         // request id → the CA its cert_obtained names
	failed   int                       // cert_failed records (retryable ones are normal under faults)
	dlq      []kafka.Message
}

// read collects the events and dead-letter topics.
func (f *fleet) read() (outcome, error) {
	o := outcome{obtained: map[string]map[string]int{}, issuedBy: map[string]string{}}
	msgs, err := events.ReadTopic(f.ctx, nil, f.s.KafkaBrokers, f.topics.Events, 0)
	if err != nil {
		return o, err
	}
	for _, m := range msgs {
		ev, err := events.Decode(m)
		if err != nil {
			return o, fmt.Errorf("undecodable record on %s at %d/%d: %w", m.Topic, m.Partition, m.Offset, err)
		}
		switch d := ev.Data.(type) {
		case *events.CertObtained:
			if o.obtained[d.RequestID] == nil {
				o.obtained[d.RequestID] = map[string]int{}
			}
			o.obtained[d.RequestID][ev.ID]++
			o.issuedBy[d.RequestID] = d.CA
		case *events.CertFailed:
			o.failed++
		}
	}
	o.dlq, err = events.ReadTopic(f.ctx, nil, f.s.KafkaBrokers, f.topics.DLQ, 0)
	return o, err
}

// waitDone polls the topics until every valid request is obtained and want
// records are dead-lettered, calling progress with the count obtained so far
// (scenarios break things from there). Read errors while a service is down
// are expected and retried.
func (f *fleet) waitDone(valid []events.Event, wantDLQ int, progress func(obtained int)) outcome {
	f.t.Helper()
	return f.waitDoneWith(valid, wantDLQ, func(obtained int, _ outcome) {
		if progress != nil {
			progress(obtained)
		}
	})
}

// waitDoneWith is waitDone whose progress also sees what was read.
func (f *fleet) waitDoneWith(valid []events.Event, wantDLQ int, progress func(obtained int, o outcome)) outcome {
	f.t.Helper()
	var o outcome
	var lastErr error
	for {
		var err error
		if o, err = f.read(); err == nil {
			n := 0
			for _, ev := range valid {
				if len(o.obtained[ev.Data.(*events.IssuanceRequest).RequestID]) > 0 {
					n++
				}
			}
			progress(n, o)
			if n == len(valid) && len(o.dlq) >= wantDLQ {
				return o
			}
		} else {
			lastErr = err
		}
		select {
		case <-f.ctx.Done():
			got := 0
			for _, ev := range valid {
				if len(o.obtained[ev.Data.(*events.IssuanceRequest).RequestID]) > 0 {
					got++
				}
			}
			f.t.Fatalf("scenario timed out: %d of %d valid jobs obtained, %d of %d records dead-lettered (last read error: %v)",
				got, len(valid), len(o.dlq), wantDLQ, lastErr)
		case <-time.After(time.Second):
		}
	}
}

// result is one scenario's row of the closing table.
type result struct {
	Scenario        string `json:"scenario"`
	Size            string `json:"size"`
	Jobs            int    `json:"jobs"`
	Hostile         int    `json:"hostile"`
	Kills           int    `json:"kills"`
	Lost            int    `json:"lost"`
	CAOrders        int    `json:"ca_orders"`
	DuplicateOrders int    `json:"duplicate_orders"`
	CA429           int    `json:"ca_429"`
	Injected429     int    `json:"injected_429"`
	Injected5xx     int    `json:"injected_5xx"`
	Violations      int    `json:"penalty_violations"`
	DLQ             int    `json:"dead_lettered"`
	DupEvents       int    `json:"duplicate_event_records"`
	Resumed         int    `json:"orders_resumed"`
	// Orphans are orders in flight at the kills; TakeoverSeconds the
	// longest time from a kill to one of them finished by another worker.
	Orphans         int     `json:"orders_in_flight_at_kills"`
	TakeoverSeconds float64 `json:"takeover_seconds"`
	// IssuedBy counts the valid jobs' certificates by the CA their
	// cert_obtained names (with two CAs: which CA issued how many).
	IssuedBy map[string]int `json:"issued_by"`
	Seconds  float64        `json:"seconds"`
}

// verify checks every invariant of the package doc and reports the row.
// hostile is the number of records that must be dead-lettered exactly once.
func (f *fleet) verify(scenario string, sz size, valid []events.Event, hostile int, o outcome) result {
	t := f.t
	t.Helper()
	st := f.caStats()
	r := result{Scenario: scenario, Size: sz.name, Jobs: len(valid), Hostile: hostile, Kills: f.kills,
		CAOrders: st.Orders, CA429: st.RateLimited, Injected429: st.InjectedRateLimited,
		Injected5xx: st.InjectedServerErrors, Violations: len(st.PenaltyViolations), Seconds: time.Since(f.t0).Seconds(),
		IssuedBy: map[string]int{}}

	// Every valid job ends with cert_obtained; duplicates only with the same id.
	validIDs := map[string]bool{}
	for _, ev := range valid {
		id := ev.Data.(*events.IssuanceRequest).RequestID
		validIDs[id] = true
		switch ids := o.obtained[id]; {
		case len(ids) == 0:
			r.Lost++
			t.Errorf("lost: request %s has no cert_obtained", id)
		case len(ids) > 1:
			t.Errorf("request %s has cert_obtained under %d different event ids: %v", id, len(ids), ids)
		default:
			for _, n := range ids {
				r.DupEvents += n - 1
			}
			r.IssuedBy[o.issuedBy[id]]++
		}
	}
	for id := range o.obtained {
		if !validIDs[id] {
			t.Errorf("cert_obtained for %q, which no valid job requested", id)
		}
	}
	// Hostile records are dead-lettered, each exactly once, and no valid job is.
	origins := map[string]int{}
	for _, m := range o.dlq {
		dl, ok := events.ReadDeadLetter(m)
		if !ok {
			t.Errorf("DLQ record at %d/%d has no dead-letter headers", m.Partition, m.Offset)
			continue
		}
		origins[fmt.Sprintf("%s/%d/%d", dl.Topic, dl.Partition, dl.Offset)]++
		if ev, err := events.Decode(m); err == nil {
			if req, ok := ev.Data.(*events.IssuanceRequest); ok && validIDs[req.RequestID] {
				t.Errorf("valid request %s was dead-lettered: %s", req.RequestID, dl.Reason)
			}
		}
	}
	r.DLQ = len(origins)
	if len(origins) != hostile {
		t.Errorf("%d distinct records dead-lettered, want %d (every hostile record, once)", len(origins), hostile)
	}
	f.mu.Lock()
	for _, w := range f.all {
		r.Resumed += strings.Count(w.log.String(), "continued the order a previous attempt left")
	}
	f.mu.Unlock()
	// The CA's view (with two CAs, both proxies' counts together: a SAN
	// set ordered at each is a duplicate too): orders at most jobs plus
	// kills, no 429 of its own, no order for a key under a Retry-After.
	for _, n := range st.OrdersBySANSet {
		r.DuplicateOrders += n - 1
	}
	r.TakeoverSeconds = f.checkTakeovers(valid, st).Seconds()
	f.mu.Lock()
	r.Orphans = len(f.orphans)
	f.mu.Unlock()
	// A kill orphans the orders the worker had in flight (up to one per
	// order slot), but each was recorded on its claim as the CA created it,
	// and the next owner continues it. Only an order killed between the CA's
	// 201 and that record costs a second one: at most one per kill.
	if max := len(valid) + f.kills; st.Orders > max {
		t.Errorf("the CA saw %d orders for %d jobs and %d kills (at most %d; %d orders were continued after a kill)",
			st.Orders, len(valid), f.kills, max, r.Resumed)
	}
	if st.RateLimited != 0 {
		t.Errorf("the CA answered %d orders with its own 429 (%v): the limiter over-spent", st.RateLimited, st.RateLimitedByLimit)
	}
	for _, v := range st.PenaltyViolations {
		t.Errorf("an order for %s reached the CA at %v, while its Retry-After ran until %v", v.Key, v.At.Format(time.StampMilli), v.Until.Format(time.StampMilli))
	}
	// No key material on any topic or in any log.
	for _, topic := range []string{f.topics.Requests, f.topics.Retry, f.topics.DLQ, f.topics.Events, f.topics.RateLimitChanges} {
		msgs, err := events.ReadTopic(f.ctx, nil, f.s.KafkaBrokers, topic, 0)
		if err != nil {
			t.Errorf("reading %s: %v", topic, err)
		}
		for _, m := range msgs {
			if bytes.Contains(m.Value, []byte("PRIVATE KEY")) {
				t.Errorf("key material on %s at %d/%d", topic, m.Partition, m.Offset)
			}
		}
	}
	// No worker crashed; every live one stops cleanly.
	f.mu.Lock()
	all, live := f.all, f.live
	f.mu.Unlock()
	for _, w := range live {
		select {
		case <-w.done:
			t.Errorf("%s exited by itself: %v", w.name, w.err)
			continue
		default:
		}
		_ = w.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-w.done:
			if w.err != nil {
				t.Errorf("%s exited with %v after SIGTERM", w.name, w.err)
			}
		case <-time.After(40 * time.Second):
			t.Errorf("%s did not stop within 40s of SIGTERM", w.name)
		}
	}
	for _, w := range all {
		logText := w.log.String()
		if strings.Contains(logText, "PRIVATE KEY") {
			t.Errorf("%s logged key material", w.name)
		}
		if strings.Contains(logText, "panic:") || strings.Contains(logText, "fatal error:") {
			t.Errorf("%s crashed:\n%s", w.name, testenv.Tail(logText, 40))
		}
	}
	line, _ := json.Marshal(r)
	t.Logf("RESULT %s", line)
	if path := os.Getenv("CERTFLEET_CHAOS_RESULTS"); path != "" {
		if fh, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintf(fh, "%s\n", line)
			fh.Close()
		}
	}
	return r
}

// scrapeGauge reads one unlabelled metric from a worker's /metrics, or "?".
func scrapeGauge(ctx context.Context, listen, name string) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+listen+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "?"
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return "?"
}

func waitReady(t *testing.T, ctx context.Context, w *worker) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+w.listen+"/readyz", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-w.done:
			t.Fatalf("%s exited before it was ready: %v\n%s", w.name, w.err, testenv.Tail(w.log.String(), 30))
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("%s not ready within 90s\n%s", w.name, testenv.Tail(w.log.String(), 30))
}

// caStats is the CA's view: the proxy's counters, or with a second CA both
// proxies' summed (orders by SAN set across both, so a request ordered at
// each CA counts as a duplicate).
func (f *fleet) caStats() caproxy.Stats {
	st := f.proxy.Stats()
	if f.proxy2 == nil {
		return st
	}
	st2 := f.proxy2.Stats()
	st.Orders += st2.Orders
	st.RateLimited += st2.RateLimited
	st.InjectedRateLimited += st2.InjectedRateLimited
	st.InjectedServerErrors += st2.InjectedServerErrors
	st.PenaltyViolations = append(st.PenaltyViolations, st2.PenaltyViolations...)
	for k, n := range st2.OrdersBySANSet {
		st.OrdersBySANSet[k] += n
	}
	for k, n := range st2.RateLimitedByLimit {
		st.RateLimitedByLimit[k] += n
	}
	return st
}
