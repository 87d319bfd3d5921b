package dns01

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libdns/cloudflare"
	"github.com/libdns/rfc2136"
	"github.com/libdns/route53"
	"github.com/miekg/dns"
)

// zoneData: example.net with a delegated sub-zone shop.example.net, and a
// delegation zone acme.example.org that example.net names CNAME into.
func zoneData() []string {
	return []string{
		"example.net. 60 IN SOA ns1.example.net. hostmaster.example.net. 1 60 60 3600 1",
		"example.net. 60 IN NS ns1.example.net.",
		"ns1.example.net. 60 IN A 127.0.0.1",
		"www.example.net. 60 IN A 127.0.0.1",
		"shop.example.net. 60 IN SOA ns1.example.net. hostmaster.example.net. 1 60 60 3600 1",
		"shop.example.net. 60 IN NS ns1.example.net.",
		"acme.example.org. 60 IN SOA ns1.example.net. hostmaster.example.net. 1 60 60 3600 1",
		"acme.example.org. 60 IN NS ns1.example.net.",
		"_acme-challenge.cust.example.net. 60 IN CNAME hop.example.net.",
		"hop.example.net. 60 IN CNAME abc.acme.example.org.",
		"_acme-challenge.loop.example.net. 60 IN CNAME loop2.example.net.",
		"loop2.example.net. 60 IN CNAME _acme-challenge.loop.example.net.",
	}
}

func testConfig(f *fakeDNS, extra string) Config {
	js := fmt.Sprintf(`{
		"resolvers": [%q], "nameserver_port": %d,
		"propagation_timeout": "1500ms", "propagation_interval": "100ms", "query_timeout": "1s",
		"providers": {
			"lab": {"type": "rfc2136", "server": "127.0.0.1:1", "tsig_key_file": "unused"},
			"delegate": {"type": "rfc2136", "server": "127.0.0.1:1", "tsig_key_file": "unused"},
			"tenantp": {"type": "rfc2136", "server": "127.0.0.1:1", "tsig_key_file": "unused"}
		},
		"zones": [
			{"zone": "example.net", "provider": "lab"},
			{"zone": "acme.example.org", "provider": "delegate", "delegation": true}
		],
		"tenants": {"gamma": "tenantp"}%s
	}`, f.addr, f.port, extra)
	c, err := ParseConfig([]byte(js))
	if err != nil {
		panic(err)
	}
	return c
}

func testSet(t *testing.T, f *fakeDNS, extra string) (*Set, map[string]*fakeProvider) {
	t.Helper()
	ps := map[string]*fakeProvider{"lab": {dns: f}, "delegate": {dns: f}, "tenantp": {dns: f}}
	override := map[string]Provider{}
	for k, v := range ps {
		override[k] = v
	}
	s, err := New(testConfig(f, extra), override)
	if err != nil {
		t.Fatal(err)
	}
	return s, ps
}

func TestFindZoneBySOA(t *testing.T) {
	f := newFakeDNS(t, zoneData()...)
	r := &Resolver{Servers: []string{f.addr}, Timeout: time.Second}
	ctx := context.Background()
	for name, want := range map[string]string{
		"_acme-challenge.www.example.net.":   "example.net.",
		"_acme-challenge.example.net":        "example.net.",
		"_acme-challenge.a.shop.example.net": "shop.example.net.", // a delegated sub-zone, not the registered domain
		"x.acme.example.org.":                "acme.example.org.",
	} {
		got, err := r.FindZone(ctx, name)
		if err != nil || got != want {
			t.Errorf("FindZone(%s) = %q, %v; want %q", name, got, err, want)
		}
	}
	if _, err := r.FindZone(ctx, "nowhere.invalid."); err == nil || !strings.Contains(err.Error(), "no zone holds nowhere.invalid.") {
		t.Errorf("FindZone of a name without zone: %v", err)
	}
}

