package caproxy

import (
	"encoding/base64"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func TestGCRADecide(t *testing.T) {
	twoPerHour := Limit{Count: 2, Period: time.Hour} // one every 30m, burst 2
	threePerMinute := Limit{Count: 3, Period: time.Minute}
	for _, tc := range []struct {
		name    string
		limit   Limit
		tat     time.Time
		allowed bool
		newTAT  time.Time
		retryIn time.Duration
	}{
		{"never used", twoPerHour, time.Time{}, true, t0.Add(30 * time.Minute), 0},
		{"tat in the past is a full bucket", twoPerHour, t0.Add(-5 * time.Hour), true, t0.Add(30 * time.Minute), 0},
		{"tat now", twoPerHour, t0, true, t0.Add(30 * time.Minute), 0},
		{"partly spent", twoPerHour, t0.Add(10 * time.Minute), true, t0.Add(40 * time.Minute), 0},
		{"one spent", twoPerHour, t0.Add(30 * time.Minute), true, t0.Add(time.Hour), 0},
		{"one nanosecond short", twoPerHour, t0.Add(30*time.Minute + time.Nanosecond), false, t0.Add(30*time.Minute + time.Nanosecond), time.Nanosecond},
		{"burst spent, partly refilled", twoPerHour, t0.Add(45 * time.Minute), false, t0.Add(45 * time.Minute), 15 * time.Minute},
		{"burst spent", twoPerHour, t0.Add(time.Hour), false, t0.Add(time.Hour), 30 * time.Minute},
		{"fits exactly", threePerMinute, t0.Add(40 * time.Second), true, t0.Add(time.Minute), 0},
		{"fractional wait", threePerMinute, t0.Add(55 * time.Second), false, t0.Add(55 * time.Second), 15 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, tat, retry := gcraDecide(tc.limit, tc.tat, t0)
			if ok != tc.allowed || !tat.Equal(tc.newTAT) || retry != tc.retryIn {
				t.Errorf("gcraDecide = %v, %v, %v; want %v, %v, %v", ok, tat.Sub(t0), retry, tc.allowed, tc.newTAT.Sub(t0), tc.retryIn)
			}
		})
	}
}

// Spending a bucket over time: a burst of Count, then one every Period/Count,
// and a refused request spends nothing.
func TestGCRASequence(t *testing.T) {
	l := Limit{Count: 2, Period: time.Hour}
	var tat time.Time
	step := func(now time.Time, wantOK bool, wantRetry time.Duration) {
		t.Helper()
		ok, newTAT, retry := gcraDecide(l, tat, now)
		if ok != wantOK || retry != wantRetry {
			t.Fatalf("at +%v: allowed %v retry %v; want %v %v", now.Sub(t0), ok, retry, wantOK, wantRetry)
		}
		if ok {
			tat = newTAT // a refusal spends nothing: the caller keeps the TAT
		}
	}
	step(t0, true, 0)
	step(t0, true, 0)
	step(t0, false, 30*time.Minute)
	step(t0.Add(10*time.Minute), false, 20*time.Minute)
	step(t0.Add(30*time.Minute), true, 0)
	step(t0.Add(30*time.Minute), false, 30*time.Minute)
	step(t0.Add(3*time.Hour), true, 0)
	step(t0.Add(3*time.Hour), true, 0)
	step(t0.Add(3*time.Hour), false, 30*time.Minute)
}

func TestGCRARefund(t *testing.T) {
	l := Limit{Count: 2, Period: time.Hour}
	for _, tc := range []struct {
		tat, want time.Time
	}{
		{t0.Add(time.Hour), t0.Add(30 * time.Minute)},
		{t0.Add(30 * time.Minute), t0},
		{t0.Add(10 * time.Minute), t0}, // never more than a full bucket
		{t0.Add(-time.Hour), t0},
	} {
		if got := gcraRefund(l, tc.tat, t0); !got.Equal(tc.want) {
			t.Errorf("gcraRefund(+%v) = +%v; want +%v", tc.tat.Sub(t0), got.Sub(t0), tc.want.Sub(t0))
		}
	}
}

