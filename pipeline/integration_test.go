package pipeline_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/pipeline"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/schema"
	"github.com/certfleet/certfleet/seal"
	"github.com/certfleet/certfleet/testenv"
)

// stack is everything a worker needs, on the real testenv services.
type stack struct {
	s        testenv.Settings
	db       *db.DB
	topics   events.Topics
	producer *events.Producer
	keyring  *seal.Keyring
	limiter  *ratelimit.Limiter
	cat      *ratelimit.Catalogue
	store    *certstore.Store
	chall    *acmeissuer.ChallengeStore
	orders   atomic.Int64 // new-order POSTs that reached the CA
	suffix   string
}

func rnd() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func newStack(t *testing.T, limits map[ratelimit.Name]ratelimit.LimitConfig) *stack {
	t.Helper()
	st := &stack{s: testenv.Require(t), suffix: rnd()}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d, err := db.Open(ctx, db.Config{URL: testenv.FreshDatabase(t), MaxConns: 32})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	if _, err := schema.Migrate(ctx, d, schema.Options{}); err != nil {
		t.Fatal(err)
	}
	st.db = d
	st.topics = events.Topics{
		Requests: "t.requests." + st.suffix, Retry: "t.retry." + st.suffix, DLQ: "t.dlq." + st.suffix,
		Events: "t.events." + st.suffix, RateLimitChanges: "t.rl." + st.suffix,
	}
	client := &kafka.Client{Addr: kafka.TCP(st.s.KafkaBrokers...)}
	if err := events.Provision(ctx, client, st.topics.Specs(4, 1)...); err != nil {
		t.Fatal(err)
	}
	st.producer, err = events.NewProducer(events.ProducerConfig{Brokers: st.s.KafkaBrokers, Topics: st.topics})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.producer.Close() })
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	st.keyring, err = seal.NewKeyring("k1", map[string][]byte{"k1": key})
	if err != nil {
		t.Fatal(err)
	}
	if limits == nil {
		limits = ratelimit.LetsEncryptLimits()
		limits[ratelimit.FleetOrdersPerSecond] = ratelimit.LimitConfig{Limit: ratelimit.Limit{Count: 1000, Period: time.Second, Burst: 1000}}
	}
	st.cat, err = ratelimit.NewCatalogue(ratelimit.CA{ID: "pebble", Directory: st.s.ACMEDirectory, Limits: limits})
	if err != nil {
		t.Fatal(err)
	}
	st.limiter = ratelimit.NewLimiter(ratelimit.NewDBStore(d), st.cat)
	st.store = certstore.New(d)
	st.chall = acmeissuer.NewChallengeStore(d, 10*time.Minute)
	return st
}

// countingTransport counts orders the CA created (new-order answered 201):
// the CA-side view of how many certificates were ordered. Pebble rejects 5%
// of nonces; acmez's retry of such a refused POST is not a second order.
type countingTransport struct {
	next http.RoundTripper
	n    *atomic.Int64
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(r)
	if err == nil && r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/order-plz") && resp.StatusCode == http.StatusCreated {
		c.n.Add(1)
	}
	return resp, err
}

