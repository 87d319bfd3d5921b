package scheduler_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/scheduler"
	"github.com/certfleet/certfleet/testenv"
)

func handle(t *testing.T, s *scheduler.Scheduler, p events.Payload) {
	t.Helper()
	if err := s.Handle(context.Background(), events.Event{ID: "x", Source: "//t", Time: time.Now(), Data: p}); err != nil {
		t.Fatalf("handle %T: %v", p, err)
	}
}

func TestOutcomesRecorded(t *testing.T) {
	r := newRig(t, nil)
	ctx := context.Background()
	m := r.manage("t", 1)[0]
	r.tick()
	row, _ := r.inv.Get(ctx, m.Identity)
	req1 := row.RequestID
	storeClaim(t, r.d, req1, m.Identity) // the worker's claim, before it reports
	now := r.clk.Now()
	base := events.CertFailed{RequestID: req1, SANs: m.SANs, Tenant: "t", CA: testCA,
		ProblemType: "urn:ietf:params:acme:error:serverInternal", Detail: "boom", Attempt: 1}

	// Retryable: the worker retries at next_attempt_at; the watchdog waits past it.
	f := base
	f.Retryable, f.NextAttemptAt = true, now.Add(time.Hour)
	handle(t, r.sched, &f)
	row, _ = r.inv.Get(ctx, m.Identity)
	if !row.NextRenewalAt.Equal(now.Add(7*time.Hour)) || row.RequestID != req1 || row.Failures != 0 || row.LastError == "" {
		t.Fatalf("after retryable failure: %+v", row)
	}
	// Deferred by a rate limit: likewise past its retry_at.
	handle(t, r.sched, &events.IssuanceDeferred{RequestID: req1, SANs: m.SANs, Tenant: "t", CA: testCA,
		Limit: "CertificatesPerDomain", LimitKey: "example.com", RetryAt: now.Add(10 * time.Hour)})
	row, _ = r.inv.Get(ctx, m.Identity)
	if !row.NextRenewalAt.Equal(now.Add(16 * time.Hour)) {
		t.Fatalf("after deferral: %+v", row)
	}
	// Permanent: escalating retry schedule with a new job (new request id).
	f = base
	f.Attempt = 3
	handle(t, r.sched, &f)
	row, _ = r.inv.Get(ctx, m.Identity)
	if row.Failures != 1 || row.RequestID != "" || row.Basis != scheduler.BasisRetry ||
		row.NextRenewalAt.Before(now.Add(150*time.Second)) || row.NextRenewalAt.After(now.Add(5*time.Minute)) {
		t.Fatalf("after permanent failure: %+v", row)
	}
	handle(t, r.sched, &f) // redelivered: nothing changes
	if again, _ := r.inv.Get(ctx, m.Identity); again.Failures != 1 || !again.NextRenewalAt.Equal(row.NextRenewalAt) {
		t.Fatalf("redelivered failure changed the row: %+v", again)
	}
	r.w.reset()
	r.clk.Advance(5 * time.Minute)
	if res := r.tick(); res.Emitted != 1 {
		t.Fatalf("retry tick: %+v", res)
	}
	req2 := r.w.requests(t)[0].RequestID
	if req2 == req1 {
		t.Fatal("a retry after a permanent failure reused the finished request id")
	}
	// Obtained: plan the renewal at 2/3 of the lifetime, jittered; reset failures.
	nb := r.clk.Now().Truncate(time.Second)
	ob := &events.CertObtained{RequestID: req2, SANs: m.SANs, Tenant: "t", CA: testCA, Serial: "1a",
		NotBefore: nb, NotAfter: nb.Add(90 * 24 * time.Hour), ARICertID: "AAAA.Gg", Attempts: 1}
	storeIssued(t, r.d, m.Identity, req2, ob.Serial, ob.ARICertID, ob.NotBefore, ob.NotAfter) // stored before published
	handle(t, r.sched, ob)
	row, _ = r.inv.Get(ctx, m.Identity)
	lo, hi := nb.Add(57*24*time.Hour), nb.Add(63*24*time.Hour)
	if row.Basis != scheduler.BasisLifetime || row.Failures != 0 || row.RequestID != "" || row.CertARIID != "AAAA.Gg" ||
		row.NextRenewalAt.Before(lo) || row.NextRenewalAt.After(hi) || !row.PlannedAt.Equal(row.NextRenewalAt) {
		t.Fatalf("after obtained: %+v", row)
	}
	handle(t, r.sched, ob) // redelivered
	if again, _ := r.inv.Get(ctx, m.Identity); !again.NextRenewalAt.Equal(row.NextRenewalAt) {
		t.Fatal("redelivered cert_obtained moved the plan")
	}
	// An older certificate arriving late does not replace the newer one.
	old := *ob
	old.RequestID, old.NotBefore, old.NotAfter, old.ARICertID = req2+"-older", nb.Add(-24*time.Hour), nb.Add(89*24*time.Hour), "AAAA.Gf"
	storeIssued(t, r.d, m.Identity, old.RequestID, old.Serial, old.ARICertID, old.NotBefore, old.NotAfter)
	handle(t, r.sched, &old)
	if again, _ := r.inv.Get(ctx, m.Identity); again.CertARIID != "AAAA.Gg" {
		t.Fatal("an older certificate replaced the newer")
	}
	// Events for SAN sets nobody manages are ignored.
	other := *ob
	other.RequestID, other.SANs = "req-unmanaged", []string{"unmanaged.example.org"}
	storeIssued(t, r.d, events.Identity(other.SANs), other.RequestID, other.Serial, other.ARICertID, other.NotBefore, other.NotAfter)
	handle(t, r.sched, &other)
}

