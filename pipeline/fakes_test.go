package pipeline

// In-memory twins of the worker's dependencies, for the decision tests in
// job_test.go. They model only what the decisions read; the real adapters
// are exercised by integration_test.go against testenv.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	dto "github.com/prometheus/client_model/go"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/caconfig"
	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/seal"
)

var (
	_ Claims  = (*fakeClaims)(nil)
	_ Tokens  = (*fakeTokens)(nil)
	_ Limits  = fakeLimits{}
	_ Issuer  = (*fakeIssuer)(nil)
	_ Writer  = (*fakeWriter)(nil)
	_ Fetcher = (*fakeFetcher)(nil)
)

// fakeClaims is certstore's claim contract in memory: one owner per request
// until its lease ends; a finished request answers Done with its outcome.
type fakeClaims struct {
	mu      sync.Mutex
	now     clock.Clock
	errs    int                              // Claim fails this many times before working
	errCode string                           // ... with this SQLSTATE (else a connection error)
	err     error                            // Claim always fails with this
	script  map[string]certstore.ClaimResult // fixed answers by request id
	rows    map[string]*claimRow

	claims, completes, fails, releases int
	renewals                           int // successful Renew calls
}

type claimRow struct {
	owner    string
	until    time.Time
	attempts int
	state    certstore.State
	outcome  []byte
	order    *certstore.Order // recorded by RecordOrder, handed to the next owner
	booking  *certstore.Booking
}

func newFakeClaims(now clock.Clock) *fakeClaims {
	return &fakeClaims{now: now, script: map[string]certstore.ClaimResult{}, rows: map[string]*claimRow{}}
}

func (f *fakeClaims) Claim(_ context.Context, id, _, owner string, lease time.Duration) (certstore.ClaimResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.claims++
	if f.err != nil {
		return certstore.ClaimResult{}, fmt.Errorf("certstore: claiming request %q: %w", id, f.err)
	}
	if f.errs > 0 {
		f.errs--
		if f.errCode != "" {
			return certstore.ClaimResult{}, &pgconn.PgError{Code: f.errCode}
		}
		return certstore.ClaimResult{}, errors.New("fake database: connection refused")
	}
	if r, ok := f.script[id]; ok {
		return r, nil
	}
	row := f.rows[id]
	if row == nil {
		row = &claimRow{}
		f.rows[id] = row
	}
	switch {
	case row.state == certstore.StateSucceeded || row.state == certstore.StateFailed:
		return certstore.ClaimResult{Done: true, State: row.state, Outcome: row.outcome}, nil
	case row.owner != "" && row.until.After(f.now.Now()):
		return certstore.ClaimResult{Busy: true, State: row.state, LeaseUntil: row.until}, nil
	}
	row.attempts++
	row.owner, row.until, row.state = owner, f.now.Now().Add(lease), certstore.StateOrdering
	return certstore.ClaimResult{Acquired: true, Attempt: row.attempts, State: row.state, LeaseUntil: row.until, Order: row.order, Booking: row.booking}, nil
}

// Renew is certstore.Store's: only the owner of an ordering request
// extends its lease.
func (f *fakeClaims) Renew(_ context.Context, id, owner string, lease time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	row := f.owned(id, owner)
	if row == nil {
		return certstore.ErrNotOwner
	}
	row.until = f.now.Now().Add(lease)
	f.renewals++
	return nil
}

// owned is id's row while owner orders it, else nil. f.mu is held.
func (f *fakeClaims) owned(id, owner string) *claimRow {
	row := f.rows[id]
	if row == nil || row.owner != owner || row.state != certstore.StateOrdering {
		return nil
	}
	return row
}

// takeOver gives the request to another owner, as a claim after the lease
// lapsed would.
func (f *fakeClaims) takeOver(id, owner string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rows[id].owner = owner
}

func (f *fakeClaims) renewed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.renewals
}

// RecordOrder is certstore.Store's: only the owner records; the next claim
// returns it; the request's end forgets it.
func (f *fakeClaims) RecordOrder(_ context.Context, id, owner string, o certstore.Order) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	row := f.owned(id, owner)
	if row == nil {
		return certstore.ErrNotOwner
	}
	row.order = &o
	return nil
}

func (f *fakeClaims) finish(id, owner string, s certstore.State, outcome []byte) error {
	row := f.rows[id]
	if row == nil || row.owner != owner {
		return certstore.ErrNotOwner
	}
	row.owner, row.state, row.outcome, row.order, row.booking = "", s, outcome, nil, nil
	return nil
}

func (f *fakeClaims) Complete(_ context.Context, owner string, c certstore.Issued, outcome []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.completes++
	if len(c.SealedKey) == 0 || c.ChainPEM == "" || c.Serial == "" {
		return errors.New("fake store: incomplete certificate")
	}
	return f.finish(c.RequestID, owner, certstore.StateSucceeded, outcome)
}

func (f *fakeClaims) Fail(_ context.Context, id, owner string, outcome []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fails++
	return f.finish(id, owner, certstore.StateFailed, outcome)
}

