package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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

// The end-to-end check of key delivery, with real processes: two
// issuer-workers (-deliver-keys, 4 orders in flight in all, DNS-01 through
// challtestsrv, Pebble validating; on the SASL_SSL listener as principal
// worker) obtain 200 certificates of two tenants; recipient edge-eu takes
// tenant eu, edge-us both tenants; agent A (edge-eu's key, --tenant eu) and
// agent B (edge-us's key, --tenant us), both as principal agent, each end
// with exactly their tenant's 100 pairs, every one loading with
// tls.LoadX509KeyPair and verifying to Pebble's root with the chain of its
// cert_obtained; a third reader without a registered key opens nothing on
// the delivery topic; agent A restarted rewrites no file; after 'recipient
// remove edge-us' new certificates reach edge-eu only and agent B reports
// the renewed name's key as awaited; a recipient added afterwards receives
// the current certificates (backfill); no private key appears in clear on
// any topic or in any log.
func TestKeyDeliveryEndToEnd(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	dir := t.TempDir()
	workerBin, err := testenv.BuildCommand(ctx, dir, "issuer-worker", "../issuer-worker")
	if err != nil {
		t.Fatal(err)
	}
	cliBin, err := testenv.BuildCommand(ctx, dir, "certfleet", ".")
	if err != nil {
		t.Fatal(err)
	}
	dbURL := testenv.FreshDatabase(t)
	d, err := db.Open(ctx, db.Config{URL: dbURL})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := schema.Migrate(ctx, d, schema.Options{}); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	sfx := hex.EncodeToString(b)
	def := events.DefaultTopics()
	topics := events.Topics{Requests: def.Requests + ".kd-" + sfx, Retry: def.Retry + ".kd-" + sfx, DLQ: def.DLQ + ".kd-" + sfx,
		Events: def.Events + ".kd-" + sfx, RateLimitChanges: def.RateLimitChanges + ".kd-" + sfx}
	deliveries := delivery.DefaultTopic + ".kd-" + sfx
	admin := &kafka.Client{Addr: kafka.TCP(s.KafkaBrokers...), Timeout: 10 * time.Second}
	specs := append(topics.Specs(4, 1), delivery.TopicSpec(deliveries, events.ProvisionOptions{Partitions: 4, ReplicationFactor: 1}))
	if err := events.Provision(ctx, admin, specs...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = admin.DeleteTopics(context.Background(), &kafka.DeleteTopicsRequest{Topics: append(topics.All(), deliveries)})
	})
	eu, us := "eu-"+sfx, "us-"+sfx
	baseEnv := append(os.Environ(), "CERTFLEET_KAFKA_BROKERS="+strings.Join(s.KafkaBrokers, ","), "CERTFLEET_DATABASE_URL="+dbURL,
		"CERTFLEET_TOPIC_REQUESTS="+topics.Requests, "CERTFLEET_TOPIC_RETRY="+topics.Retry, "CERTFLEET_TOPIC_DLQ="+topics.DLQ,
		"CERTFLEET_TOPIC_EVENTS="+topics.Events, "CERTFLEET_TOPIC_RATELIMIT_CHANGES="+topics.RateLimitChanges,
		"CERTFLEET_TOPIC_DELIVERIES="+deliveries)
	var logs []*testenv.LogBuffer

	// certfleet runs the CLI binary and returns its output.
	certfleet := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, cliBin, args...)
		cmd.Env = baseEnv
		out, err := cmd.CombinedOutput()
		logs = append(logs, logOf(out))
		if err != nil {
			t.Fatalf("certfleet %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	keys := map[string]*delivery.PrivateKey{}
	keyFile := func(name string) string {
		k, p := filepath.Join(dir, name+".key"), filepath.Join(dir, name+".pub")
		certfleet("recipient", "keygen", "--key", k, "--public-key", p)
		b, err := os.ReadFile(k)
		if err != nil {
			t.Fatal(err)
		}
		if keys[name], err = delivery.ParsePrivateKeyPEM(b); err != nil {
			t.Fatal(err)
		}
		return k
	}
	euKey, usKey := keyFile("edge-eu"), keyFile("edge-us")
	keyFile("third") // never registered: the third reader
	keyFile("edge-late")
	certfleet("recipient", "add", "edge-eu", "--public-key", filepath.Join(dir, "edge-eu.pub"), "--tenants", eu, "--actor", "e2e")
	certfleet("recipient", "add", "edge-us", "--public-key", filepath.Join(dir, "edge-us.pub"), "--tenants", eu+","+us, "--actor", "e2e")

	type proc struct {
		cmd    *exec.Cmd
		listen string
		log    *testenv.LogBuffer
		done   chan error
	}
	keyring := testKeyring(t) // one fleet keyring for both workers
	start := func(name, bin string, kafkaEnv []string, args ...string) *proc {
		p := &proc{listen: testenv.FreeAddr(t, "127.0.0.1"), log: &testenv.LogBuffer{}, done: make(chan error, 1)}
		logs = append(logs, p.log)
		p.cmd = exec.Command(bin, append(args, "--listen", p.listen)...)
		p.cmd.Env = append(append(append([]string(nil), baseEnv...), kafkaEnv...),
			"CERTFLEET_SEAL_KEYS="+keyring, "CERTFLEET_CAS=pebble="+s.ACMEDirectory, "CERTFLEET_ACME_TLS_CA="+s.ACMETLSCA)
		p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
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
	stop := func(name string, p *proc) {
		t.Helper()
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.done:
			if err != nil {
				t.Errorf("%s exited with %v after SIGTERM", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not stop within 30s of SIGTERM", name)
		}
	}
	var workers []*proc
	for _, name := range []string{"kd-worker-a", "kd-worker-b"} {
		workers = append(workers, start(name, workerBin, s.KafkaSASLEnv(testenv.PrincipalWorker), "-owner", name, "-group", "certfleet-kd-"+sfx, "-concurrency", "2",
			"-challenge-types", "dns-01", "-dns01-challtestsrv", s.ChallTestSrvURL, "-profile", testenv.PebbleShortProfile,
			"-shutdown-timeout", "20s", "-deliver-keys"))
	}
	for _, p := range workers {
		waitHTTP(t, ctx, "http://"+p.listen+"/readyz")
	}
	hooks := filepath.Join(dir, "hooks")
	agent := func(name, key, tenant string) (*proc, string) {
		out := filepath.Join(dir, "pairs-"+name)
		p := start(name, cliBin, s.KafkaSASLEnv(testenv.PrincipalAgent), "agent", "--recipient-key", key, "--dir", out, "--tenant", tenant,
			"--exec", `echo "$CERTFLEET_AGENT_CHANGED" >> `+hooks+"-"+name)
		waitHTTP(t, ctx, "http://"+p.listen+"/healthz")
		return p, out
	}
	agentA, dirA := agent("agent-a", euKey, eu)
	agentB, dirB := agent("agent-b", usKey, us)

	// 200 requests, half per tenant, each name its own registered domain
	// (CertificatesPerDomain allows 50 a week per domain).
	publish := func(from, n int, tenantOf func(int) string, sans func(int) []string) {
		t.Helper()
		var evs []events.Event
		for i := from; i < from+n; i++ {
			ev, err := events.New("//test", time.Now(), &events.IssuanceRequest{RequestID: fmt.Sprintf("kd-%d-%s", i, sfx), SANs: sans(i),
				Tenant: tenantOf(i), KeyType: events.KeyECDSAP256, CA: "pebble", Reason: events.ReasonNew})
			if err != nil {
				t.Fatal(err)
			}
			evs = append(evs, ev)
		}
		prod, err := events.NewProducer(events.ProducerConfig{Brokers: s.KafkaBrokers, Topics: topics})
		if err != nil {
			t.Fatal(err)
		}
		defer prod.Close()
		if err := prod.Publish(ctx, evs...); err != nil {
			t.Fatal(err)
		}
	}
	tenantOf := func(i int) string {
		if i%2 == 0 {
			return eu
		}
		return us
	}
	nameOf := func(i int) []string { return []string{fmt.Sprintf("c%d-%s.test", i, sfx)} }
	const n = 200
	t0 := time.Now()
	publish(0, n, tenantOf, nameOf)
	obtained := waitObtained(t, ctx, s.KafkaBrokers, topics.Events, n)
	t.Logf("%d certificates obtained and delivered in %v", n, time.Since(t0).Round(time.Millisecond))

	// Each agent ends with exactly its tenant's pairs.
	wantOf := func(tenant string) map[string]*events.CertObtained {
		m := map[string]*events.CertObtained{}
		for _, ob := range obtained {
			if ob.Tenant == tenant {
				m[ob.SANs[0]] = ob
			}
		}
		return m
	}
	waitPairs(t, ctx, dirA, len(wantOf(eu)))
	waitPairs(t, ctx, dirB, len(wantOf(us)))
	roots := x509.NewCertPool()
	if pemRoot, err := os.ReadFile(s.PebbleRoot); err != nil || !roots.AppendCertsFromPEM(pemRoot) {
		t.Fatalf("Pebble's root %s: %v", s.PebbleRoot, err)
	}
	var written [][]byte // every key written, to look for on the topics and in the logs
	checkPairs := func(dir string, want map[string]*events.CertObtained) {
		t.Helper()
		files, _ := filepath.Glob(filepath.Join(dir, "*.crt"))
		if len(files) != len(want) {
			t.Fatalf("%s holds %d pairs, want %d", dir, len(files), len(want))
		}
		for name, ob := range want {
			crt, key := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
			pair, err := tls.LoadX509KeyPair(crt, key)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			chain, _ := os.ReadFile(crt)
			if string(chain) != ob.ChainPEM {
				t.Fatalf("%s.crt is not the chain of its cert_obtained", name)
			}
			leaf, _ := x509.ParseCertificate(pair.Certificate[0])
			inter := x509.NewCertPool()
			for _, c := range pair.Certificate[1:] {
				ic, _ := x509.ParseCertificate(c)
				inter.AddCert(ic)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: name}); err != nil || leaf.SerialNumber.Text(16) != ob.Serial {
				t.Fatalf("%s: the pair does not verify to Pebble's root as serial %s: %v", name, ob.Serial, err)
			}
			if fi, _ := os.Stat(key); fi.Mode().Perm() != 0o600 {
				t.Errorf("%s.key has mode %v", name, fi.Mode().Perm())
			}
			kb, _ := os.ReadFile(key)
			blk, _ := pem.Decode(kb)
			written = append(written, blk.Bytes)
		}
	}
	checkPairs(dirA, wantOf(eu))
	checkPairs(dirB, wantOf(us))
	for deadline := time.Now().Add(10 * time.Second); strings.Count(readFile(hooks+"-agent-a"), ".test") < n/2 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	if got := countLines(hooks + "-agent-a"); got == 0 || got > n/2 || strings.Count(readFile(hooks+"-agent-a"), ".test") != n/2 {
		t.Errorf("agent A's hook ran %d times naming %d pairs, want every pair named once", got, strings.Count(readFile(hooks+"-agent-a"), ".test"))
	}
	t.Logf("agent A's hook ran %d times for %d pairs", countLines(hooks+"-agent-a"), n/2)
	if m := httpBody(t, ctx, "http://"+agentA.listen+"/metrics"); !strings.Contains(m, fmt.Sprintf("certfleet_agent_certificates_held %d", n/2)) {
		t.Errorf("agent A's metrics:\n%s", testenv.Tail(m, 30))
	}
	if m := httpBody(t, ctx, "http://"+agentB.listen+"/metrics"); !strings.Contains(m, fmt.Sprintf(`certfleet_agent_deliveries_total{result="other_tenant"} %d`, n/2)) {
		t.Errorf("agent B (edge-us takes both tenants, the agent only tenant us) metrics:\n%s", testenv.Tail(m, 30))
	}

	// A third reader of the topic, without a registered key, opens nothing;
	// the registered keys open only their own deliveries.
	all := readAll(t, ctx, s.KafkaBrokers, deliveries)
	opened := map[string]int{}
	for _, m := range all {
		r, err := delivery.Decode(m)
		if err != nil {
			t.Fatalf("delivery at %d/%d: %v", m.Partition, m.Offset, err)
		}
		for name, k := range keys {
			if _, err := delivery.Open(k, r); err == nil {
				opened[name+"<-"+r.Recipient]++
			}
		}
	}
	if len(all) != n+n/2 || opened["edge-eu<-edge-eu"] != n/2 || opened["edge-us<-edge-us"] != n || len(opened) != 2 {
		t.Fatalf("%d deliveries, opened %v: want %d for edge-eu and %d for edge-us, each only by its own key, none by the third", len(all), opened, n/2, n)
	}

	// Agent A restarted: nothing to do, no file rewritten.
	before := inodes(t, dirA)
	stop("agent-a", agentA)
	agentA, _ = agent("agent-a", euKey, eu)
	time.Sleep(3 * time.Second) // its group rejoins and fetches; nothing new
	if after := inodes(t, dirA); !mapsEqual(before, after) {
		t.Error("agent A's restart rewrote pairs")
	}

	// edge-us removed: the next certificates reach edge-eu only; agent B
	// sees a newer certificate for a name it holds and no key.
	certfleet("recipient", "remove", "edge-us", "--actor", "e2e")
	renewed := nameOf(1) // held by agent B
	publish(n, 10, tenantOf, func(i int) []string {
		if i == n+1 {
			return renewed
		}
		return nameOf(i)
	})
	obtained = waitObtained(t, ctx, s.KafkaBrokers, topics.Events, n+10)
	waitPairs(t, ctx, dirA, n/2+5)
	time.Sleep(time.Second) // let agent B read what there is
	seen := map[string]bool{}
	for _, m := range all {
		seen[fmt.Sprint(m.Partition, "/", m.Offset)] = true
	}
	var after []kafka.Message
	for _, m := range readAll(t, ctx, s.KafkaBrokers, deliveries) {
		if !seen[fmt.Sprint(m.Partition, "/", m.Offset)] {
			after = append(after, m)
		}
	}
	for _, m := range after {
		r, _ := delivery.Decode(m)
		if r.Recipient != "edge-eu" || r.Tenant != eu {
			t.Errorf("after the removal a delivery to %s of a %s certificate", r.Recipient, r.Tenant)
		}
	}
	if len(after) != 5 {
		t.Errorf("%d deliveries after the removal, want edge-eu's 5", len(after))
	}
	if files, _ := filepath.Glob(filepath.Join(dirB, "*.crt")); len(files) != n/2 {
		t.Errorf("agent B holds %d pairs after the removal, want still %d", len(files), n/2)
	}
	waitMetric(t, ctx, "http://"+agentB.listen+"/metrics", "certfleet_agent_keys_awaited 1")

	// A recipient added now gets the current certificate of each identity
	// of its scope: us's 100, c1 once (its newest), and the 4 new ones.
	certfleet("recipient", "add", "edge-late", "--public-key", filepath.Join(dir, "edge-late.pub"), "--tenants", us, "--actor", "e2e")
	late := 0
	deadline := time.Now().Add(60 * time.Second)
	for late < n/2+4 && time.Now().Before(deadline) {
		late = 0
		for _, m := range readAll(t, ctx, s.KafkaBrokers, deliveries) {
			if r, err := delivery.Decode(m); err == nil && r.Recipient == "edge-late" {
				if _, err := delivery.Open(keys["edge-late"], r); err != nil || r.Reason != delivery.ReasonRecipientAdded {
					t.Fatalf("a backfilled delivery: %v (%s)", err, r.Reason)
				}
				late++
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	if late != n/2+4 {
		t.Errorf("edge-late received %d current certificates, want the %d of tenant us", late, n/2+4)
	}

	for i, p := range workers {
		stop(fmt.Sprintf("worker %d", i), p)
	}
	stop("agent-a", agentA)
	stop("agent-b", agentB)

	// No private key in clear, on any topic or in any log: neither PEM nor
	// any written key's DER, raw or in base64.
	var needles [][]byte
	for _, der := range written {
		needles = append(needles, der, []byte(base64.StdEncoding.EncodeToString(der)))
	}
	needles = append(needles, []byte("PRIVATE KEY"))
	for _, topic := range append(topics.All(), deliveries) {
		for _, m := range readAll(t, ctx, s.KafkaBrokers, topic) {
			for _, nd := range needles {
				if bytes.Contains(m.Value, nd) || bytes.Contains(m.Key, nd) {
					t.Fatalf("key material on %s at %d/%d", topic, m.Partition, m.Offset)
				}
			}
		}
	}
	for i, l := range logs {
		for _, nd := range needles {
			if strings.Contains(l.String(), string(nd)) {
				t.Fatalf("key material in log %d", i)
			}
		}
	}
	var stored int
	if err := d.Pool().QueryRow(ctx, `SELECT count(*) FROM issued_certificates WHERE tenant IN ($1, $2)`, eu, us).Scan(&stored); err != nil || stored != n+10 {
		t.Errorf("%d certificates stored with their tenant (%v), want %d", stored, err, n+10)
	}
}

func logOf(b []byte) *testenv.LogBuffer {
	l := &testenv.LogBuffer{}
	_, _ = l.Write(b)
	return l
}

func testKeyring(t *testing.T) string {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"keys", "generate", "-id", "kd"}, &out, &errb); code != exitOK {
		t.Fatal(errb.String())
	}
	return strings.ReplaceAll(strings.TrimSpace(out.String()), "\n", ";")
}

func waitHTTP(t *testing.T, ctx context.Context, url string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s not ready within 60s", url)
}

func httpBody(t *testing.T, ctx context.Context, url string) string {
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

func waitMetric(t *testing.T, ctx context.Context, url, line string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(httpBody(t, ctx, url), line) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Errorf("%s never showed %q:\n%s", url, line, testenv.Tail(httpBody(t, ctx, url), 30))
}

func readAll(t *testing.T, ctx context.Context, brokers []string, topic string) []kafka.Message {
	t.Helper()
	msgs, err := events.ReadTopic(ctx, nil, brokers, topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

// waitObtained waits until n distinct requests have a cert_obtained and
// returns them.
func waitObtained(t *testing.T, ctx context.Context, brokers []string, topic string, n int) map[string]*events.CertObtained {
	t.Helper()
	got := map[string]*events.CertObtained{}
	for len(got) < n {
		for _, m := range readAll(t, ctx, brokers, topic) {
			if ev, err := events.Decode(m); err == nil {
				if ob, ok := ev.Data.(*events.CertObtained); ok {
					got[ob.RequestID] = ob
				}
			}
		}
		if len(got) >= n {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d of %d certificates obtained: %v", len(got), n, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
	return got
}

func waitPairs(t *testing.T, ctx context.Context, dir string, n int) {
	t.Helper()
	for {
		files, _ := filepath.Glob(filepath.Join(dir, "*.crt"))
		if len(files) >= n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s holds %d pairs, want %d: %v", dir, len(files), n, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func inodes(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		out[e.Name()] = strconv.FormatUint(st.Ino, 10) + "/" + fi.ModTime().String()
	}
	return out
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func countLines(path string) int {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	for sc := bufio.NewScanner(f); sc.Scan(); {
		n++
	}
	return n
}
