package acmeissuer

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/testenv"
)

// External Account Binding against testenv's second Pebble, which refuses
// every newAccount without a valid binding: with the right key id and MAC key
// the account is created (and a certificate ordered with it); without a
// binding, with a wrong MAC key or an unknown key id the error says what to
// fix, and is Permanent with the CA's problem type, as the cert_failed it
// becomes carries it.
func TestEABAccount(t *testing.T) {
	s := testenv.Require(t)
	eab, err := s.EAB()
	if err != nil {
		t.Fatal(err)
	}
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	onEABPebble := func(e *acme.EAB) func(*Config) {
		return func(c *Config) { c.Directory, c.EAB = s.EABACMEDirectory, e }
	}

	t.Run("bound", func(t *testing.T) {
		iss := newTestIssuer(t, s, d, onEABPebble(&eab))
		acct, err := iss.Account(ctx, "eab-tenant")
		if err != nil {
			t.Fatalf("account with EAB: %v", err)
		}
		if acct.Location == "" || !strings.HasPrefix(acct.Location, strings.TrimSuffix(s.EABACMEDirectory, "/dir")) {
			t.Fatalf("account URL %q is not at the EAB Pebble %s", acct.Location, s.EABACMEDirectory)
		}
		// The binding is what the CA recorded with the account.
		got, err := iss.client.GetAccount(ctx, acct)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.ExternalAccountBinding) == 0 {
			t.Errorf("the CA's account object has no externalAccountBinding: %+v", got)
		}
		// And the account orders certificates.
		name := "eab-" + randomSuffix() + ".test"
		res, err := iss.Obtain(ctx, Request{Tenant: "eab-tenant", SANs: []string{name}})
		if err != nil {
			t.Fatalf("ordering with the bound account: %v", err)
		}
		if res.AccountURL != acct.Location {
			t.Errorf("ordered with account %s, want %s", res.AccountURL, acct.Location)
		}
	})

	wrongKey := make([]byte, 32)
	_, _ = rand.Read(wrongKey)
	for _, tc := range []struct {
		name    string
		eab     *acme.EAB
		problem string
		want    []string
	}{
		{"none", nil, acme.ProblemTypeExternalAccountRequired,
			[]string{"the CA requires External Account Binding", "eab-kid=KEYID,eab-key-file=FILE"}},
		{"wrong MAC key", &acme.EAB{KeyID: eab.KeyID, MACKey: base64.RawURLEncoding.EncodeToString(wrongKey)}, acme.ProblemTypeUnauthorized,
			[]string{`the CA refused the External Account Binding with key id "` + eab.KeyID + `"`, "check eab-kid and the MAC key in eab-key-file", "verification error"}},
		{"unknown key id", &acme.EAB{KeyID: "nobody", MACKey: eab.MACKey}, acme.ProblemTypeUnauthorized,
			[]string{`the CA refused the External Account Binding with key id "nobody"`, "not known"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			iss := newTestIssuer(t, s, d, onEABPebble(tc.eab))
			_, err := iss.Account(ctx, "refused-"+randomSuffix())
			if err == nil {
				t.Fatal("account created; want a refusal")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if tc.eab != nil && strings.Contains(err.Error(), tc.eab.MACKey) {
				t.Errorf("the error quotes the MAC key: %v", err)
			}
			c := Classify(err)
			if c.Class != Permanent || c.ProblemType != tc.problem || !strings.Contains(c.Detail, tc.want[0]) {
				t.Errorf("Classify = %+v; want Permanent, %s, a detail saying %q", c, tc.problem, tc.want[0])
			}
		})
	}
}
