package scheduler_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/scheduler"
)

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
