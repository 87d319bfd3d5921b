package acmeissuer

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libdns/libdns"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/names"
	"github.com/certfleet/certfleet/seal"
	"github.com/certfleet/certfleet/testenv"
)

// A certificate from Pebble over HTTP-01 (challtestsrv): verifies for its
// names, carries the named profile, serial, validity and ARI id; its key is
// the order's and seals; a renewal with Replaces succeeds.
func TestObtainAndRenew(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	iss := newTestIssuer(t, s, d, func(c *Config) { c.Profile = "" })
	names := []string{"o-" + randomSuffix() + ".certfleet.test"}
	res, err := iss.Obtain(ctx, Request{Tenant: "t", SANs: names, Profile: testenv.PebbleProfile, KeyType: RSA2048})
	if err != nil {
		t.Fatal(err)
	}
	verify(t, s, res, names...)
	if life := res.NotAfter.Sub(res.NotBefore); life < 80*24*time.Hour {
		t.Errorf("lifetime %v; want the %q profile's 90 days", life, testenv.PebbleProfile)
	}
	if _, ok := res.PrivateKey.(*rsa.PrivateKey); !ok {
		t.Errorf("key type %T; want RSA", res.PrivateKey)
	}
	if res.Serial == "" || res.Serial != res.Leaf.SerialNumber.Text(16) || res.ARICertID == "" || res.AccountURL == "" {
		t.Errorf("result metadata: %v serial %q ari %q account %q", res, res.Serial, res.ARICertID, res.AccountURL)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		if out := fmt.Sprintf(verb, res); len(out) > 300 {
			t.Errorf("%s of Result is %d bytes (key printed?): %.200s", verb, len(out), out)
		}
	}
	aad := seal.AAD(seal.PurposeCertKey, names[0])
	blob, err := seal.SealPrivateKey(ctx, testKeyring(t), res.PrivateKey, aad)
	if err != nil {
		t.Fatal(err)
	}
	back, err := seal.OpenPrivateKey(ctx, testKeyring(t), blob, aad)
	if err != nil || !back.Public().(*rsa.PublicKey).Equal(res.Leaf.PublicKey) {
		t.Fatalf("sealed key does not open to the certificate's key: %v", err)
	}

	renewed, err := iss.Obtain(ctx, Request{Tenant: "t", SANs: names, Profile: testenv.PebbleShortProfile, Replaces: res.Leaf})
	if err != nil {
		t.Fatalf("renewal with replaces: %v", err)
	}
	verify(t, s, renewed, names...)
	if renewed.Serial == res.Serial || renewed.ARICertID == res.ARICertID {
		t.Error("renewal returned the old certificate")
	}
	if _, ok := renewed.PrivateKey.(*ecdsa.PrivateKey); !ok {
		t.Errorf("default key type %T; want ECDSA", renewed.PrivateKey)
	}
	if life := renewed.NotAfter.Sub(renewed.NotBefore); life > 7*24*time.Hour {
		t.Errorf("renewal lifetime %v; want the short profile", life)
	}
}

// Malformed requests fail before anything is ordered, as Permanent.
func TestObtainRejectsInvalidRequests(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	noDefault := newTestIssuer(t, s, d, func(c *Config) { c.Profile = "" })
	name := "x-" + randomSuffix() + ".certfleet.test"
	cases := []struct {
		name string
		req  Request
	}{
		{"no SANs", Request{Profile: testenv.PebbleProfile}},
		{"duplicate SAN", Request{SANs: []string{name, name}, Profile: testenv.PebbleProfile}},
		{"unknown key type", Request{SANs: []string{name}, Profile: testenv.PebbleProfile, KeyType: "dsa"}},
		{"unknown profile", Request{SANs: []string{name}, Profile: "forever"}},
		{"no solver", Request{SANs: []string{name}, Profile: testenv.PebbleProfile, Challenges: []string{acme.ChallengeTypeTLSALPN01}}},
	}
	for _, c := range cases {
		_, err := noDefault.Obtain(ctx, c.req)
		if !errors.Is(err, ErrInvalidRequest) || Classify(err).Class != Permanent {
			t.Errorf("%s: err = %v; want ErrInvalidRequest", c.name, err)
		}
	}
	var n int
	if err := d.Pool().QueryRow(ctx, `SELECT count(*) FROM acme_accounts`).Scan(&n); err != nil || n != 0 {
		t.Errorf("accounts created by invalid requests: %d, %v", n, err)
	}
}