func TestFQDNSet(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want string
	}{
		{[]string{"a.test"}, "a.test"},
		{[]string{"B.test", "a.test.", "b.test", " a.TEST"}, "a.test,b.test"},
		{[]string{"*.A.test", "a.test"}, "*.a.test,a.test"},
		{[]string{"www.example.com", "example.com", "192.0.2.1"}, "192.0.2.1,example.com,www.example.com"},
		{nil, ""},
	} {
		if got := FQDNSet(tc.in); got != tc.want {
			t.Errorf("FQDNSet(%q) = %q; want %q", tc.in, got, tc.want)
		}
	}
}

func TestRegisteredDomain(t *testing.T) {
	for in, want := range map[string]string{
		"example.com":              "example.com",
		"WWW.Example.COM.":         "example.com",
		"a.b.c.example.com":        "example.com",
		"*.example.com":            "example.com",
		"*.www.example.co.uk":      "example.co.uk",
		"x.caproxy.certfleet.test": "certfleet.test", // no PSL entry: the default rule makes the last label the suffix
		"certfleet.test":           "certfleet.test",
		"com":                      "com", // a bare public suffix has no eTLD+1: itself
		"localhost":                "localhost",
		"192.0.2.7":                "192.0.2.7/32",
		"2001:db8:1:2:3::9":        "2001:db8:1:2::/64",
		"::ffff:192.0.2.7":         "192.0.2.7/32",
	} {
		if got := RegisteredDomain(in); got != want {
			t.Errorf("RegisteredDomain(%q) = %q; want %q", in, got, want)
		}
	}
	got := RegisteredDomains([]string{"a.example.com", "*.example.com", "b.example.org", "example.com"})
	if strings.Join(got, ",") != "example.com,example.org" {
		t.Errorf("RegisteredDomains = %q; want example.com and example.org once each", got)
	}
}

func b64json(t *testing.T, v any) string {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(data)
}

func TestParseJWSAndKeys(t *testing.T) {
	kid := "https://127.0.0.1:1/my-account/7"
	order := map[string]any{"identifiers": []map[string]string{
		{"type": "dns", "value": "www.Example.com"}, {"type": "dns", "value": "*.example.com"}, {"type": "dns", "value": "b.example.org"},
	}}
	body := func(protected, payload string) []byte {
		data, _ := json.Marshal(map[string]string{"protected": protected, "payload": payload, "signature": "c2ln"})
		return data
	}
	for _, tc := range []struct {
		name    string
		body    []byte
		ok      bool
		keyed   bool
		wantKey orderKeys
	}{
		{"newOrder", body(b64json(t, map[string]string{"alg": "ES256", "kid": kid, "url": "u", "nonce": "n"}), b64json(t, order)), true, true,
			orderKeys{account: kid, domains: []string{"example.com", "example.org"}, set: "*.example.com,b.example.org,www.example.com"}},
		{"padded segments", body(b64json(t, map[string]string{"kid": kid})+"==", b64json(t, order)+"="), true, true,
			orderKeys{account: kid, domains: []string{"example.com", "example.org"}, set: "*.example.com,b.example.org,www.example.com"}},
		{"POST-as-GET", body(b64json(t, map[string]string{"kid": kid}), ""), true, false, orderKeys{}},
		{"jwk-signed newAccount", body(b64json(t, map[string]any{"jwk": map[string]string{"kty": "EC"}}), b64json(t, map[string]bool{"termsOfServiceAgreed": true})), true, false, orderKeys{}},
		{"no identifiers", body(b64json(t, map[string]string{"kid": kid}), b64json(t, map[string]any{"identifiers": []any{}})), true, false, orderKeys{}},
		{"not JSON", []byte("hello"), false, false, orderKeys{}},
		{"compact serialization", []byte("eyJhbGciOiJFUzI1NiJ9.e30.c2ln"), false, false, orderKeys{}},
		{"bad base64 header", body("!!!", b64json(t, order)), false, false, orderKeys{}},
		{"payload not JSON", body(b64json(t, map[string]string{"kid": kid}), base64.RawURLEncoding.EncodeToString([]byte("nope"))), true, false, orderKeys{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, ok := parseJWS(tc.body)
			if ok != tc.ok {
				t.Fatalf("parseJWS ok = %v; want %v", ok, tc.ok)
			}
			keys, keyed := keysOf(info)
			if keyed != tc.keyed {
				t.Fatalf("keysOf keyed = %v; want %v (info %+v)", keyed, tc.keyed, info)
			}
			if keys.account != tc.wantKey.account || keys.set != tc.wantKey.set || strings.Join(keys.domains, " ") != strings.Join(tc.wantKey.domains, " ") {
				t.Errorf("keys = %+v; want %+v", keys, tc.wantKey)
			}
		})
	}
}

