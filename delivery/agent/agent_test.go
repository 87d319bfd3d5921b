package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/delivery"
	"github.com/certfleet/certfleet/events"
)

var testCA = sync.OnceValues(func() (*x509.Certificate, *ecdsa.PrivateKey) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "agent test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(30 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	ca, _ := x509.ParseCertificate(der)
	return ca, key
})

// cert issues a leaf for sans, valid from notBefore for lifetime.
func cert(t *testing.T, tenant string, notBefore time.Time, lifetime time.Duration, sans ...string) delivery.Certificate {
	t.Helper()
	ca, caKey := testCA()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	serial.Add(serial, big.NewInt(1))
	notBefore = notBefore.Truncate(time.Second)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: serial, DNSNames: sans,
		NotBefore: notBefore, NotAfter: notBefore.Add(lifetime)}, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	chain := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})) + string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}))
	return delivery.Certificate{Identity: events.Identity(sans), RequestID: "r-" + leaf.SerialNumber.Text(16), Tenant: tenant, SANs: sans,
		Serial: leaf.SerialNumber.Text(16), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, ChainPEM: chain, Key: key}
}

func sealed(t *testing.T, k *delivery.PrivateKey, c delivery.Certificate) kafka.Message {
	t.Helper()
	r, err := delivery.Seal("edge", k.Public(), c, delivery.ReasonIssued)
	if err != nil {
		t.Fatal(err)
	}
	m, err := delivery.Encode(r, delivery.Source, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// fetcher hands out msgs, then blocks; it records commits.
type fetcher struct {
	mu        sync.Mutex
	msgs      []kafka.Message
	committed int
}

func (f *fetcher) FetchMessage(ctx context.Context) (kafka.Message, error) {
	for {
		f.mu.Lock()
		if len(f.msgs) > 0 {
			m := f.msgs[0]
			f.msgs = f.msgs[1:]
			f.mu.Unlock()
			return m, nil
		}
		f.mu.Unlock()
		select {
		case <-ctx.Done():
			return kafka.Message{}, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func (f *fetcher) CommitMessages(_ context.Context, msgs ...kafka.Message) error {
	f.mu.Lock()
	f.committed += len(msgs)
	f.mu.Unlock()
	return nil
}

func (f *fetcher) add(msgs ...kafka.Message) {
	f.mu.Lock()
	f.msgs = append(f.msgs, msgs...)
	f.mu.Unlock()
}

func (f *fetcher) done(n int) func() bool {
	return func() bool { f.mu.Lock(); defer f.mu.Unlock(); return f.committed >= n && len(f.msgs) == 0 }
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type env struct {
	t     *testing.T
	key   *delivery.PrivateKey
	dir   string
	log   *bytes.Buffer
	hooks string // file the hook appends CERTFLEET_AGENT_CHANGED to
}

func newEnv(t *testing.T) *env {
	k, err := delivery.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, key: k, dir: filepath.Join(t.TempDir(), "certs"), log: &bytes.Buffer{}, hooks: filepath.Join(t.TempDir(), "hooks")}
}

// start runs an agent over a fresh fetcher until the test ends.
func (e *env) start(mod func(*Config)) (*Agent, *fetcher, func()) {
	e.t.Helper()
	cfg := Config{Key: e.key, Dir: e.dir, BatchWait: 20 * time.Millisecond,
		Exec:   `echo "$CERTFLEET_AGENT_CHANGED" >> ` + e.hooks,
		Logger: slog.New(slog.NewTextHandler(&syncWriter{w: e.log}, nil))}
	if mod != nil {
		mod(&cfg)
	}
	a, err := New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	f := &fetcher{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx, f) }()
	stop := func() { cancel(); <-done }
	e.t.Cleanup(stop)
	return a, f, stop
}

func (e *env) hookRuns() []string {
	b, _ := os.ReadFile(e.hooks)
	return strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", " | "))
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// The agent writes each name's newest valid pair, loadable as a TLS server
// loads it, key 0600; an older or the same certificate, a delivery to
// another key or tenant, or an expired one writes nothing; the hook runs
// once per batch that changed pairs, naming them; a restart rewrites no
// file.
func TestAgentKeepsTheNewestPair(t *testing.T) {
	e := newEnv(t)
	other, _ := delivery.GenerateKey()
	now := time.Now()
	a1 := cert(t, "eu", now.Add(-time.Hour), 48*time.Hour, "www.a.example", "a.example")
	a2 := cert(t, "eu", now.Add(-time.Minute), 72*time.Hour, "a.example", "www.a.example") // newer
	b1 := cert(t, "eu", now.Add(-time.Hour), 48*time.Hour, "*.b.example")
	us := cert(t, "us", now.Add(-time.Hour), 48*time.Hour, "c.example")
	expired := cert(t, "eu", now.Add(-72*time.Hour), 48*time.Hour, "d.example")

	a, f, stop := e.start(func(c *Config) { c.Tenant = "eu" })
	f.add(sealed(t, e.key, a1), sealed(t, e.key, b1), sealed(t, other, cert(t, "eu", now, time.Hour, "x.example")),
		sealed(t, e.key, us), sealed(t, e.key, expired))
	waitFor(t, "the first batch", f.done(5))
	f.add(sealed(t, e.key, a2), sealed(t, e.key, a1), sealed(t, e.key, b1))
	waitFor(t, "the second batch", f.done(8))
	stop()

	held := a.Held()
	if len(held) != 2 || held["a.example"].Serial != a2.Serial || held["_wildcard.b.example"].Serial != b1.Serial {
		t.Fatalf("held %+v", held)
	}
	for _, name := range []string{"a.example", "_wildcard.b.example"} {
		pair, err := tls.LoadX509KeyPair(filepath.Join(e.dir, name+".crt"), filepath.Join(e.dir, name+".key"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(pair.Certificate) != 2 {
			t.Errorf("%s.crt holds %d certificates, want the chain of 2", name, len(pair.Certificate))
		}
		fi, _ := os.Stat(filepath.Join(e.dir, name+".key"))
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s.key has mode %v", name, fi.Mode().Perm())
		}
	}
	entries, _ := os.ReadDir(e.dir)
	if len(entries) != 4 {
		t.Errorf("directory holds %d files, want 2 pairs and no temporary file", len(entries))
	}
	runs := e.hookRuns()
	if !slices.Equal(runs, []string{"_wildcard.b.example", "a.example", "|", "a.example"}) {
		t.Errorf("hook runs %q: want one per batch that changed pairs, naming them", runs)
	}
	if n := metricValue(t, a, "certfleet_agent_certificates_held"); n != 2 {
		t.Errorf("held metric %v", n)
	}
	counts := map[string]float64{}
	a.mu.Lock()
	for k, v := range a.counts {
		counts[k] = v
	}
	a.mu.Unlock()
	want := map[string]float64{ResultWritten: 3, ResultOtherRecipient: 1, ResultOtherTenant: 1, ResultNotValid: 1, ResultOlder: 1, ResultUnchanged: 1}
	for k, v := range want {
		if counts[k] != v {
			t.Errorf("%s: %v, want %v (all %v)", k, counts[k], v, counts)
		}
	}

	// Restart: the same records again change no file and run no hook.
	before := inode(t, filepath.Join(e.dir, "a.example.key"))
	a, f, stop = e.start(func(c *Config) { c.Tenant = "eu" })
	if len(a.Held()) != 2 {
		t.Fatalf("after restart holds %v", a.Held())
	}
	f.add(sealed(t, e.key, a1), sealed(t, e.key, a2), sealed(t, e.key, b1))
	waitFor(t, "the batch after restart", f.done(3))
	stop()
	if inode(t, filepath.Join(e.dir, "a.example.key")) != before || len(e.hookRuns()) != 4 {
		t.Error("a restart rewrote an unchanged pair or ran the hook")
	}
	if strings.Contains(e.log.String(), "PRIVATE KEY") {
		t.Error("the agent logged key material")
	}
}

// metricValue gathers a's metrics and returns the sum of name's samples.
func metricValue(t *testing.T, a *Agent, name string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(a)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			v += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return v
}

// A failing hook runs again after the next batch, with the names still
// pending; the expiring count follows the lifetime rule.
func TestHookRetryAndExpiring(t *testing.T) {
	e := newEnv(t)
	flag := filepath.Join(t.TempDir(), "fail")
	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	fresh := cert(t, "eu", now.Add(-time.Hour), 30*24*time.Hour, "a.example")
	old := cert(t, "eu", now.Add(-5*24*time.Hour), 6*24*time.Hour, "b.example") // a day left of six
	a, f, stop := e.start(func(c *Config) {
		c.Exec = `test ! -e ` + flag + ` && echo "$CERTFLEET_AGENT_CHANGED" >> ` + e.hooks
	})
	f.add(sealed(t, e.key, fresh))
	waitFor(t, "the first batch", f.done(1))
	waitFor(t, "the failed hook", func() bool { a.mu.Lock(); defer a.mu.Unlock(); return a.hooks["failed"] == 1 })
	os.Remove(flag)
	f.add(sealed(t, e.key, old))
	waitFor(t, "the second batch", f.done(2))
	waitFor(t, "the hook", func() bool { return len(e.hookRuns()) > 0 })
	stop()
	if runs := e.hookRuns(); !slices.Equal(runs, []string{"a.example", "b.example"}) {
		t.Errorf("hook ran with %q, want both names once", runs)
	}
	if n := metricValue(t, a, "certfleet_agent_certificates_expiring"); n != 1 {
		t.Errorf("expiring %v, want 1", n)
	}
}

// The events topic: a newer certificate obtained for a name held marks its
// key awaited until the delivery arrives; other names and tenants do not.
func TestKeysAwaited(t *testing.T) {
	e := newEnv(t)
	now := time.Now()
	c1 := cert(t, "eu", now.Add(-time.Hour), 48*time.Hour, "a.example.com")
	c2 := cert(t, "eu", now.Add(-time.Minute), 72*time.Hour, "a.example.com")
	a, f, _ := e.start(func(c *Config) { c.Tenant = "eu" })
	f.add(sealed(t, e.key, c1))
	waitFor(t, "the pair", f.done(1))
	obtained := func(c delivery.Certificate, tenant string) kafka.Message {
		ev, err := events.New("//test", time.Now(), &events.CertObtained{RequestID: c.RequestID, SANs: c.SANs, Tenant: tenant, CA: "pebble",
			Serial: c.Serial, NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(), ChainPEM: c.ChainPEM, ARICertID: "a.b", Issuer: "CN=agent test CA", Attempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		m, err := events.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	ch := make(chan kafka.Message, 4)
	ch <- obtained(c2, "eu")
	ch <- obtained(cert(t, "eu", now, 72*time.Hour, "b.example.com"), "eu") // not held
	ch <- obtained(c1, "eu")                                                // the one held
	close(ch)
	a.Events(ch)
	if got := a.Awaited(); !slices.Equal(got, []string{"a.example.com"}) {
		t.Fatalf("awaited %v", got)
	}
	f.add(sealed(t, e.key, c2))
	waitFor(t, "the new pair", f.done(2))
	if got := a.Awaited(); len(got) != 0 {
		t.Errorf("awaited %v after the delivery", got)
	}
}

func TestName(t *testing.T) {
	for _, tc := range []struct {
		sans []string
		want string
	}{
		{[]string{"www.a.example", "a.example"}, "a.example"},
		{[]string{"*.a.example", "a.example"}, "a.example"},
		{[]string{"*.b.example", "*.a.example"}, "_wildcard.a.example"},
	} {
		if got := Name(tc.sans); got != tc.want {
			t.Errorf("Name(%v) = %s, want %s", tc.sans, got, tc.want)
		}
	}
}