// worker builds one worker with its own ACME issuer, as a separate process would.
func (st *stack) worker(t *testing.T, name string) *pipeline.Worker {
	t.Helper()
	caPEM, err := os.ReadFile(st.s.ACMETLSCA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: countingTransport{
		next: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, MaxIdleConnsPerHost: 16}, n: &st.orders}}
	iss, err := acmeissuer.New(acmeissuer.Config{
		Directory: st.s.ACMEDirectory, DB: st.db, Sealer: st.keyring, HTTPClient: hc,
		Solvers:   map[string]acmez.Solver{acme.ChallengeTypeHTTP01: acmeissuer.HTTP01Solver{Store: st.chall}},
		Penalties: ratelimit.NewDBStore(st.db), Profile: testenv.PebbleShortProfile, PollInterval: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	w, err := pipeline.New(pipeline.Config{
		Owner: name, Topics: st.topics, Claims: st.store, Tokens: st.limiter, Limits: st.cat,
		Writer: st.producer, Sealer: st.keyring, Concurrency: 4,
		CAs:    []pipeline.CA{{Name: "pebble", Directory: st.s.ACMEDirectory, Issuer: iss}},
		Logger: slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// serveHTTP01 serves the database-backed HTTP-01 responder where Pebble
// validates names pointed at 127.0.0.2 (see pointAt): the production path,
// any worker's store answers for every worker's orders.
func (st *stack) serveHTTP01(t *testing.T) {
	t.Helper()
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.2:%d", st.s.HTTP01Port))
	if err != nil {
		t.Fatalf("listening for HTTP-01 on 127.0.0.2: %v", err)
	}
	srv := &http.Server{Handler: acmeissuer.HTTP01Handler(st.chall, http.NotFoundHandler()), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

func (st *stack) pointAt(t *testing.T, ctx context.Context, names ...string) {
	t.Helper()
	c := testenv.ChallTestSrv{URL: st.s.ChallTestSrvURL}
	for _, n := range names {
		if err := c.AddA(ctx, n, "127.0.0.2"); err != nil {
			t.Fatal(err)
		}
	}
}

// run starts a worker in its own consumer-group member and returns its stop.
func (st *stack) run(t *testing.T, w *pipeline.Worker, group string) (stop func()) {
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: st.s.KafkaBrokers, GroupID: group,
		GroupTopics: []string{st.topics.Requests, st.topics.Retry}, StartOffset: kafka.FirstOffset, MaxWait: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, r, 30*time.Second) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("worker Run: %v", err)
			}
			r.Close()
		})
	}
	t.Cleanup(stop)
	return stop
}

func request(id string, sans ...string) *events.IssuanceRequest {
	return &events.IssuanceRequest{RequestID: id, SANs: sans, Tenant: "acme-corp", KeyType: events.KeyECDSAP256,
		CA: "pebble", Profile: testenv.PebbleShortProfile, Reason: events.ReasonNew}
}

func (st *stack) publish(t *testing.T, ctx context.Context, reqs ...*events.IssuanceRequest) {
	t.Helper()
	var evs []events.Event
	for _, r := range reqs {
		ev, err := events.New("//certfleet/test", time.Now(), r)
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	if err := st.producer.Publish(ctx, evs...); err != nil {
		t.Fatal(err)
	}
}

// readAll returns every record of topic, reading each partition up to its
// end offset at the time of the call.
func readAll(t *testing.T, ctx context.Context, brokers []string, topic string) []kafka.Message {
	t.Helper()
	conn, err := kafka.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		t.Fatal(err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	var all []kafka.Message
	for _, p := range parts {
		pc, err := kafka.DialLeader(ctx, "tcp", brokers[0], topic, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		last, err := pc.ReadLastOffset()
		pc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if last == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p.ID, MaxWait: 50 * time.Millisecond})
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				r.Close()
				t.Fatalf("reading %s/%d: %v", topic, p.ID, err)
			}
			all = append(all, m)
			if m.Offset >= last-1 {
				break
			}
		}
		r.Close()
	}
	return all
}

// collect polls topic until done says enough, or fails the test at ctx's end.
func collect(t *testing.T, ctx context.Context, brokers []string, topic string, done func([]kafka.Message) bool) []kafka.Message {
	t.Helper()
	for {
		all := readAll(t, ctx, brokers, topic)
		if done(all) {
			return all
		}
		select {
		case <-ctx.Done():
			t.Errorf("waiting for records on %s: %v (have %d)", topic, ctx.Err(), len(all))
			return all
		case <-time.After(250 * time.Millisecond):
		}
	}
}

type tally struct {
	obtained map[string]*events.CertObtained // by request id
	ids      map[string]map[string]bool      // request id -> ce_ids of cert_obtained
	failed   map[string]*events.CertFailed
	deferred int
}

func summarize(t *testing.T, msgs []kafka.Message) tally {
	t.Helper()
	ty := tally{obtained: map[string]*events.CertObtained{}, ids: map[string]map[string]bool{}, failed: map[string]*events.CertFailed{}}
	for _, m := range msgs {
		ev, err := events.Decode(m)
		if err != nil {
			t.Fatalf("undecodable record on the events topic: %v", err)
		}
		switch p := ev.Data.(type) {
		case *events.CertObtained:
			ty.obtained[p.RequestID] = p
			if ty.ids[p.RequestID] == nil {
				ty.ids[p.RequestID] = map[string]bool{}
			}
			ty.ids[p.RequestID][ev.ID] = true
		case *events.CertFailed:
			ty.failed[p.RequestID] = p
		case *events.IssuanceDeferred:
			ty.deferred++
		}
	}
	return ty
}