func TestDetail(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.FixedZone("CET", 3600)) // 02:04:05 UTC
	for _, tc := range []struct {
		limit, domain string
		lim           Limit
		want          string
	}{
		{LimitNewOrdersPerAccount, "", Limit{300, 3 * time.Hour},
			"too many new orders (300) from this account in the last 3h0m0s, retry after 2030-01-02 02:04:05 UTC: see https://letsencrypt.org/docs/rate-limits/#new-orders-per-account"},
		{LimitCertificatesPerDomain, "example.com", Limit{50, 168 * time.Hour},
			`too many certificates (50) already issued for "example.com" in the last 168h0m0s, retry after 2030-01-02 02:04:05 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-registered-domain`},
		{LimitCertificatesPerFQDNSet, "", Limit{5, 168 * time.Hour},
			"too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2030-01-02 02:04:05 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-identifiers"},
		{LimitNewRegistrationsPerIPAddress, "", Limit{10, 3 * time.Hour},
			"too many new registrations (10) from this IP address in the last 3h0m0s, retry after 2030-01-02 02:04:05 UTC: see https://letsencrypt.org/docs/rate-limits/#new-registrations-per-ip-address"},
		{"NoSuchLimit", "", Limit{1, time.Hour}, ""},
	} {
		if got := Detail(tc.limit, tc.lim, tc.domain, at); got != tc.want {
			t.Errorf("Detail(%s) =\n  %s\nwant\n  %s", tc.limit, got, tc.want)
		}
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	for d, want := range map[time.Duration]int64{
		0: 1, -time.Second: 1, time.Nanosecond: 1, time.Second: 1, time.Second + time.Nanosecond: 2,
		1500 * time.Millisecond: 2, 30 * time.Minute: 1800,
	} {
		if got := retryAfterSeconds(d); got != want {
			t.Errorf("retryAfterSeconds(%v) = %d; want %d", d, got, want)
		}
	}
	if got := ceilSecond(t0.Add(time.Millisecond)); !got.Equal(t0.Add(time.Second)) {
		t.Errorf("ceilSecond(+1ms) = %v", got)
	}
	if got := ceilSecond(t0); !got.Equal(t0) {
		t.Errorf("ceilSecond(whole second) = %v", got)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Upstream: "https://127.0.0.1:14000/dir"}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string // substring of the error; "" means valid
	}{
		{"minimal", func(*Config) {}, ""},
		{"everything", func(c *Config) {
			c.Limits = Limits{Limit{300, 3 * time.Hour}, Limit{50, 168 * time.Hour}, Limit{5, 168 * time.Hour}}
			c.Faults = Faults{RateLimited: 0.25, ServerError: 0.25, Timeout: 0.25, Slow: 0.25, RetryAfter: time.Second, TimeoutHold: time.Second, SlowDelay: time.Second}
		}, ""},
		{"fractions summing to 1 with rounding", func(c *Config) { c.Faults = Faults{RateLimited: 0.1, ServerError: 0.2, Timeout: 0.3, Slow: 0.4} }, ""},
		{"no upstream", func(c *Config) { c.Upstream = "" }, "Config.Upstream is empty"},
		{"http upstream", func(c *Config) { c.Upstream = "http://127.0.0.1:14000/dir" }, "want an https:// directory URL"},
		{"unparsable upstream", func(c *Config) { c.Upstream = "https://[::1" }, "Config.Upstream"},
		{"negative count", func(c *Config) { c.Limits.OrdersPerDomain = Limit{Count: -1} }, "Limits.OrdersPerDomain.Count is -1"},
		{"count without period", func(c *Config) { c.Limits.OrdersPerAccount = Limit{Count: 3} }, "Limits.OrdersPerAccount.Period is 0s"},
		{"negative period", func(c *Config) { c.Limits.OrdersPerFQDNSet = Limit{Count: 3, Period: -time.Hour} }, "Limits.OrdersPerFQDNSet.Period is -1h0m0s"},
		{"period shorter than count", func(c *Config) { c.Limits.OrdersPerFQDNSet = Limit{Count: 10, Period: 5} }, "Limits.OrdersPerFQDNSet: Period"},
		{"period without count is unlimited", func(c *Config) { c.Limits.OrdersPerFQDNSet = Limit{Period: -time.Hour} }, ""},
		{"negative fraction", func(c *Config) { c.Faults.ServerError = -0.1 }, "Faults.ServerError is -0.1"},
		{"fraction over 1", func(c *Config) { c.Faults.Slow = 1.5 }, "Faults.Slow is 1.5"},
		{"NaN fraction", func(c *Config) { c.Faults.Timeout = math.NaN() }, "Faults.Timeout is NaN"},
		{"fractions over 1", func(c *Config) { c.Faults.RateLimited, c.Faults.ServerError = 0.7, 0.4 }, "sum to 1.1"},
		{"negative retry-after", func(c *Config) { c.Faults.RetryAfter = -time.Second }, "Faults.RetryAfter is -1s"},
		{"negative hold", func(c *Config) { c.Faults.TimeoutHold = -time.Second }, "Faults.TimeoutHold"},
		{"negative delay", func(c *Config) { c.Faults.SlowDelay = -time.Second }, "Faults.SlowDelay"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v; want valid", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate = %v; want an error containing %q", err, tc.want)
			}
			if tc.want != "" {
				// Start refuses it too, before touching the network.
				if p, err := Start(t.Context(), c); err == nil {
					p.Close()
					t.Fatal("Start accepted an invalid config")
				}
			}
		})
	}
}