// A request that names no profile, to an issuer without a default profile,
// against a CA that offers profiles (Pebble: default and shortlived) is
// ordered without one and the CA applies its default: the contract's "absent
// for the CA's default". Pebble picks one of its profiles at random, so the
// certificate has the lifetime of either.
func TestObtainWithoutProfile(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tr, err := s.ACMETransport()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.CloseIdleConnections)
	rec := &newOrderRecorder{next: tr}
	iss := newTestIssuer(t, s, d, func(c *Config) {
		c.Profile = ""
		c.HTTPClient = &http.Client{Timeout: 30 * time.Second, Transport: rec}
	})
	dir, err := iss.client.GetDirectory(ctx)
	if err != nil || dir.Meta == nil || len(dir.Meta.Profiles) < 2 {
		t.Fatalf("Pebble's directory offers profiles %v, %v; want default and shortlived", dir.Meta, err)
	}
	rec.newOrder = dir.NewOrder
	name := "noprofile-" + randomSuffix() + ".certfleet.test"
	res, err := iss.Obtain(ctx, Request{Tenant: "t", SANs: []string{name}})
	if err != nil {
		t.Fatalf("a request without a profile: %v", err)
	}
	verify(t, s, res, name)
	payloads := rec.payloads()
	if len(payloads) != 1 {
		t.Fatalf("%d newOrder requests; want 1", len(payloads))
	}
	if _, named := payloads[0]["profile"]; named {
		t.Errorf("newOrder payload %v names a profile; want none", payloads[0])
	}
	life := res.NotAfter.Sub(res.NotBefore)
	near := func(d time.Duration) bool { return life > d-2*time.Hour && life < d+2*time.Hour }
	if !near(90*24*time.Hour) && !near(6*24*time.Hour) {
		t.Errorf("lifetime %v; want one of Pebble's profiles (90 days or 6 days)", life)
	}
}

// newOrderRecorder keeps the JWS payloads POSTed to newOrder.
type newOrderRecorder struct {
	next     http.RoundTripper
	newOrder string
	mu       sync.Mutex
	seen     []map[string]any
}

func (r *newOrderRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	if r.newOrder != "" && req.Method == http.MethodPost && req.URL.String() == r.newOrder && req.Body != nil {
		body, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		var jws struct {
			Payload string `json:"payload"`
		}
		payload := map[string]any{}
		if json.Unmarshal(body, &jws) == nil {
			if raw, err := base64.RawURLEncoding.DecodeString(jws.Payload); err == nil {
				_ = json.Unmarshal(raw, &payload)
			}
		}
		r.mu.Lock()
		r.seen = append(r.seen, payload)
		r.mu.Unlock()
	}
	return r.next.RoundTrip(req)
}

func (r *newOrderRecorder) payloads() []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]map[string]any(nil), r.seen...)
}

// A challenge nobody answers ends as a Permanent failure carrying the ACME
// problem type.
func TestObtainFailedValidationIsPermanent(t *testing.T) {
	s := testenv.Require(t)
	if os.Getenv(testenv.EnvPebbleAlwaysValid) == "1" {
		t.Skip("Pebble accepts every challenge")
	}
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	iss := newTestIssuer(t, s, d, func(c *Config) {
		c.Solvers = map[string]acmez.Solver{acme.ChallengeTypeHTTP01: HTTP01Solver{NewChallengeStore(d, 0)}} // nobody serves it on :5002
	})
	_, err := iss.Obtain(ctx, Request{SANs: []string{"unsolved-" + randomSuffix() + ".certfleet.test"}})
	cl := Classify(err)
	if err == nil || cl.Class != Permanent || cl.ProblemType == "" {
		t.Fatalf("err = %v, %+v; want Permanent with a problem type", err, cl)
	}
	t.Logf("problem: %s: %s", cl.ProblemType, cl.Detail)
}

// DNS-01 end to end: Pebble resolves through testenv's BIND, which forwards
// names outside its test zones to challtestsrv, which the ChallTestSrvDNS
// provider fills; a wildcard and its base name share one TXT
// name, so removing one value must keep the other.
func TestObtainDNS01Wildcard(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	provider := &ChallTestSrvDNS{URL: s.ChallTestSrvURL}
	iss := newTestIssuer(t, s, d, func(c *Config) {
		c.Solvers = map[string]acmez.Solver{acme.ChallengeTypeDNS01: DNS01Solver{Provider: provider}}
	})
	base := "w-" + randomSuffix() + ".certfleet.test"
	names := []string{base, "*." + base}
	res, err := iss.Obtain(ctx, Request{SANs: names, Challenges: []string{acme.ChallengeTypeDNS01}})
	if err != nil {
		t.Fatal(err)
	}
	verify(t, s, res, base, "anything."+base)
	provider.mu.Lock()
	left := len(provider.values)
	provider.mu.Unlock()
	if left != 0 {
		t.Errorf("TXT values left after cleanup: %d", left)
	}
}