// ARI against the real Pebble: the window comes from the CA, the renewal is
// a point inside it, and when the CA moves the window to the past (Pebble's
// /set-renewal-info/), the re-check after Retry-After makes it due at once.
func TestARIFromPebble(t *testing.T) {
	r := newRig(t, nil)
	s := testenv.Require(t)
	ctx := ctxT(t, 60*time.Second)
	hc := pebbleHTTP(t, s)
	ari := &scheduler.ARIClient{HTTP: hc, Directories: map[string]string{"pebble": s.ACMEDirectory}}
	sched, err := scheduler.New(scheduler.Config{DB: r.d, Writer: r.w, Holder: r.holder, Logger: quiet, Clock: r.clk, ARI: ari})
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("ari-%d.certfleet.test", time.Now().UnixNano())
	m, err := scheduler.Normalize(scheduler.Spec{SANs: []string{name}, Tenant: "t", CA: s.ACMEDirectory})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.inv.Manage(ctx, m); err != nil {
		t.Fatal(err)
	}
	chain, leaf := obtainFromPebble(t, ctx, s, hc, name)
	ariID := events.ARICertID(leaf)
	storeIssued(t, r.d, m.Identity, "r1", leaf.SerialNumber.Text(16), ariID, leaf.NotBefore, leaf.NotAfter)
	handle(t, sched, &events.CertObtained{RequestID: "r1", SANs: m.SANs, Tenant: "t", CA: s.ACMEDirectory,
		Serial: leaf.SerialNumber.Text(16), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, ChainPEM: chain,
		ARICertID: ariID, Attempts: 1})
	row, _ := r.inv.Get(ctx, m.Identity)
	if row.Basis != scheduler.BasisARI || !row.ARIWindow.Valid() || row.NextRenewalAt.Before(row.ARIWindow.Start) ||
		!row.NextRenewalAt.Before(row.ARIWindow.End) {
		t.Fatalf("not planned inside Pebble's window: %+v", row)
	}
	if got := row.ARIRetryAt.Sub(r.clk.Now()); got != 6*time.Hour {
		t.Errorf("re-check after %v, want Pebble's Retry-After of 6h", got)
	}
	t.Logf("Pebble window %v .. %v (lifetime %v); renewal at %v", row.ARIWindow.Start, row.ARIWindow.End,
		leaf.NotAfter.Sub(leaf.NotBefore), row.NextRenewalAt)

	// Nothing to re-check before Retry-After.
	if n, err := sched.RecheckARI(ctx, 10); err != nil || n != 0 {
		t.Fatalf("early re-check: %d %v", n, err)
	}
	// The CA moves the window to the past: renew now. (A window of at least
	// two seconds: acmez's GetRenewalInfo takes shorter ones for malformed.)
	if err := s.SetRenewalInfo(ctx, chain, time.Now().Add(-time.Hour), time.Now().Add(-time.Hour+time.Minute)); err != nil {
		t.Fatal(err)
	}
	r.clk.Advance(6*time.Hour + time.Second)
	if n, err := sched.RecheckARI(ctx, 10); err != nil || n != 1 {
		t.Fatalf("re-check: %d %v", n, err)
	}
	row, _ = r.inv.Get(ctx, m.Identity)
	if row.Basis != scheduler.BasisIncident || !row.NextRenewalAt.Equal(scheduler.IncidentDue) || !row.PlannedAt.Equal(r.clk.Now()) {
		t.Fatalf("after the window moved: %+v (now %v)", row, r.clk.Now())
	}
	// The tick emits a reissue replacing the certificate, first in line.
	insertIssued(t, r.d, m.Identity, ariID, leaf.NotBefore, leaf.NotAfter)
	res, err := sched.Tick(ctx, func() scheduler.LeaseState { return r.lease })
	if err != nil || res.Emitted != 1 {
		t.Fatalf("tick: %+v %v", res, err)
	}
	q := r.w.requests(t)[0]
	if q.Reason != events.ReasonReissue || q.Priority != events.MaxPriority || q.Replaces != ariID {
		t.Errorf("reissue job %+v", q)
	}
}

func pebbleHTTP(t *testing.T, s testenv.Settings) *http.Client {
	tr, err := s.ACMETransport()
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Timeout: 20 * time.Second, Transport: tr}
}

func obtainFromPebble(t *testing.T, ctx context.Context, s testenv.Settings, hc *http.Client, name string) (string, *x509.Certificate) {
	t.Helper()
	client := acmez.Client{
		Client:           &acme.Client{Directory: s.ACMEDirectory, HTTPClient: hc, PollInterval: 10 * time.Millisecond},
		ChallengeSolvers: map[string]acmez.Solver{acme.ChallengeTypeHTTP01: solver{testenv.ChallTestSrv{URL: s.ChallTestSrvURL}}},
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	acct, err := client.NewAccount(ctx, acme.Account{TermsOfServiceAgreed: true, PrivateKey: key})
	if err != nil {
		t.Fatal(err)
	}
	certKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	certs, err := client.ObtainCertificateForSANs(ctx, acct, certKey, []string{name})
	if err != nil {
		t.Fatal(err)
	}
	chain := string(certs[0].ChainPEM)
	block, _ := pem.Decode(certs[0].ChainPEM)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return chain, leaf
}

type solver struct{ srv testenv.ChallTestSrv }

func (s solver) Present(ctx context.Context, ch acme.Challenge) error {
	return s.srv.AddHTTP01(ctx, ch.Token, ch.KeyAuthorization)
}
func (s solver) CleanUp(ctx context.Context, ch acme.Challenge) error {
	return s.srv.DelHTTP01(ctx, ch.Token)
}