func TestFollowCNAME(t *testing.T) {
	f := newFakeDNS(t, zoneData()...)
	r := &Resolver{Servers: []string{f.addr}, Timeout: time.Second}
	ctx := context.Background()
	final, chain, err := r.FollowCNAME(ctx, "_acme-challenge.cust.example.net.")
	if err != nil || final != "abc.acme.example.org." || len(chain) != 3 {
		t.Fatalf("FollowCNAME = %q %v %v", final, chain, err)
	}
	final, chain, err = r.FollowCNAME(ctx, "_acme-challenge.www.example.net")
	if err != nil || final != "_acme-challenge.www.example.net." || len(chain) != 1 {
		t.Fatalf("FollowCNAME without CNAME = %q %v %v", final, chain, err)
	}
	if _, _, err := r.FollowCNAME(ctx, "_acme-challenge.loop.example.net."); err == nil || !strings.Contains(err.Error(), "CNAME loop") {
		t.Fatalf("loop: %v", err)
	}
}

func TestNameservers(t *testing.T) {
	f := newFakeDNS(t, zoneData()...)
	r := &Resolver{Servers: []string{f.addr}, NameserverPort: 5353, Timeout: time.Second}
	ns, err := r.Nameservers(context.Background(), "example.net")
	if err != nil || len(ns) != 1 || ns[0].Addr != "127.0.0.1:5353" || ns[0].Host != "ns1.example.net." {
		t.Fatalf("Nameservers = %v, %v", ns, err)
	}
	if _, err := r.Nameservers(context.Background(), "www.example.net"); err == nil || !strings.Contains(err.Error(), "no authoritative server") {
		t.Fatalf("a name without NS: %v", err)
	}
}

func TestRoutePicksProviderByZoneTenantDefault(t *testing.T) {
	f := newFakeDNS(t, append(zoneData(), "other.example.com. 60 IN SOA ns1.example.net. h.example.net. 1 60 60 3600 1")...)
	ctx := context.Background()
	s, _ := testSet(t, f, "")

	tg, err := s.Route(ctx, "alpha", "_acme-challenge.www.example.net.")
	if err != nil || tg.ProviderName != "lab" || tg.Zone != "example.net." || tg.Name != "_acme-challenge.www.example.net." {
		t.Fatalf("zone rule: %+v %v", tg, err)
	}
	// Delegated through two CNAMEs into the delegation zone.
	tg, err = s.Route(ctx, "alpha", "_acme-challenge.cust.example.net.")
	if err != nil || tg.ProviderName != "delegate" || tg.Zone != "acme.example.org." || tg.Name != "abc.acme.example.org." {
		t.Fatalf("CNAME delegation: %+v %v", tg, err)
	}
	// A zone no rule covers: the tenant's provider.
	tg, err = s.Route(ctx, "gamma", "_acme-challenge.other.example.com.")
	if err != nil || tg.ProviderName != "tenantp" {
		t.Fatalf("tenant rule: %+v %v", tg, err)
	}
	// No tenant rule and no default: refused, with the CNAME to create.
	_, err = s.Route(ctx, "alpha", "_acme-challenge.other.example.com.")
	var de *Error
	if !errors.As(err, &de) || de.Kind != KindNoProvider || !de.Permanent() ||
		!strings.Contains(err.Error(), "create _acme-challenge.other.example.com. CNAME "+DelegationTarget("other.example.com", "acme.example.org")) {
		t.Fatalf("no provider: %v", err)
	}
	if de.ProblemType() != "urn:certfleet:error:dns01NoProvider" {
		t.Fatalf("problem type %s", de.ProblemType())
	}
	// With a default.
	s2, _ := testSet(t, f, `, "default_provider": "lab"`)
	if tg, err := s2.Route(ctx, "alpha", "_acme-challenge.other.example.com."); err != nil || tg.ProviderName != "lab" {
		t.Fatalf("default: %+v %v", tg, err)
	}
	// A CNAME loop is a permanent lookup failure.
	_, err = s.Route(ctx, "alpha", "_acme-challenge.loop.example.net.")
	if !errors.As(err, &de) || de.Kind != KindLookup || !de.Permanent() {
		t.Fatalf("loop: %v", err)
	}
}