func (f *fakeClaims) Release(_ context.Context, id, owner string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.releases++
	row := f.rows[id]
	if row == nil || row.owner != owner {
		return certstore.ErrNotOwner
	}
	row.owner, row.state, row.booking = "", certstore.StateReleased, nil
	return nil
}

func (f *fakeClaims) counts() (claims, completes, fails, releases int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.claims, f.completes, f.fails, f.releases
}

// fakeTokens allows everything unless deny is set.
type fakeTokens struct {
	mu              sync.Mutex
	deny            *ratelimit.Result
	denials         int   // when > 0, deny only this many spends, then allow
	err             error // when set, every spend fails with it
	spends, refunds int
	penalties       map[string]time.Time // bucket key -> until
	failedAuthz     []string             // problem types reported to SpendFailedAuthorizations
	spent           [][]ratelimit.Transaction
}

func (f *fakeTokens) Spend(_ context.Context, txns []ratelimit.Transaction) (ratelimit.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.spends++
	f.spent = append(f.spent, txns)
	if f.err != nil {
		return ratelimit.Result{}, f.err
	}
	if f.deny != nil && (f.denials == 0 || f.spends <= f.denials) {
		return *f.deny, nil
	}
	return ratelimit.Result{Decision: ratelimit.Decision{Allowed: true}}, nil
}

func (f *fakeTokens) Refund(context.Context, []ratelimit.Transaction) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refunds++
	return nil
}

func (f *fakeTokens) Penalize(_ context.Context, t ratelimit.Transaction, until time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.penalties == nil {
		f.penalties = map[string]time.Time{}
	}
	f.penalties[t.Key()] = until
	return nil
}

// SpendFailedAuthorizations counts as a spend: the limiter decides from the
// problem type whether it costs tokens.
func (f *fakeTokens) SpendFailedAuthorizations(_ context.Context, _ ratelimit.Order, problemType string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.spends++
	f.failedAuthz = append(f.failedAuthz, problemType)
	return nil
}

func (f *fakeTokens) counts() (spends, refunds int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.spends, f.refunds
}

// fakeLimits charges one domain bucket and the fleet budget, and with
// account the order's account first.
type fakeLimits struct{ account bool }

func (f fakeLimits) OrderTransactions(o ratelimit.Order) ([]ratelimit.Transaction, error) {
	var acct []ratelimit.Transaction
	if f.account {
		acct = []ratelimit.Transaction{{Directory: o.Directory, Name: ratelimit.NewOrdersPerAccount, Value: o.Account, Account: o.Account, Cost: 1}}
	}
	return append(acct, []ratelimit.Transaction{
		{Directory: o.Directory, Name: ratelimit.CertificatesPerDomain, Value: o.SANs[0], Cost: 1},
		{Directory: o.Directory, Name: ratelimit.FleetOrdersPerSecond, Value: "*", Cost: 1},
	}...), nil
}

// fakeIssuer issues from testCA unless obtain says otherwise; obtain gets
// the 1-based number of the call.
type fakeIssuer struct {
	calls  atomic.Int64
	obtain func(ctx context.Context, req acmeissuer.Request, call int64) (*acmeissuer.Result, error)
}

func (f *fakeIssuer) Obtain(ctx context.Context, req acmeissuer.Request) (*acmeissuer.Result, error) {
	n := f.calls.Add(1)
	if f.obtain != nil {
		return f.obtain(ctx, req, n)
	}
	return issueTest(req.SANs)
}

// testCA is a throwaway CA whose leaves pass events' chain checks.
var testCA = sync.OnceValues(func() (*x509.Certificate, *ecdsa.PrivateKey) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "certfleet test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		panic(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	return ca, key
})

func issueTest(sans []string) (*acmeissuer.Result, error) {
	ca, caKey := testCA()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial.Add(serial, big.NewInt(1)), DNSNames: sans, Subject: pkix.Name{CommonName: sans[0]},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(6 * 24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})...)
	return &acmeissuer.Result{ChainPEM: chain, Leaf: leaf, Serial: leaf.SerialNumber.Text(16),
		NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, ARICertID: events.ARICertID(leaf), PrivateKey: key}, nil
}

// fakeWriter keeps what was written, by topic. refuse, when set, refuses a
// record with the error it returns (as the broker refuses one too large).
type fakeWriter struct {
	mu     sync.Mutex
	msgs   []kafka.Message
	refuse func(kafka.Message) error
}

func (f *fakeWriter) WriteMessages(_ context.Context, msgs ...kafka.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range msgs {
		if m.Topic == "" {
			return errors.New("fake writer: record without topic")
		}
		if f.refuse != nil {
			if err := f.refuse(m); err != nil {
				return err
			}
		}
	}
	f.msgs = append(f.msgs, msgs...)
	return nil
}

func (f *fakeWriter) on(topic string) []kafka.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []kafka.Message
	for _, m := range f.msgs {
		if m.Topic == topic {
			out = append(out, m)
		}
	}
	return out
}

// fakeFetcher serves a fixed list of records, then blocks until ctx ends,
// and records commits.
type fakeFetcher struct {
	mu      sync.Mutex
	msgs    []kafka.Message
	next    int
	drained bool // FetchMessage was called after the last record
	commits []kafka.Message
}

