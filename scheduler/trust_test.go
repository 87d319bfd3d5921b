package scheduler_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/scheduler"
)

// forgedObtained is a cert_obtained that agrees with itself (it passes
// events' checks: leaf serial, dates and SANs equal the fields) for a
// self-signed certificate valid until 2099: what anyone who may write the
// events topic can make.
func forgedObtained(t *testing.T, requestID string, sans []string) *events.CertObtained {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	nb := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	na := time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(0x5eed), Subject: pkix.Name{CommonName: sans[0]}, DNSNames: sans,
		NotBefore: nb, NotAfter: na, AuthorityKeyId: []byte{1, 2, 3, 4}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	p := &events.CertObtained{RequestID: requestID, SANs: sans, Tenant: "t", CA: testCA, Serial: leaf.SerialNumber.Text(16),
		NotBefore: nb, NotAfter: na, ChainPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		ARICertID: events.ARICertID(leaf), Issuer: leaf.Issuer.String(), Attempts: 1}
	if _, err := events.New("//forger", time.Now(), p); err != nil {
		t.Fatalf("the forged event does not even validate: %v", err)
	}
	return p
}

// refused asserts that Handle refused ev as untrusted, permanently (the
// subscriber dead-letters it at once), with a reason containing want.
func refused(t *testing.T, s *scheduler.Scheduler, p events.Payload, want string) {
	t.Helper()
	err := s.Handle(context.Background(), events.Event{ID: "forged", Source: "//forger", Time: time.Now(), Data: p})
	var perm *backoff.PermanentError
	if !errors.Is(err, scheduler.ErrRefused) || !errors.As(err, &perm) || !strings.Contains(err.Error(), want) {
		t.Fatalf("%T: err = %v, want a permanent refusal containing %q", p, err, want)
	}
}