func TestDelegationTarget(t *testing.T) {
	a := DelegationTarget("Shop.Example.com.", "acme.example.org")
	if a != DelegationTarget("shop.example.com", "acme.example.org.") || !strings.HasSuffix(a, ".acme.example.org.") || len(strings.Split(a, ".")[0]) != 26 {
		t.Fatalf("DelegationTarget = %q", a)
	}
	if a == DelegationTarget("shop2.example.com", "acme.example.org") {
		t.Fatal("two domains share a target")
	}
}

func TestPresentWaitRemove(t *testing.T) {
	f := newFakeDNS(t, zoneData()...)
	ctx := context.Background()
	s, ps := testSet(t, f, "")
	tg, err := s.Route(ctx, "", "_acme-challenge.cust.example.net.")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Present(ctx, tg, "value-1"); err != nil {
		t.Fatal(err)
	}
	if got := ps["delegate"].added; len(got) != 1 || got[0] != "abc.acme.example.org. value-1" {
		t.Fatalf("written: %v", got)
	}
	if err := s.WaitPropagated(ctx, tg, "value-1"); err != nil {
		t.Fatalf("WaitPropagated: %v", err)
	}
	if err := s.Remove(ctx, tg, "value-1"); err != nil {
		t.Fatal(err)
	}
	if ok, why, err := s.Resolver().HasTXT(ctx, f.addr, tg.Name, "value-1"); ok || err != nil {
		t.Fatalf("still there after Remove: %v %q %v", ok, why, err)
	}
}

func TestWaitPropagatedTimesOutNamingRecordAndServers(t *testing.T) {
	f := newFakeDNS(t, zoneData()...)
	ctx := context.Background()
	s, ps := testSet(t, f, "")
	ps["lab"].lost = true
	tg, err := s.Route(ctx, "", "_acme-challenge.www.example.net.")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Present(ctx, tg, "never-seen"); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	err = s.WaitPropagated(ctx, tg, "never-seen")
	var de *Error
	if !errors.As(err, &de) || de.Kind != KindPropagation || !de.Permanent() {
		t.Fatalf("WaitPropagated = %v", err)
	}
	if el := time.Since(t0); el < time.Second || el > 5*time.Second {
		t.Fatalf("waited %s for a 1.5s bound", el)
	}
	for _, want := range []string{"_acme-challenge.www.example.net.", "zone example.net.", "bound of 1.5s", fmt.Sprintf("127.0.0.1:%d (ns1.example.net.): NXDOMAIN", f.port)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if de.ProblemType() != "urn:certfleet:error:dns01Propagation" {
		t.Errorf("problem type %s", de.ProblemType())
	}
}

func TestProviderErrorsPermanentOnlyForRefusals(t *testing.T) {
	f := newFakeDNS(t, zoneData()...)
	ctx := context.Background()
	s, ps := testSet(t, f, "")
	tg, err := s.Route(ctx, "", "_acme-challenge.www.example.net.")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		err       error
		permanent bool
	}{
		{fmt.Errorf(`dns response error code "NOTAUTH" (9)`), true},
		{fmt.Errorf(`dns response error code "REFUSED" (5)`), true},
		{dns.ErrSig, true},
		{fmt.Errorf("got error status: HTTP 403: [{Code:10000 Message:Authentication error}]"), true},
		{fmt.Errorf("dial tcp 127.0.0.1:53: connect: connection refused"), false},
		{context.DeadlineExceeded, false},
		{fmt.Errorf(`dns response error code "SERVFAIL" (2)`), false},
	} {
		ps["lab"].err = tc.err
		err := s.Present(ctx, tg, "v")
		var de *Error
		if !errors.As(err, &de) || de.Kind != KindProvider || de.Permanent() != tc.permanent {
			t.Errorf("%v: got %v (permanent %v)", tc.err, err, de != nil && de.Permanent())
		}
		if !strings.Contains(err.Error(), `provider "lab" failed to write TXT record _acme-challenge.www.example.net.`) {
			t.Errorf("error %q", err)
		}
	}
}