// The dice are a pure function of the seed: same seed, same decisions.
func TestDiceDeterministic(t *testing.T) {
	f := Faults{RateLimited: 0.3, ServerError: 0.1, Timeout: 0.05, Slow: 0.05}
	seq := func(seed uint64) []fault {
		p := &Proxy{faults: f, dice: newDice(seed), stats: newStats()}
		out := make([]fault, 200)
		for i := range out {
			out[i], _ = p.roll(true)
		}
		return out
	}
	a, b, c := seq(7), seq(7), seq(8)
	counts := map[fault]int{}
	same := true
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("decision %d differs between two runs with seed 7", i)
		}
		same = same && a[i] == c[i]
		counts[a[i]]++
	}
	if same {
		t.Error("seeds 7 and 8 gave the same 200 decisions")
	}
	if counts[faultRateLimited] < 40 || counts[faultRateLimited] > 80 || counts[noFault] < 70 {
		t.Errorf("decisions %v are far from the configured fractions", counts)
	}
	// Non-newOrder requests do not roll unless AllPOSTs.
	p := &Proxy{faults: Faults{RateLimited: 1}, dice: newDice(1), stats: newStats()}
	if got, _ := p.roll(false); got != noFault {
		t.Errorf("a non-newOrder request without AllPOSTs got fault %d", got)
	}
	p.faults.AllPOSTs = true
	if got, _ := p.roll(false); got != faultRateLimited {
		t.Errorf("a POST with AllPOSTs got fault %d; want rate limited", got)
	}
}