func (f *fakeFetcher) FetchMessage(ctx context.Context) (kafka.Message, error) {
	f.mu.Lock()
	if f.next < len(f.msgs) {
		m := f.msgs[f.next]
		f.next++
		f.mu.Unlock()
		return m, nil
	}
	f.drained = true
	f.mu.Unlock()
	<-ctx.Done()
	return kafka.Message{}, ctx.Err()
}

func (f *fakeFetcher) CommitMessages(_ context.Context, msgs ...kafka.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.commits = append(f.commits, msgs...)
	return nil
}

// committed returns the offsets committed for a partition, in order.
func (f *fakeFetcher) committed(partition int) []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []int64
	for _, m := range f.commits {
		if m.Partition == partition {
			out = append(out, m.Offset)
		}
	}
	return out
}

func (f *fakeFetcher) isDrained() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.drained
}

// harness wires a Worker to fakes.
type harness struct {
	t      *testing.T
	clock  *clock.Fake
	claims *fakeClaims
	tokens *fakeTokens
	issuer *fakeIssuer
	writer *fakeWriter
	topics events.Topics
	// accountKey, when set, is the CA's AccountKey.
	accountKey func(string) string
}

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func newHarness(t *testing.T) *harness {
	c := clock.NewFake(t0)
	return &harness{t: t, clock: c, claims: newFakeClaims(c), tokens: &fakeTokens{}, issuer: &fakeIssuer{},
		writer: &fakeWriter{}, topics: events.DefaultTopics()}
}

func testKeyring(t testing.TB) *seal.Keyring {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	k, err := seal.NewKeyring("k1", map[string][]byte{"k1": key})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (h *harness) config() Config {
	return Config{
		Owner: "test-worker", Topics: h.topics, Claims: h.claims, Tokens: h.tokens, Limits: fakeLimits{account: h.accountKey != nil},
		Writer: h.writer, Sealer: testKeyring(h.t), Clock: h.clock,
		CAs:          []CA{{CA: caconfig.CA{Name: "pebble", Directory: "https://ca.test/dir"}, Issuer: h.issuer, AccountKey: h.accountKey}},
		OrderRetries: 2, RetryDelay: 30 * time.Second, MaxRetryDelay: time.Hour, BusyRetry: 5 * time.Second,
		Lease: 5 * time.Minute, MaxAttempts: 5, InfraBackoffMax: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

func (h *harness) worker(mod func(*Config)) *Worker {
	h.t.Helper()
	cfg := h.config()
	if mod != nil {
		mod(&cfg)
	}
	w, err := New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	return w
}

// running is a Worker.Run in progress over a fakeFetcher.
type running struct {
	t      *testing.T
	w      *Worker
	f      *fakeFetcher
	cancel func() // ends Run's context: shutdown begins
	stop   func() // cancels and waits for Run to return
}

func (h *harness) run(w *Worker, grace time.Duration, msgs ...kafka.Message) *running {
	h.t.Helper()
	f := &fakeFetcher{msgs: msgs}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, f, grace) }()
	var once sync.Once
	r := &running{t: h.t, w: w, f: f, cancel: cancel}
	r.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					h.t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				h.t.Fatal("Run did not return within 10 s of its context ending")
			}
		})
	}
	h.t.Cleanup(r.stop)
	return r
}

// pending is the number of fetched records not yet finished or handed back.
func (r *running) pending() int {
	var m dto.Metric
	if err := r.w.cfg.Metrics.Pending.Write(&m); err != nil {
		r.t.Fatal(err)
	}
	return int(m.GetGauge().GetValue())
}

// waitFor polls cond (it reads state, it does not sleep for the result)
// until it holds, failing the test after 10 s.
func (r *running) waitFor(what string, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitIdle waits until every record was fetched and none is pending: each
// one is finished (and its commit done) or handed back.
func (r *running) waitIdle() {
	r.t.Helper()
	r.waitFor("the worker to go idle", func() bool { return r.f.isDrained() && r.pending() == 0 })
}

// record encodes p as a record of topic at partition/offset.
func record(t testing.TB, topic string, partition int, offset int64, p events.Payload) kafka.Message {
	t.Helper()
	ev, err := events.New("//certfleet/test", t0, p)
	if err != nil {
		t.Fatal(err)
	}
	m, err := events.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	m.Topic, m.Partition, m.Offset = topic, partition, offset
	return m
}

func newRequest(id string, sans ...string) *events.IssuanceRequest {
	return &events.IssuanceRequest{RequestID: id, SANs: sans, Tenant: "acme-corp", KeyType: events.KeyECDSAP256,
		CA: "pebble", Reason: events.ReasonNew}
}

// decoded decodes every record of msgs, failing the test on any it cannot.
func decoded(t testing.TB, msgs []kafka.Message) []events.Event {
	t.Helper()
	var out []events.Event
	for _, m := range msgs {
		ev, err := events.Decode(m)
		if err != nil {
			t.Fatalf("the worker wrote an undecodable record to %s: %v", m.Topic, err)
		}
		out = append(out, ev)
	}
	return out
}