func TestParseConfigErrors(t *testing.T) {
	for name, tc := range map[string]struct{ js, want string }{
		"unknown field":   {`{"providers": {"a": {"type": "rfc2136", "server": "h:53", "tsig_key_file": "k"}}, "bogus": 1}`, `unknown field "bogus"`},
		"no providers":    {`{}`, "no providers"},
		"unknown type":    {`{"providers": {"a": {"type": "bind"}}}`, `provider "a": unknown type "bind"`},
		"missing key":     {`{"providers": {"a": {"type": "rfc2136", "server": "h:53"}}}`, "type rfc2136 needs tsig_key_file"},
		"server no port":  {`{"providers": {"a": {"type": "rfc2136", "server": "h", "tsig_key_file": "k"}}}`, `server "h": want host:port`},
		"foreign field":   {`{"providers": {"a": {"type": "cloudflare", "api_token_file": "t", "region": "x"}}}`, "region does not apply to type cloudflare"},
		"r53 half keys":   {`{"providers": {"a": {"type": "route53", "access_key_id": "AKIA"}}}`, "access_key_id and secret_access_key_file go together"},
		"unknown ref":     {`{"providers": {"a": {"type": "cloudflare", "api_token_file": "t"}}, "zones": [{"zone": "x.com", "provider": "b"}]}`, `names provider "b"`},
		"tenant ref":      {`{"providers": {"a": {"type": "cloudflare", "api_token_file": "t"}}, "tenants": {"t1": "zz"}}`, `tenants["t1"] names provider "zz"`},
		"duplicate zone":  {`{"providers": {"a": {"type": "cloudflare", "api_token_file": "t"}}, "zones": [{"zone": "x.com", "provider": "a"}, {"zone": "X.com.", "provider": "a"}]}`, "zone x.com. listed twice"},
		"bad duration":    {`{"providers": {"a": {"type": "cloudflare", "api_token_file": "t"}}, "ttl": 60}`, "want a duration string"},
		"resolver port":   {`{"providers": {"a": {"type": "cloudflare", "api_token_file": "t"}}, "resolvers": ["1.1.1.1"]}`, `resolver "1.1.1.1": want host:port`},
		"two values":      {`{"providers": {"a": {"type": "cloudflare", "api_token_file": "t"}}} {}`, "more than one JSON value"},
		"short ttl":       {`{"providers": {"a": {"type": "cloudflare", "api_token_file": "t"}}, "ttl": "10ms"}`, "want at least 1s"},
		"default unknown": {`{"providers": {"a": {"type": "cloudflare", "api_token_file": "t"}}, "default_provider": "q"}`, `default_provider names provider "q"`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.js))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func writeSecret(t *testing.T, dir, name, data string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// Cloudflare and Route 53 cannot be reached from here: their wiring
// (configuration, credentials from files, the provider built) is what is
// tested; the generic provider path runs against RFC 2136 (testenv's BIND).
func TestLoadBuildsEveryProviderTypeFromFiles(t *testing.T) {
	dir := t.TempDir()
	key := TSIGKey{Name: "certfleet-update", Algorithm: "hmac-sha256", Secret: "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="}
	writeSecret(t, dir, "lab.key", "# made by tsig-keygen\n"+key.String(), 0o600)
	writeSecret(t, dir, "cf.token", "cf-token-123\n", 0o600)
	writeSecret(t, dir, "cf-zone.token", "cf-zone-456", 0o400)
	writeSecret(t, dir, "aws.secret", "aws-secret\n", 0o600)
	writeSecret(t, dir, "aws.session", "aws-session", 0o600)
	conf := writeSecret(t, dir, "dns01.json", `{
		"resolvers": ["127.0.0.1:53"],
		"providers": {
			"lab": {"type": "rfc2136", "server": "127.0.0.1:8054", "tsig_key_file": "lab.key"},
			"cf": {"type": "cloudflare", "api_token_file": "cf.token", "zone_token_file": "cf-zone.token"},
			"aws": {"type": "route53", "region": "eu-west-1", "profile": "ops", "hosted_zone_id": "Z123",
				"access_key_id": "AKIAEXAMPLE", "secret_access_key_file": "aws.secret", "session_token_file": "aws.session"},
			"awsdefault": {"type": "route53", "region": "us-east-1"}
		},
		"zones": [{"zone": "example.net", "provider": "lab"}],
		"tenants": {"t1": "cf"},
		"default_provider": "aws"
	}`, 0o644)
	s, err := Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	lab, _ := s.Provider("lab")
	if p, ok := lab.(*rfc2136.Provider); !ok || p.KeyName != key.Name || p.KeyAlg != key.Algorithm || p.Key != key.Secret || p.Server != "127.0.0.1:8054" {
		t.Errorf("rfc2136 provider: %#v", lab)
	}
	cf, _ := s.Provider("cf")
	if p, ok := cf.(*cloudflare.Provider); !ok || p.APIToken != "cf-token-123" || p.ZoneToken != "cf-zone-456" {
		t.Errorf("cloudflare provider: %T", cf)
	}
	aws, _ := s.Provider("aws")
	if p, ok := aws.(*route53.Provider); !ok || p.Region != "eu-west-1" || p.Profile != "ops" || p.HostedZoneID != "Z123" ||
		p.AccessKeyId != "AKIAEXAMPLE" || p.SecretAccessKey != "aws-secret" || p.SessionToken != "aws-session" {
		t.Errorf("route53 provider: %T", aws)
	}
	def, _ := s.Provider("awsdefault")
	if p, ok := def.(*route53.Provider); !ok || p.AccessKeyId != "" || p.SecretAccessKey != "" || p.Region != "us-east-1" {
		t.Errorf("route53 default-chain provider: %T", def)
	}
	if s.TTL() != time.Minute {
		t.Errorf("TTL default %s", s.TTL())
	}

	// A credential file others may read is refused, naming it.
	if err := os.Chmod(filepath.Join(dir, "cf.token"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(conf); err == nil || !strings.Contains(err.Error(), "cf.token has mode 0644") {
		t.Fatalf("readable token: %v", err)
	}
}

func TestParseTSIGKey(t *testing.T) {
	// tsig-keygen's output.
	k, err := ParseTSIGKey("key \"certfleet-update\" {\n\talgorithm hmac-sha256;\n\tsecret \"5TVdFZ0Q3n1pMhxZfLkqf6Jf8cI1u4RKPJ4ksRg0L2Y=\";\n};\n")
	if err != nil || k.Name != "certfleet-update" || k.Algorithm != "hmac-sha256" || k.Secret != "5TVdFZ0Q3n1pMhxZfLkqf6Jf8cI1u4RKPJ4ksRg0L2Y=" {
		t.Fatalf("ParseTSIGKey = %+v, %v", k, err)
	}
	if back, err := ParseTSIGKey(k.String()); err != nil || back != k {
		t.Fatalf("round trip = %+v, %v", back, err)
	}
	for text, want := range map[string]string{
		"":                            "no key statement",
		`key "a" { secret "YQ=="; };`: "has no algorithm",
		`key "a" { algorithm hmac-md5; secret "YQ=="; };`:                                                       "is not one of",
		`key "a" { algorithm hmac-sha256; };`:                                                                   "has no secret",
		`key "a" { algorithm hmac-sha256; secret "Y"; };`:                                                       "not base64",
		`key "a" { algorithm hmac-sha256; secret "YQ=="; }; key "b" { algorithm hmac-sha256; secret "YQ=="; };`: "2 key statements",
	} {
		if _, err := ParseTSIGKey(text); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseTSIGKey(%q) = %v, want %q", text, err, want)
		}
	}
}
