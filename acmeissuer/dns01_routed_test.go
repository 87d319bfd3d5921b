package acmeissuer

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libdns/libdns"
	"github.com/libdns/rfc2136"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"github.com/miekg/dns"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/dns01"
	"github.com/certfleet/certfleet/testenv"
)

// dns01Set loads the stack's DNS-01 configuration (BIND over RFC 2136)
// after tweak changes it; override replaces providers by name.
func dns01Set(t *testing.T, s testenv.Settings, tweak func(map[string]any), override map[string]dns01.Provider) *dns01.Set {
	t.Helper()
	cfg, err := s.DNS01Config()
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(cfg)
	}
	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dns01.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := dns01.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	set, err := dns01.New(c, override)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func routedIssuer(t *testing.T, s testenv.Settings, d *db.DB, set *dns01.Set) (*Issuer, *RoutedDNS01Solver, *DNS01Records) {
	t.Helper()
	records := NewDNS01Records(d, 0)
	solver := NewRoutedDNS01Solver(set, records)
	iss := newTestIssuer(t, s, d, func(c *Config) {
		c.Solvers = map[string]acmez.Solver{acme.ChallengeTypeDNS01: solver}
	})
	return iss, solver, records
}

// txtAt asks the stack's BIND for the TXT records of name.
func txtAt(t *testing.T, s testenv.Settings, name string) []string {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
	in, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, s.DNSUpdateServer)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, rr := range in.Answer {
		if x, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(x.Txt, ""))
		}
	}
	return out
}

// nothingLeft checks that no TXT record is left at names and no row in
// the table.
func nothingLeft(t *testing.T, s testenv.Settings, records *DNS01Records, names ...string) {
	t.Helper()
	for _, name := range names {
		if left := txtAt(t, s, name); len(left) != 0 {
			t.Errorf("TXT values left at %s: %v", name, left)
		}
	}
	if n, err := records.Count(context.Background(), ""); err != nil || n != 0 {
		t.Errorf("rows left: %d %v", n, err)
	}
}

