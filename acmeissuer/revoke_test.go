package acmeissuer

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/testenv"
)

// pebbleCertStatus asks Pebble's management API what it holds for serial
// (lower-case hex): "Valid" or "Revoked", and the reason it recorded.
func pebbleCertStatus(t *testing.T, ctx context.Context, s testenv.Settings, serial string) (status string, reason *int) {
	t.Helper()
	hc := pebbleHTTPClient(t, s, nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.PebbleManagementURL+"/cert-status-by-serial/"+serial, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("cert-status-by-serial/%s: %s %s", serial, resp.Status, body)
	}
	var st struct {
		Status string
		Reason *int
	}
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("cert-status-by-serial/%s: %v: %s", serial, err, body)
	}
	return st.Status, st.Reason
}

// Revocation at Pebble, checked through its management API: with the
// tenant's stored account (the one that ordered it), again (alreadyRevoked
// is success), with the certificate key alone for a tenant without an
// account, and the refusals: no key at hand, a reason the CA refuses.
func TestRevoke(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	iss := newTestIssuer(t, s, d, nil)
	obtain := func() *Result {
		t.Helper()
		res, err := iss.Obtain(ctx, Request{Tenant: "rv", SANs: []string{"rv-" + randomSuffix() + ".certfleet.test"}})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	a, b, c := obtain(), obtain(), obtain()
	// One ordered through the shared account (AccountShared): tenant sh has no account of its own.
	shared, err := newTestIssuer(t, s, d, func(c *Config) { c.AccountMode = AccountShared }).Obtain(ctx,
		Request{Tenant: "sh", SANs: []string{"rv-" + randomSuffix() + ".certfleet.test"}})
	if err != nil {
		t.Fatal(err)
	}
	// A Revoker of its own (the CLI's shape): same database and keyring, no solvers.
	rv, err := NewRevoker(Config{Directory: s.ACMEDirectory, DB: d, Sealer: testKeyring(t), HTTPClient: pebbleHTTPClient(t, s, nil)})
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name        string
		rev         Revocation
		wantSigned  string
		wantAlready bool
		wantReason  int
	}{
		{"the ordering account", Revocation{Tenant: "rv", Cert: a.Leaf, Reason: acme.ReasonKeyCompromise}, SignedWithAccount, false, 1},
		{"again: already revoked", Revocation{Tenant: "rv", Cert: a.Leaf, Reason: acme.ReasonSuperseded}, SignedWithAccount, true, 1},
		{"the shared account", Revocation{Tenant: "sh", Cert: shared.Leaf, Reason: acme.ReasonAffiliationChanged}, SignedWithAccount, false, 3},
		{"the certificate key, no account", Revocation{Tenant: "nobody", Cert: b.Leaf, Reason: acme.ReasonCessationOfOperation, CertKey: b.PrivateKey}, SignedWithCertKey, false, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if st, _ := pebbleCertStatus(t, ctx, s, tc.rev.Cert.SerialNumber.Text(16)); st != "Valid" && !tc.wantAlready {
				t.Fatalf("before: status %q", st)
			}
			res, err := rv.Revoke(ctx, tc.rev)
			if err != nil {
				t.Fatal(err)
			}
			if res.SignedWith != tc.wantSigned || res.AlreadyRevoked != tc.wantAlready {
				t.Errorf("result %+v; want signed with %s, already revoked %v", res, tc.wantSigned, tc.wantAlready)
			}
			st, reason := pebbleCertStatus(t, ctx, s, tc.rev.Cert.SerialNumber.Text(16))
			if st != "Revoked" || reason == nil || *reason != tc.wantReason {
				t.Errorf("Pebble holds status %q reason %v; want Revoked with reason %d", st, reason, tc.wantReason)
			}
		})
	}

	t.Run("no account and no key", func(t *testing.T) {
		_, err := rv.Revoke(ctx, Revocation{Tenant: "nobody", Cert: c.Leaf, Reason: acme.ReasonUnspecified})
		if err == nil {
			t.Fatal("revoked without any key")
		}
		if st, _ := pebbleCertStatus(t, ctx, s, c.Serial); st != "Valid" {
			t.Errorf("status %q after a refused revocation", st)
		}
	})
	t.Run("a reason the CA refuses", func(t *testing.T) {
		_, err := rv.Revoke(ctx, Revocation{Tenant: "rv", Cert: c.Leaf, Reason: 7})
		var p acme.Problem
		if !errors.As(err, &p) || p.Type != acme.ProblemTypeBadRevocationReason {
			t.Fatalf("error %v; want the CA's badRevocationReason", err)
		}
		if cl := Classify(err); cl.Class != Permanent {
			t.Errorf("classified %v; want permanent", cl.Class)
		}
	})
	t.Run("no certificate", func(t *testing.T) {
		if _, err := rv.Revoke(ctx, Revocation{Tenant: "rv"}); !errors.Is(err, ErrInvalidRequest) {
			t.Fatalf("error %v; want ErrInvalidRequest", err)
		}
	})
}
