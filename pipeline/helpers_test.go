package pipeline_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
	"net/http"
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
	"github.com/certfleet/certfleet/internal/caconfig"
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

func newStack(t testing.TB, limits map[ratelimit.Name]ratelimit.LimitConfig) *stack {
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
	st.limiter = ratelimit.NewLimiter(ratelimit.LimiterConfig{Store: ratelimit.NewDBStore(d), Catalogue: st.cat})
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
// mods change the worker's configuration (after the defaults above).
func (st *stack) worker(t testing.TB, name string, mods ...func(*pipeline.Config)) *pipeline.Worker {
	t.Helper()
	tr, err := st.s.ACMETransport()
	if err != nil {
		t.Fatal(err)
	}
	tr.MaxIdleConnsPerHost = 16
	hc := &http.Client{Timeout: 30 * time.Second, Transport: countingTransport{next: tr, n: &st.orders}}
	iss, err := acmeissuer.New(acmeissuer.Config{
		Directory: st.s.ACMEDirectory, DB: st.db, Sealer: st.keyring, HTTPClient: hc,
		Solvers: map[string]acmez.Solver{acme.ChallengeTypeHTTP01: acmeissuer.HTTP01Solver{Store: st.chall}},
		Profile: testenv.PebbleShortProfile, PollInterval: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := pipeline.Config{
		Owner: name, Topics: st.topics, Claims: st.store, Orders: st.store, Previous: st.store, Tokens: st.limiter, Limits: st.cat,
		Writer: st.producer, Sealer: st.keyring, Concurrency: testenv.MaxConcurrentOrdersPerPackage / 2,
		CAs:    []pipeline.CA{{CA: caconfig.CA{Name: "pebble", Directory: st.s.ACMEDirectory}, Issuer: iss}},
		Logger: slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	for _, mod := range mods {
		mod(&cfg)
	}
	w, err := pipeline.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// issuer builds an issuer of directory over the stack's database, HTTP-01
// through the stack's challenge store, without a default profile; mod, when
// set, changes its configuration.
func (st *stack) issuer(t testing.TB, directory string, mod func(*acmeissuer.Config)) *acmeissuer.Issuer {
	t.Helper()
	tr, err := st.s.ACMETransport()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.CloseIdleConnections)
	cfg := acmeissuer.Config{
		Directory: directory, DB: st.db, Sealer: st.keyring, HTTPClient: &http.Client{Timeout: 30 * time.Second, Transport: tr},
		Solvers:      map[string]acmez.Solver{acme.ChallengeTypeHTTP01: acmeissuer.HTTP01Solver{Store: st.chall}},
		PollInterval: 10 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	iss, err := acmeissuer.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

// firstOutcome polls the events topic until it holds an outcome (an event
// other than issuance_deferred) and returns the last one read, failing the
// test at ctx's end.
func (st *stack) firstOutcome(t testing.TB, ctx context.Context) events.Event {
	t.Helper()
	for {
		// A topic this young may still answer "not leader": read again.
		all, _ := events.ReadTopic(ctx, nil, st.s.KafkaBrokers, st.topics.Events, 0)
		var outcome events.Event
		for _, m := range all {
			if ev, err := events.Decode(m); err == nil && ev.Type() != events.TypeIssuanceDeferred {
				outcome = ev
			}
		}
		if outcome.Data != nil {
			return outcome
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no outcome on %s: %v", st.topics.Events, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// serveHTTP01 serves the database-backed HTTP-01 responder where Pebble
// validates names pointed at 127.0.0.2 (see pointAt): the production path,
// any worker's store answers for every worker's orders.
func (st *stack) serveHTTP01(t testing.TB) {
	t.Helper()
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.2:%d", st.s.HTTP01Port))
	if err != nil {
		t.Fatalf("listening for HTTP-01 on 127.0.0.2: %v", err)
	}
	srv := &http.Server{Handler: acmeissuer.HTTP01Handler(st.chall, http.NotFoundHandler()), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

func (st *stack) pointAt(t testing.TB, ctx context.Context, names ...string) {
	t.Helper()
	c := testenv.ChallTestSrv{URL: st.s.ChallTestSrvURL}
	for _, n := range names {
		if err := c.AddA(ctx, n, "127.0.0.2"); err != nil {
			t.Fatal(err)
		}
	}
}

// run starts a worker in its own consumer-group member and returns its stop.
func (st *stack) run(t testing.TB, w *pipeline.Worker, group string) (stop func()) {
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

func (st *stack) publish(t testing.TB, ctx context.Context, reqs ...*events.IssuanceRequest) {
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

// readAll returns every record of topic up to each partition's end offset
// at the time of the call (events.ReadTopic), failing the test on error.
func readAll(t testing.TB, ctx context.Context, brokers []string, topic string) []kafka.Message {
	t.Helper()
	all, err := events.ReadTopic(ctx, nil, brokers, topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	return all
}

// collect polls topic until done says enough, or fails the test at ctx's end.
func collect(t testing.TB, ctx context.Context, brokers []string, topic string, done func([]kafka.Message) bool) []kafka.Message {
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

// testLog sends worker logs to the test log, shown on failure or with -v.
type testLog struct{ t testing.TB }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func header(m kafka.Message, k string) string {
	for _, h := range m.Headers {
		if h.Key == k {
			return string(h.Value)
		}
	}
	return ""
}

func parseChain(t testing.TB, chain string) []*x509.Certificate {
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