// The scheduler records only what a worker stored: a forged cert_obtained
// (self-signed, not_after 2099) moves no renewal, whether its request id is
// unknown, that of the job in flight, or that of a stored certificate with
// other dates; cert_failed and issuance_deferred must name a request a
// worker claimed for the same SAN set, and a retry time at most 30 days
// ahead. Each refusal is counted by type and reason.
func TestForgedOutcomesRefused(t *testing.T) {
	metrics := scheduler.NewMetrics(nil)
	r := newRig(t, func(c *scheduler.Config) { c.Metrics = metrics })
	ctx := context.Background()
	ms := r.manage("t", 2)
	m, other := ms[0], ms[1]
	r.tick()
	before, _ := r.inv.Get(ctx, m.Identity)
	inFlight := before.RequestID
	storeClaim(t, r.d, inFlight, m.Identity)

	refused(t, r.sched, forgedObtained(t, "forged-1", m.SANs), "none is stored for that request")
	refused(t, r.sched, forgedObtained(t, inFlight, m.SANs), "none is stored for that request")
	// A stored certificate for the request, but not this one.
	nb := r.clk.Now().Truncate(time.Second)
	storeIssued(t, r.d, m.Identity, inFlight, "1b", "AAAA.Gw", nb, nb.Add(90*24*time.Hour))
	f := forgedObtained(t, inFlight, m.SANs)
	refused(t, r.sched, f, "serial 5eed, stored 1b")
	f.Serial, f.ARICertID = "1b", "AAAA.Gw" // copying the stored fields still leaves the dates
	refused(t, r.sched, f, "not_before")
	f.NotBefore = nb
	refused(t, r.sched, f, "not_after 2099-01-01T00:00:00Z, stored")
	// The stored certificate of one SAN set does not vouch for another's.
	refused(t, r.sched, &events.CertObtained{RequestID: inFlight, SANs: other.SANs, Tenant: "t", CA: testCA, Serial: "1b",
		NotBefore: nb, NotAfter: nb.Add(90 * 24 * time.Hour), ARICertID: "AAAA.Gw", Attempts: 1}, "another SAN set")

	failed := &events.CertFailed{RequestID: "never-claimed", SANs: m.SANs, Tenant: "t", CA: testCA,
		ProblemType: "urn:ietf:params:acme:error:serverInternal", Detail: "forged", Attempt: 1}
	refused(t, r.sched, failed, "no worker has claimed that request")
	failed.RequestID, failed.SANs = inFlight, other.SANs
	refused(t, r.sched, failed, "claimed for another SAN set")
	y9999 := time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)
	failed.SANs, failed.Retryable, failed.NextAttemptAt = m.SANs, true, y9999
	refused(t, r.sched, failed, "next_attempt_at: invalid value: 9999-12-31T00:00:00Z is more than 30 days after now")
	deferred := &events.IssuanceDeferred{RequestID: inFlight, SANs: m.SANs, Tenant: "t", CA: testCA,
		Limit: "CertificatesPerDomain", LimitKey: "example.com", RetryAt: y9999}
	refused(t, r.sched, deferred, "retry_at: invalid value: 9999-12-31T00:00:00Z is more than 30 days after now")
	deferred.RequestID = "never-claimed"
	deferred.RetryAt = r.clk.Now().Add(time.Hour)
	refused(t, r.sched, deferred, "no worker has claimed that request")

	after, _ := r.inv.Get(ctx, m.Identity)
	if !after.NextRenewalAt.Equal(before.NextRenewalAt) || after.CertARIID != "" || !after.CertNotAfter.IsZero() ||
		after.RequestID != inFlight || after.Failures != 0 || after.LastError != "" {
		t.Fatalf("a refused event changed the managed row:\nbefore %+v\nafter  %+v", before, after)
	}
	for _, c := range []struct {
		typ, reason string
		want        float64
	}{{"dev.certfleet.cert.obtained", "unmatched", 6}, {"dev.certfleet.cert.failed", "unmatched", 2},
		{"dev.certfleet.cert.failed", "too_far_ahead", 1}, {"dev.certfleet.issuance.deferred", "too_far_ahead", 1},
		{"dev.certfleet.issuance.deferred", "unmatched", 1}} {
		if got := value(metrics.EventsRefused.WithLabelValues(c.typ, c.reason)); got != c.want {
			t.Errorf("events_refused_total{%s,%s} = %v, want %v", c.typ, c.reason, got, c.want)
		}
	}
	// The genuine outcome, as stored, is still recorded.
	handle(t, r.sched, &events.CertObtained{RequestID: inFlight, SANs: m.SANs, Tenant: "t", CA: testCA, Serial: "1b",
		NotBefore: nb, NotAfter: nb.Add(90 * 24 * time.Hour), ARICertID: "AAAA.Gw", Attempts: 1})
	if row, _ := r.inv.Get(ctx, m.Identity); row.CertARIID != "AAAA.Gw" || row.Basis != scheduler.BasisLifetime {
		t.Fatalf("the stored certificate was not recorded: %+v", row)
	}
}