// The stack's own key, as a customer's tooling would use it to create the
// delegating CNAME in its zone.
func stackProvider(t *testing.T, s testenv.Settings) *rfc2136.Provider {
	t.Helper()
	k, err := dns01.ReadTSIGKey(s.DNSTSIGKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	return &rfc2136.Provider{KeyName: k.Name, KeyAlg: k.Algorithm, Key: k.Secret, Server: s.DNSUpdateServer}
}

// A wildcard and its base name through RFC 2136 into BIND, validated by
// Pebble (which resolves through BIND): both values live on one TXT name
// while both authorizations are pending, and nothing is left afterwards,
// in DNS or in the table.
func TestRoutedDNS01Wildcard(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	iss, _, records := routedIssuer(t, s, d, dns01Set(t, s, nil, nil))
	base := "w" + randomSuffix() + "." + testenv.DNSZone
	res, err := iss.Obtain(ctx, Request{Tenant: "t", SANs: []string{base, "*." + base}})
	if err != nil {
		t.Fatal(err)
	}
	verify(t, s, res, base, "anything."+base)
	nothingLeft(t, s, records, "_acme-challenge."+base)
}

// A name whose _acme-challenge is a CNAME into the delegation zone (the
// customer's zone is certfleet-dns.test, for which the fleet has no
// provider): the record is written in acme-delegate.test, found there by
// Pebble through the CNAME, and removed.
func TestRoutedDNS01FollowsCNAMEIntoDelegationZone(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	set := dns01Set(t, s, func(c map[string]any) {
		c["zones"] = []any{map[string]any{"zone": testenv.DNSDelegationZone, "provider": "bind", "delegation": true}}
	}, nil)
	iss, _, records := routedIssuer(t, s, d, set)
	name := "c" + randomSuffix() + "." + testenv.DNSZone

	// Without the CNAME: refused, naming the CNAME to create.
	_, err := iss.Obtain(ctx, Request{Tenant: "t", SANs: []string{name}})
	target := dns01.DelegationTarget(name, testenv.DNSDelegationZone)
	cl := Classify(err)
	if cl.Class != Permanent || cl.ProblemType != "urn:certfleet:error:dns01NoProvider" || !strings.Contains(cl.Detail, "create _acme-challenge."+name+". CNAME "+target) {
		t.Fatalf("without a CNAME: %v %+v", err, cl)
	}

	// The customer creates it.
	cname := libdns.CNAME{Name: "_acme-challenge." + strings.TrimSuffix(name, "."+testenv.DNSZone), TTL: 5 * time.Second, Target: target}
	if _, err := stackProvider(t, s).AppendRecords(ctx, testenv.DNSZone+".", []libdns.Record{cname}); err != nil {
		t.Fatal(err)
	}
	res, err := iss.Obtain(ctx, Request{Tenant: "t", SANs: []string{name}})
	if err != nil {
		t.Fatal(err)
	}
	verify(t, s, res, name)
	nothingLeft(t, s, records, target)
}

// An update signed with a wrong key is refused by BIND: the order ends at
// once as permanent, dns01Provider, naming the provider, the record and
// the refusal; nothing is left in the table.
func TestRoutedDNS01WrongTSIGKey(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bad := filepath.Join(t.TempDir(), "wrong.key")
	key := dns01.TSIGKey{Name: testenv.DNSTSIGKeyName, Algorithm: "hmac-sha256", Secret: "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="}
	if err := os.WriteFile(bad, []byte(key.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	set := dns01Set(t, s, func(c map[string]any) {
		c["providers"].(map[string]any)["bind"].(map[string]any)["tsig_key_file"] = bad
	}, nil)
	iss, _, records := routedIssuer(t, s, d, set)
	name := "k" + randomSuffix() + "." + testenv.DNSZone
	_, err := iss.Obtain(ctx, Request{Tenant: "t", SANs: []string{name}})
	cl := Classify(err)
	var de *dns01.Error
	if !errors.As(err, &de) || cl.Class != Permanent || cl.ProblemType != "urn:certfleet:error:dns01Provider" {
		t.Fatalf("err = %v, %+v", err, cl)
	}
	for _, want := range []string{`provider "bind"`, "_acme-challenge." + name + ".", "bad authentication", "check them"} {
		if !strings.Contains(cl.Detail, want) {
			t.Errorf("detail %q does not say %q", cl.Detail, want)
		}
	}
	nothingLeft(t, s, records)
}

// lostWrites accepts records and writes nothing: a provider whose changes
// never reach the zone's authoritative servers.
type lostWrites struct{ dns01.Provider }

func (lostWrites) AppendRecords(_ context.Context, _ string, recs []libdns.Record) ([]libdns.Record, error) {
	return recs, nil
}

// A record that never propagates: the wait is bounded, the CA is never
// asked to look, and the error names the record, the zone and the server.
func TestRoutedDNS01NeverPropagates(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	set := dns01Set(t, s, func(c map[string]any) { c["propagation_timeout"] = "2s" },
		map[string]dns01.Provider{"bind": lostWrites{stackProvider(t, s)}})
	iss, _, _ := routedIssuer(t, s, d, set)
	name := "p" + randomSuffix() + "." + testenv.DNSZone
	t0 := time.Now()
	_, err := iss.Obtain(ctx, Request{Tenant: "t", SANs: []string{name}})
	cl := Classify(err)
	if cl.Class != Permanent || cl.ProblemType != "urn:certfleet:error:dns01Propagation" {
		t.Fatalf("err = %v, %+v", err, cl)
	}
	for _, want := range []string{"_acme-challenge." + name + ".", "zone " + testenv.DNSZone + ".", s.DNSUpdateServer + " (ns1." + testenv.DNSZone + ".): NXDOMAIN"} {
		if !strings.Contains(cl.Detail, want) {
			t.Errorf("detail %q does not name %q", cl.Detail, want)
		}
	}
	if el := time.Since(t0); el > 20*time.Second {
		t.Errorf("took %s with a 2s propagation bound", el)
	}
}

// A worker that died after writing a record leaves its row: once the row
// expires, RemoveExpired (any worker) removes the record and the row, and a
// worker presenting the same name removes it first.
func TestRoutedDNS01RemovesWhatACrashLeft(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	set := dns01Set(t, s, nil, nil)
	records := NewDNS01Records(d, 0)
	solver := NewRoutedDNS01Solver(set, records)

	leave := func(label, value string) dns01.Target {
		t.Helper()
		tg, err := set.Route(ctx, "t", "_acme-challenge."+label+"."+testenv.DNSZone+".")
		if err != nil {
			t.Fatal(err)
		}
		if err := records.Add(ctx, tg, value, label); err != nil {
			t.Fatal(err)
		}
		if err := set.Present(ctx, tg, value); err != nil {
			t.Fatal(err)
		}
		return tg
	}
	expire := func() {
		t.Helper()
		if _, err := d.Pool().Exec(ctx, `UPDATE acme_dns01_records SET expires_at = now() - INTERVAL '1 second'`); err != nil {
			t.Fatal(err)
		}
	}
	a := leave("crash-a"+randomSuffix(), "left-a")
	b := leave("crash-b"+randomSuffix(), "left-b")
	if n, err := solver.RemoveExpired(ctx, 10); err != nil || n != 0 {
		t.Fatalf("RemoveExpired before expiry = %d, %v", n, err)
	}
	expire()
	if n, err := solver.RemoveExpired(ctx, 1); err != nil || n != 1 {
		t.Fatalf("RemoveExpired = %d, %v", n, err)
	}
	if n, err := solver.RemoveExpired(ctx, 10); err != nil || n != 1 {
		t.Fatalf("RemoveExpired = %d, %v", n, err)
	}
	for _, tg := range []dns01.Target{a, b} {
		if left := txtAt(t, s, tg.Name); len(left) != 0 {
			t.Errorf("%s still has %v", tg.Name, left)
		}
	}

	// The next owner presenting the same name removes the expired record.
	label := "crash-c" + randomSuffix()
	c := leave(label, "left-c")
	expire()
	ch := acme.Challenge{Type: acme.ChallengeTypeDNS01, Identifier: acme.Identifier{Type: "dns", Value: label + "." + testenv.DNSZone}, Token: "tok", KeyAuthorization: "tok.thumb"}
	if err := solver.Present(WithTenant(ctx, "t"), ch); err != nil {
		t.Fatal(err)
	}
	if got := txtAt(t, s, c.Name); len(got) != 1 || got[0] != ch.DNS01KeyAuthorization() {
		t.Fatalf("TXT at %s = %v, want only the new value", c.Name, got)
	}
	if err := solver.Wait(ctx, ch); err != nil {
		t.Fatal(err)
	}
	if err := solver.CleanUp(ctx, ch); err != nil {
		t.Fatal(err)
	}
	nothingLeft(t, s, records, c.Name)
}

// A wildcard cannot be validated over HTTP-01: refused before any order.
func TestWildcardNeedsDNS01(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	iss := newTestIssuer(t, s, d, nil) // HTTP-01 only
	_, err := iss.Obtain(context.Background(), Request{SANs: []string{"x" + randomSuffix() + ".certfleet.test", "*.y.certfleet.test"}})
	if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), "wildcard *.y.certfleet.test can only be validated with dns-01") || Classify(err).Class != Permanent {
		t.Fatalf("err = %v", err)
	}
	if n := iss.registrations.Load(); n != 0 {
		t.Errorf("%d accounts registered for a refused request", n)
	}
}

// Pebble's validation is real: with the propagation check skipped, a
// record that never reached BIND is refused by the CA itself.
func TestRoutedDNS01PebbleLooksAtBIND(t *testing.T) {
	s := testenv.Require(t)
	if os.Getenv(testenv.EnvPebbleAlwaysValid) == "1" {
		t.Skip("Pebble accepts every challenge")
	}
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	set := dns01Set(t, s, func(c map[string]any) { c["skip_propagation_check"] = true; delete(c, "propagation_timeout") },
		map[string]dns01.Provider{"bind": lostWrites{stackProvider(t, s)}})
	iss, _, _ := routedIssuer(t, s, d, set)
	_, err := iss.Obtain(ctx, Request{Tenant: "t", SANs: []string{"v" + randomSuffix() + "." + testenv.DNSZone}})
	var p acme.Problem
	if cl := Classify(err); !errors.As(err, &p) || cl.Class != Permanent || p.Type != acme.ProblemTypeUnauthorized {
		t.Fatalf("err = %v, %+v; want the CA's unauthorized", err, cl)
	}
	t.Logf("the CA: %s", p.Detail)
}

// A resolver that does not answer is an outage, not a verdict: Retry, with
// the dns01Lookup problem type.
func TestClassifyDNS01LookupFailureRetries(t *testing.T) {
	c, err := dns01.ParseConfig([]byte(`{"resolvers": ["127.0.0.1:1"], "query_timeout": "200ms",
		"providers": {"p": {"type": "cloudflare", "api_token_file": "unused"}}, "default_provider": "p"}`))
	if err != nil {
		t.Fatal(err)
	}
	set, err := dns01.New(c, map[string]dns01.Provider{"p": lostWrites{}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = set.Route(context.Background(), "", "_acme-challenge.a.example.")
	if cl := Classify(err); cl.Class != Retry || cl.ProblemType != "urn:certfleet:error:dns01Lookup" || !strings.Contains(cl.Detail, "127.0.0.1:1") {
		t.Fatalf("Classify(%v) = %+v", err, cl)
	}
}
