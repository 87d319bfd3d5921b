package acmeissuer

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/schema"
	"github.com/certfleet/certfleet/seal"
	"github.com/certfleet/certfleet/testenv"
)

func randomSuffix() string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func testKeyring(t testing.TB) *seal.Keyring {
	t.Helper()
	k, err := seal.NewKeyring("test", map[string][]byte{"test": bytes.Repeat([]byte{7}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// freshDB opens a new migrated database for one test.
func freshDB(t testing.TB) *db.DB {
	t.Helper()
	url := testenv.FreshDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d, err := db.Open(ctx, db.Config{URL: url, MaxConns: 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	if _, err := schema.Migrate(ctx, d, schema.Options{}); err != nil {
		t.Fatalf("migrating: %v", err)
	}
	return d
}

// pebbleHTTPClient trusts the CA that signs Pebble's HTTPS certificate.
func pebbleHTTPClient(t testing.TB, s testenv.Settings, base http.RoundTripper) *http.Client {
	t.Helper()
	tr, err := s.ACMETransport()
	if err != nil {
		t.Fatal(err)
	}
	tr.MaxIdleConnsPerHost = 16
	t.Cleanup(tr.CloseIdleConnections)
	if base == nil {
		base = tr
	} else if f, ok := base.(*faultInjector); ok {
		f.next = tr
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: base}
}

// challtestsrvHTTP01 solves HTTP-01 through challtestsrv, which serves the
// port Pebble validates.
type challtestsrvHTTP01 struct{ srv testenv.ChallTestSrv }

func (s challtestsrvHTTP01) Present(ctx context.Context, ch acme.Challenge) error {
	return s.srv.AddHTTP01(ctx, ch.Token, ch.KeyAuthorization)
}

func (s challtestsrvHTTP01) CleanUp(ctx context.Context, ch acme.Challenge) error {
	return s.srv.DelHTTP01(ctx, ch.Token)
}

// newTestIssuer builds an Issuer against testenv's Pebble.
func newTestIssuer(t testing.TB, s testenv.Settings, d *db.DB, mutate func(*Config)) *Issuer {
	t.Helper()
	cfg := Config{
		Directory:    s.ACMEDirectory,
		DB:           d,
		Sealer:       testKeyring(t),
		Solvers:      map[string]acmez.Solver{acme.ChallengeTypeHTTP01: challtestsrvHTTP01{testenv.ChallTestSrv{URL: s.ChallTestSrvURL}}},
		HTTPClient:   pebbleHTTPClient(t, s, nil),
		Profile:      testenv.PebbleShortProfile,
		PollInterval: 10 * time.Millisecond,
		PollTimeout:  30 * time.Second,
		Contact:      []string{"mailto:acmeissuer@certfleet.test"},
	}
	if mutate != nil {
		mutate(&cfg)
	}
	i, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

func pebbleRoots(t testing.TB, s testenv.Settings) *x509.CertPool {
	t.Helper()
	rootPEM, err := os.ReadFile(s.PebbleRoot)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		t.Fatalf("no root in %s", s.PebbleRoot)
	}
	return roots
}

// verify checks res's chain against Pebble's root for every name.
func verify(t testing.TB, s testenv.Settings, res *Result, names ...string) {
	t.Helper()
	inter := x509.NewCertPool()
	rest := res.ChainPEM
	first := true
	for {
		certs, r := parsePEMCert(rest)
		if certs == nil {
			break
		}
		rest = r
		if !first {
			inter.AddCert(certs)
		}
		first = false
	}
	for _, n := range names {
		if _, err := res.Leaf.Verify(x509.VerifyOptions{DNSName: n, Roots: pebbleRoots(t, s), Intermediates: inter}); err != nil {
			t.Fatalf("chain does not verify for %s: %v", n, err)
		}
	}
}

func parsePEMCert(data []byte) (*x509.Certificate, []byte) {
	for {
		b, rest := pemDecode(data)
		if b == nil {
			return nil, nil
		}
		if b.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, nil
			}
			return c, rest
		}
		data = rest
	}
}

var pemDecode = pem.Decode