// countingServer is an HTTPS server that counts the requests it gets; when
// ari is true it is a minimal ACME CA with a renewalInfo endpoint.
func countingServer(t *testing.T, ari bool) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	var srv *httptest.Server
	srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n.Add(1)
		if !ari {
			http.NotFound(w, req)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		switch {
		case req.URL.Path == "/dir":
			_ = json.NewEncoder(w).Encode(map[string]string{"newNonce": srv.URL + "/nonce", "newAccount": srv.URL + "/acct",
				"newOrder": srv.URL + "/order", "renewalInfo": srv.URL + "/ri"})
		case strings.HasPrefix(req.URL.Path, "/ri/"):
			now := time.Now().UTC()
			w.Header().Set("Retry-After", "3600")
			_ = json.NewEncoder(w).Encode(map[string]any{"suggestedWindow": map[string]time.Time{
				"start": now.Add(10 * 24 * time.Hour), "end": now.Add(11 * 24 * time.Hour)}})
		default:
			http.NotFound(w, req)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// trusting is an HTTP client that trusts the given test servers.
func trusting(srvs ...*httptest.Server) *http.Client {
	pool := x509.NewCertPool()
	for _, s := range srvs {
		pool.AddCert(s.Certificate())
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// ARI is asked only of the managed row's CA, and only when it is one of the
// configured CAs: an event naming an unknown CA URL causes no outbound
// request (counted on the server it names), nor does a managed row whose CA
// is an https URL no -ca entry has, nor an event for a SAN set nobody
// manages. The configured CA is asked (the counting works).
func TestARIOnlyFromConfiguredCAs(t *testing.T) {
	named, namedHits := countingServer(t, true)       // what the events name
	unlisted, unlistedHits := countingServer(t, true) // a row's CA that -ca does not list
	lab, labHits := countingServer(t, true)           // the configured CA
	ari := &scheduler.ARIClient{HTTP: trusting(named, unlisted, lab), Directories: map[string]string{"lab": lab.URL + "/dir"}}
	r := newRig(t, func(c *scheduler.Config) { c.ARI = ari })
	ctx := context.Background()

	manage := func(host, ca string) scheduler.Managed {
		m, err := scheduler.Normalize(scheduler.Spec{SANs: []string{host}, Tenant: "t", CA: ca})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.inv.Manage(ctx, m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	obtained := func(reqID string, sans []string) *events.CertObtained {
		nb := r.clk.Now().Truncate(time.Second)
		o := &events.CertObtained{RequestID: reqID, SANs: sans, Tenant: "t", CA: named.URL + "/dir", Serial: "2a",
			NotBefore: nb, NotAfter: nb.Add(90 * 24 * time.Hour), ARICertID: "AQIDBA.Kg", Attempts: 1}
		storeIssued(t, r.d, events.Identity(sans), reqID, o.Serial, o.ARICertID, o.NotBefore, o.NotAfter)
		return o
	}

	// A row whose CA is an unlisted URL: planned by lifetime, no request
	// anywhere, and no ARI re-check scheduled.
	u := manage("unlisted.example.com", unlisted.URL+"/dir")
	handle(t, r.sched, obtained("req-unlisted", u.SANs))
	row, _ := r.inv.Get(ctx, u.Identity)
	if row.Basis != scheduler.BasisLifetime || !row.ARIRetryAt.IsZero() {
		t.Fatalf("row of an unlisted CA: %+v", row)
	}
	// A SAN set nobody manages: nothing goes out either.
	handle(t, r.sched, obtained("req-unmanaged", []string{"unmanaged.example.com"}))
	// A row of the configured CA: ARI from it, not from the URL the event names.
	l := manage("lab.example.com", "lab")
	handle(t, r.sched, obtained("req-lab", l.SANs))
	row, _ = r.inv.Get(ctx, l.Identity)
	if row.Basis != scheduler.BasisARI || labHits.Load() == 0 {
		t.Fatalf("row of the configured CA not planned by its ARI (%d requests): %+v", labHits.Load(), row)
	}
	// A row stored with an ARI re-check (say before its CA left -ca) is
	// re-checked without a request, and then no more.
	if _, err := r.d.Pool().Exec(ctx, `UPDATE managed_certificates SET ari_retry_at = $2, cert_not_before = $3 WHERE identity = $1`,
		u.Identity, r.clk.Now(), r.clk.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n, err := r.sched.RecheckARI(ctx, 10); err != nil || n != 1 {
		t.Fatalf("re-check: %d, %v", n, err)
	}
	if row, _ := r.inv.Get(ctx, u.Identity); !row.ARIRetryAt.IsZero() {
		t.Fatalf("an unlisted CA is still re-checked: %+v", row)
	}
	if namedHits.Load() != 0 || unlistedHits.Load() != 0 {
		t.Fatalf("requests to CAs that are not configured: %d to the one events named, %d to the unlisted one",
			namedHits.Load(), unlistedHits.Load())
	}
}