func TestChallTestSrvDNSKeepsOtherValues(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p := &ChallTestSrvDNS{URL: s.ChallTestSrvURL}
	zone := "k-" + randomSuffix() + ".certfleet.test."
	recs := []libdns.Record{libdns.TXT{Name: "_acme-challenge", Text: "one"}, libdns.TXT{Name: "_acme-challenge", Text: "two"}}
	if _, err := p.AppendRecords(ctx, zone, recs); err != nil {
		t.Fatal(err)
	}
	if _, err := p.DeleteRecords(ctx, zone, recs[:1]); err != nil {
		t.Fatal(err)
	}
	if got := p.values["_acme-challenge."+zone]; len(got) != 1 || got[0] != "two" {
		t.Errorf("values = %v; want [two]", got)
	}
	if _, err := p.AppendRecords(ctx, zone, []libdns.Record{libdns.Address{Name: "x"}}); err == nil {
		t.Error("non-TXT record accepted")
	}
	if _, err := p.DeleteRecords(ctx, zone, []libdns.Record{libdns.TXT{Name: "_acme-challenge"}}); err != nil || len(p.values) != 0 {
		t.Errorf("delete all: %v, left %v", err, p.values)
	}
	bad := &ChallTestSrvDNS{URL: "http://127.0.0.1:1"}
	if _, err := bad.AppendRecords(ctx, zone, recs); err == nil {
		t.Error("unreachable challtestsrv: no error")
	}
}

func TestRegisteredDomainZone(t *testing.T) {
	for in, want := range map[string]string{
		"_acme-challenge.www.example.com.":  "example.com.",
		"_acme-challenge.a.b.example.co.uk": "example.co.uk.",
		"_acme-challenge.x.certfleet.test.": "certfleet.test.",
	} {
		if got, err := RegisteredDomainZone(in); err != nil || got != want {
			t.Errorf("RegisteredDomainZone(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// Throughput at testenv.MaxConcurrentOrders in flight against Pebble with
// real HTTP-01 validation through challtestsrv. It reports certs/s; run with
// -v to see it.
func TestObtainThroughput(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	s := testenv.Require(t)
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	iss := newTestIssuer(t, s, d, nil)
	if _, err := iss.Account(ctx, "bench"); err != nil {
		t.Fatal(err)
	}
	const total, concurrency = 64, testenv.MaxConcurrentOrdersPerPackage
	var next atomic.Int64
	var failures atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= total {
				name := "tp-" + randomSuffix() + ".certfleet.test"
				if _, err := iss.Obtain(ctx, Request{Tenant: "bench", SANs: []string{name}}); err != nil {
					failures.Add(1)
					t.Errorf("%s: %v", name, err)
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	t.Logf("%d certificates at concurrency %d in %v: %.1f certs/s (%d failures)", total, concurrency, el.Round(time.Millisecond), float64(total)/el.Seconds(), failures.Load())
}

// Identifiers are package names' to judge: an IP address, a name under a
// special-use TLD the lab policy does not list, a name not in
// canonical form or a repeated name is an invalid request before anything
// goes to the CA, and an IP address says why.
func TestObtainChecksSANsWithNames(t *testing.T) {
	i := &Issuer{cfg: Config{Solvers: map[string]acmez.Solver{acme.ChallengeTypeHTTP01: HTTP01Solver{}, acme.ChallengeTypeDNS01: DNS01Solver{}}}}
	for _, sans := range [][]string{{"a.example.com", "192.0.2.1"}, {"2001:db8::1"}, {"A.example.com"}, {"a.example.com", "a.example.com"}, nil,
		{"a.invalid"}, {"x.onion"}, {"printer.local"}, {"host.internal"}, {"a.alt"}, {"a.localhost"}, {"xn--ls8h.example.com"}} {
		_, err := i.check(Request{SANs: sans})
		if !errors.Is(err, ErrInvalidRequest) || Classify(err).Class != Permanent {
			t.Errorf("SANs %q: err = %v; want ErrInvalidRequest", sans, err)
		}
	}
	_, err := i.check(Request{SANs: []string{"192.0.2.1"}})
	if !errors.Is(err, names.ErrIPAddress) || !strings.Contains(err.Error(), "IP address identifiers are not supported: ") {
		t.Errorf("IP SAN: %v; want names' reason", err)
	}
	if _, err := i.check(Request{SANs: []string{"a.example.com", "*.example.com"}}); err != nil {
		t.Errorf("canonical names: %v", err)
	}
}