// The end-to-end check, at CI size: requests through two workers
// with real HTTP-01 validation by Pebble against the database-backed
// responder; duplicates and redeliveries order nothing twice; hostile
// records land in the DLQ while valid ones around them succeed; keys are
// sealed in the database and appear in no topic.
func TestPipelineEndToEnd(t *testing.T) {
	st := newStack(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	st.serveHTTP01(t)
	const n = 200
	var reqs []*events.IssuanceRequest
	var names []string
	for i := 0; i < n; i++ {
		// Distinct registered domains: this test is about the pipeline, not the
		// CertificatesPerDomain limit (TestPipelineDefersOnLimit is).
		name := fmt.Sprintf("www.site%d-%s.test", i, st.suffix)
		names = append(names, name)
		reqs = append(reqs, request(fmt.Sprintf("req-%d-%s", i, st.suffix), name))
	}
	st.pointAt(t, ctx, names...)

	st.run(t, st.worker(t, "worker-a"), "g-"+st.suffix)
	st.run(t, st.worker(t, "worker-b"), "g-"+st.suffix)

	// Every request twice (an upstream retry), interleaved with hostile records.
	st.publish(t, ctx, reqs...)
	hostile := []kafka.Message{
		{Topic: st.topics.Requests, Key: []byte("x"), Value: []byte("{not json")},
		{Topic: st.topics.Requests, Key: []byte("x"), Value: make([]byte, 70<<10)},
		{Topic: st.topics.Requests, Value: []byte(`{}`), Headers: []kafka.Header{{Key: "ce_specversion", Value: []byte("0.3")}}},
	}
	bad := request("bad-name-"+st.suffix, "exa mple..com")
	badEv, _ := events.New("//t", time.Now(), &events.IssuanceRequest{RequestID: "x", SANs: []string{"ok.test"}, Tenant: "t", KeyType: events.KeyECDSAP256, CA: "pebble", Reason: events.ReasonNew})
	badMsg, err := events.Encode(badEv)
	if err != nil {
		t.Fatal(err)
	}
	badMsg.Topic = st.topics.Requests
	badMsg.Value = []byte(strings.Replace(string(badMsg.Value), `"ok.test"`, `"`+bad.SANs[0]+`"`, 1))
	unknownCA := request("unknown-ca-"+st.suffix, "www.unknown-"+st.suffix+".test")
	unknownCA.CA = "no-such-ca"
	ucaEv, _ := events.New("//t", time.Now(), unknownCA)
	ucaMsg, _ := events.Encode(ucaEv)
	ucaMsg.Topic = st.topics.Requests
	hostile = append(hostile, badMsg, ucaMsg)
	if err := st.producer.WriteMessages(ctx, hostile...); err != nil {
		t.Fatal(err)
	}
	st.publish(t, ctx, reqs...)

	wctx, wcancel := context.WithTimeout(ctx, 40*time.Second)
	defer wcancel()
	msgs := collect(t, wctx, st.s.KafkaBrokers, st.topics.Events, func(all []kafka.Message) bool {
		seen := map[string]bool{}
		for _, m := range all {
			if h := header(m, "ce_type"); h == string(events.TypeCertObtained) {
				seen[header(m, "ce_id")] = true
			}
		}
		return len(seen) >= n
	})
	ty := summarize(t, msgs)
	t.Logf("events: %d records, %d requests obtained, %d failed, %d deferrals; CA orders %d", len(msgs), len(ty.obtained), len(ty.failed), ty.deferred, st.orders.Load())
	if len(ty.obtained) != n {
		rows, _ := st.db.Pool().Query(context.Background(), `SELECT request_id, state, owner, owner_until, attempts, updated_at FROM issuance_requests WHERE state <> 'succeeded'`)
		for rows.Next() {
			var id, state, owner string
			var until *time.Time
			var attempts int
			var upd time.Time
			_ = rows.Scan(&id, &state, &owner, &until, &attempts, &upd)
			t.Logf("unfinished request %s: state %s owner %s until %v attempts %d updated %v", id, state, owner, until, attempts, upd)
		}
		rows.Close()
		for id, f := range ty.failed {
			t.Logf("failed %s: %s %s retryable=%v", id, f.ProblemType, f.Detail, f.Retryable)
		}
		t.Fatalf("cert_obtained for %d requests, want %d", len(ty.obtained), n)
	}
	for id, ids := range ty.ids {
		if len(ids) != 1 {
			t.Errorf("request %s: %d different cert_obtained ids; duplicates must repeat the same id", id, len(ids))
		}
	}
	// Redelivery after completion: publish them all again; nothing is ordered.
	before := st.orders.Load()
	st.publish(t, ctx, reqs[:10]...)
	collect(t, ctx, st.s.KafkaBrokers, st.topics.Events, func(all []kafka.Message) bool {
		count := 0
		for _, m := range all {
			if header(m, "ce_type") == string(events.TypeCertObtained) {
				count++
			}
		}
		return count >= len(msgs)+10 // the ten re-published outcomes arrived
	})
	if got := st.orders.Load(); got != n || got != before {
		t.Fatalf("CA saw %d new orders (%d before the redelivery); want exactly %d, one per request", got, before, n)
	}

	// Every certificate verifies against Pebble's root for its SANs.
	roots := x509.NewCertPool()
	rootPEM, _ := os.ReadFile(st.s.PebbleRoot)
	roots.AppendCertsFromPEM(rootPEM)
	for _, ob := range ty.obtained {
		certs := parseChain(t, ob.ChainPEM)
		inter := x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
		if _, err := certs[0].Verify(x509.VerifyOptions{DNSName: ob.SANs[0], Roots: roots, Intermediates: inter}); err != nil {
			t.Errorf("request %s: %v", ob.RequestID, err)
		}
	}
	// Keys are sealed in the database and open to the certificate's key.
	rows, err := st.db.Pool().Query(ctx, `SELECT identity, request_id, chain_pem, sealed_key FROM issued_certificates`)
	if err != nil {
		t.Fatal(err)
	}
	stored := 0
	for rows.Next() {
		var identity, reqID, chain string
		var blob []byte
		if err := rows.Scan(&identity, &reqID, &chain, &blob); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(blob), "PRIVATE KEY") {
			t.Fatalf("request %s: key stored in the clear", reqID)
		}
		key, err := seal.OpenPrivateKey(ctx, st.keyring, blob, seal.AAD(seal.PurposeCertKey, identity, reqID))
		if err != nil {
			t.Fatalf("request %s: sealed key does not open: %v", reqID, err)
		}
		leaf := parseChain(t, chain)[0]
		if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(leaf.PublicKey) {
			t.Fatalf("request %s: sealed key is not the certificate's key", reqID)
		}
		stored++
	}
	if stored != n {
		t.Fatalf("%d certificates stored, want %d", stored, n)
	}
	// Hostile records are in the DLQ with reasons. Delivery is at least once:
	// after a rebalance a record can be dead-lettered twice, so count origins.
	origins := map[string]bool{}
	dlq := collect(t, ctx, st.s.KafkaBrokers, st.topics.DLQ, func(all []kafka.Message) bool {
		clear(origins)
		for _, m := range all {
			if d, ok := events.ReadDeadLetter(m); ok {
				origins[fmt.Sprintf("%s/%d/%d", d.Topic, d.Partition, d.Offset)] = true
			}
		}
		return len(origins) >= len(hostile)
	})
	if len(origins) != len(hostile) {
		t.Fatalf("DLQ holds %d distinct records, want the %d hostile ones", len(origins), len(hostile))
	}
	for _, m := range dlq {
		d, ok := events.ReadDeadLetter(m)
		if !ok || d.Reason == "" || d.Topic != st.topics.Requests {
			t.Errorf("DLQ record without reason or origin: %+v", d)
		}
		t.Logf("dead-lettered: %s", d.Reason)
	}
	// No key material in any topic.
	for _, topic := range []string{st.topics.Events, st.topics.Retry, st.topics.DLQ, st.topics.Requests} {
		for _, m := range readAll(t, ctx, st.s.KafkaBrokers, topic) {
			if strings.Contains(string(m.Value), "PRIVATE KEY") {
				t.Fatalf("key material on topic %s", topic)
			}
		}
	}
}

// testLog sends worker logs to the test log, shown on failure or with -v.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) { l.t.Log(strings.TrimSpace(string(p))); return len(p), nil }

func header(m kafka.Message, k string) string {
	for _, h := range m.Headers {
		if h.Key == k {
			return string(h.Value)
		}
	}
	return ""
}

func parseChain(t *testing.T, chain string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	rest := []byte(chain)
	for {
			var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatal("empty chain")
	}
	return out
}