// The accounting without Pebble: at newOrder NewOrdersPerAccount is spent
// and the certificate limits only checked; issuance spends them, once per
// order, best effort (a full bucket counts IssuedBeyondLimit and stays as it
// is); the next newOrder sees what was issued.
func TestAccountingChecksAtOrderSpendsAtIssuance(t *testing.T) {
	clk := newFakeClock()
	dom, acct := Limit{Count: 1, Period: time.Hour}, Limit{Count: 10, Period: time.Hour}
	p := &Proxy{clock: clk, limits: Limits{OrdersPerAccount: acct, OrdersPerDomain: dom, OrdersPerFQDNSet: dom},
		buckets: map[string]time.Time{}, penalties: map[string]time.Time{}, stats: newStats()}
	keysFor := func(name string) orderKeys {
		return orderKeys{account: "acct", domains: RegisteredDomains([]string{name}), set: FQDNSet([]string{name})}
	}
	k := keysFor("a.example.com")
	st1, st2 := &orderState{keys: k, keyed: true}, &orderState{keys: k, keyed: true}
	if d := p.reserve(st1); d != nil {
		t.Fatalf("first order refused: %s", d.detail)
	}
	if d := p.reserve(st2); d != nil {
		t.Fatalf("second order refused before any issuance: %s", d.detail)
	}
	if len(st1.spent) != 1 || st1.spent[0].limitName != LimitNewOrdersPerAccount {
		t.Errorf("newOrder spent %v; want NewOrdersPerAccount only", st1.spent)
	}
	if _, ok := p.buckets[Key(LimitCertificatesPerDomain, "example.com")]; ok {
		t.Error("a newOrder spent CertificatesPerDomain")
	}
	r1, r2 := &orderRecord{keys: k}, &orderRecord{keys: k}
	p.issue(r1)
	p.issue(r1) // the same order seen valid again: counted once
	p.issue(r2) // admitted together with r1: the bucket is empty now
	if p.stats.Issued != 2 || p.stats.IssuedByDomain["example.com"] != 2 || p.stats.IssuedBySANSet[k.set] != 2 {
		t.Errorf("stats %+v; want 2 certificates counted", p.stats)
	}
	if got := p.stats.IssuedBeyondLimit; got[LimitCertificatesPerDomain] != 1 || got[LimitCertificatesPerFQDNSet] != 1 {
		t.Errorf("IssuedBeyondLimit %v; want one per certificate limit", got)
	}
	if tat := p.buckets[Key(LimitCertificatesPerDomain, "example.com")]; !tat.Equal(clk.Now().Add(time.Hour)) {
		t.Errorf("domain TAT %v; want one issuance's worth (%v): the second was not counted", tat, clk.Now().Add(time.Hour))
	}
	d := p.reserve(&orderState{keys: keysFor("b.example.com"), keyed: true})
	if d == nil || d.retryAfter != 3600 || !strings.Contains(d.detail, `"example.com"`) {
		t.Fatalf("an order after the issuance: %+v; want CertificatesPerDomain's refusal for an hour", d)
	}
	if p.stats.RateLimitedByLimit[LimitCertificatesPerDomain] != 1 {
		t.Errorf("refusals %v; want one CertificatesPerDomain", p.stats.RateLimitedByLimit)
	}
	clk.Advance(time.Hour)
	if d := p.reserve(&orderState{keys: keysFor("b.example.com"), keyed: true}); d != nil {
		t.Errorf("an hour later: %s; want allowed", d.detail)
	}
}
