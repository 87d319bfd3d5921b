package ratelimit

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

const leDir = "https://acme-v02.api.letsencrypt.org/directory"

func testCatalogue(t testing.TB) *Catalogue {
	t.Helper()
	c, err := NewCatalogue(CA{ID: "le", Directory: leDir, Limits: LetsEncryptLimits()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type txnSummary struct {
	Key  string
	Mode Mode
}

func summarize(txns []Transaction) []txnSummary {
	out := make([]txnSummary, len(txns))
	for i, t := range txns {
		out[i] = txnSummary{t.Key(), t.Mode}
	}
	return out
}

func TestOrderTransactions(t *testing.T) {
	c := testCatalogue(t)
	sans := []string{"WWW.Example.COM.", "example.com", "shop.example.co.uk", "www.example.com"}
	set := FQDNSetHash([]string{"example.com", "shop.example.co.uk", "www.example.com"})
	common := []txnSummary{
		{"le:FleetOrdersPerSecond:*", ModeSpend},
		{"le:NewOrdersPerAccount:acct-1", ModeSpend},
	}
	failed := []txnSummary{
		{"le:FailedAuthorizationsPerDomainPerAccount:acct-1:example.com", ModeCheck},
		{"le:FailedAuthorizationsPerDomainPerAccount:acct-1:shop.example.co.uk", ModeCheck},
		{"le:FailedAuthorizationsPerDomainPerAccount:acct-1:www.example.com", ModeCheck},
	}
	tests := []struct {
		kind OrderKind
		want []txnSummary
	}{
		{NewOrder, slices.Concat(common, []txnSummary{
			{"le:CertificatesPerDomain:example.com", ModeSpend},
			{"le:CertificatesPerDomain:example.co.uk", ModeSpend},
			{"le:CertificatesPerFQDNSet:" + set, ModeSpend},
		}, failed)},
		{Renewal, slices.Concat(common, []txnSummary{
			{"le:CertificatesPerDomain:example.com", ModeSpendNoCheck},
			{"le:CertificatesPerDomain:example.co.uk", ModeSpendNoCheck},
			{"le:CertificatesPerFQDNSet:" + set, ModeSpend},
		}, failed)},
		{ARIRenewal, slices.Concat(common[:1], []txnSummary{
			{"le:CertificatesPerDomain:example.com", ModeSpendNoCheck},
			{"le:CertificatesPerDomain:example.co.uk", ModeSpendNoCheck},
			{"le:CertificatesPerFQDNSet:" + set, ModeSpend},
		}, failed)},
	}
	for _, tt := range tests {
		txns, err := c.OrderTransactions(Order{Directory: leDir, Account: "acct-1", SANs: sans, Kind: tt.kind})
		if err != nil {
			t.Fatalf("kind %d: %v", tt.kind, err)
		}
		if got := summarize(txns); !slices.Equal(got, tt.want) {
			t.Errorf("kind %d:\n got %v\nwant %v", tt.kind, got, tt.want)
		}
	}
}

// A wildcard and its base name share one authorization host, so the order
// checks that host's failed-authorization bucket once: a batch naming a
// bucket twice is refused by the store, which held such a request for ever.
func TestOrderTransactionsWildcardAndBaseName(t *testing.T) {
	c := testCatalogue(t)
	txns, err := c.OrderTransactions(Order{Directory: leDir, Account: "acct-1", SANs: []string{"example.com", "*.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]int{}
	for _, tx := range txns {
		keys[tx.Key()]++
	}
	for k, n := range keys {
		if n != 1 {
			t.Errorf("bucket %s appears %d times in one order", k, n)
		}
	}
	if keys["le:FailedAuthorizationsPerDomainPerAccount:acct-1:example.com"] != 1 {
		t.Errorf("no failed-authorization check for example.com: %v", keys)
	}
	l := NewLimiter(NewMemStore(), c)
	if _, err := l.Spend(context.Background(), txns); err != nil {
		t.Fatalf("spending the order's buckets: %v", err)
	}
}

func TestOrderTransactionsRejects(t *testing.T) {
	c := testCatalogue(t)
	tests := []struct {
		name string
		o    Order
	}{
		{"unknown CA", Order{Directory: "https://other/dir", Account: "a", SANs: []string{"example.com"}}},
		{"no account", Order{Directory: leDir, SANs: []string{"example.com"}}},
		{"no SANs", Order{Directory: leDir, Account: "a"}},
		{"public suffix", Order{Directory: leDir, Account: "a", SANs: []string{"co.uk"}}},
		{"bad label", Order{Directory: leDir, Account: "a", SANs: []string{"-x.example.com"}}},
		{"injection", Order{Directory: leDir, Account: "a", SANs: []string{"x'; DROP TABLE t;--.com"}}},
		{"single label", Order{Directory: leDir, Account: "a", SANs: []string{"localhost"}}},
	}
	for _, tt := range tests {
		if _, err := c.OrderTransactions(tt.o); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%s: err = %v, want ErrInvalidRequest", tt.name, err)
		}
	}
}

func TestNormalizeSAN(t *testing.T) {
	tests := map[string]string{
		"Example.COM.":     "example.com",
		"*.example.com":    "*.example.com",
		"bücher.example":   "xn--bcher-kva.example",
		"2001:db8::1":      "2001:db8::1",
		"::ffff:192.0.2.1": "192.0.2.1",
	}
	for in, want := range tests {
		got, err := NormalizeSAN(in)
		if err != nil || got != want {
			t.Errorf("NormalizeSAN(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if got := registeredDomain("2001:db8::1"); got != "2001:db8::/64" {
		t.Errorf("registeredDomain(v6) = %q", got)
	}
}

func TestDecodeCatalogue(t *testing.T) {
	good := `{"cas":[
	  {"id":"le","directory":"https://acme.example/dir"},
	  {"id":"private","directory":"https://ca.internal/dir","limits":{
	     "NewOrdersPerAccount":{"count":1000,"period":"1h"},
	     "FleetOrdersPerSecond":{"count":50,"period":"1s","burst":100,"renewal":"enforce","ari_renewal":"skip"}}}]}`
	c, err := DecodeCatalogue(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if l, ok := c.Default("https://acme.example/dir", CertificatesPerDomain); !ok || l != (Limit{50, 7 * 24 * time.Hour, 50}) {
		t.Errorf("le CertificatesPerDomain = %v, %v", l, ok)
	}
	if l, ok := c.Default("https://ca.internal/dir", NewOrdersPerAccount); !ok || l != (Limit{1000, time.Hour, 1000}) {
		t.Errorf("private NewOrdersPerAccount = %v, %v (burst should default to count)", l, ok)
	}
	if _, ok := c.Default("https://ca.internal/dir", CertificatesPerDomain); ok {
		t.Errorf("private CA has CertificatesPerDomain although its limits do not list it")
	}

	bad := []struct{ in, field string }{
		{`{"cas":[{"id":"le","directory":"https://a/d","limitz":{}}]}`, "limitz"},
		{`{"cas":[]}`, "cas"},
		{`{"cas":[{"id":"LE!","directory":"https://a/d"}]}`, "cas[0].id"},
		{`{"cas":[{"id":"le","directory":"ftp://a/d"}]}`, "cas[0].directory"},
		{`{"cas":[{"id":"le","directory":"https://a/d","limits":{"Bogus":{"count":1,"period":"1s"}}}]}`, "cas[0].limits.Bogus"},
		{`{"cas":[{"id":"le","directory":"https://a/d","limits":{"NewOrdersPerAccount":{"count":0,"period":"1s"}}}]}`, "cas[0].limits.NewOrdersPerAccount.count"},
		{`{"cas":[{"id":"le","directory":"https://a/d","limits":{"NewOrdersPerAccount":{"count":1,"period":"1ms"}}}]}`, "cas[0].limits.NewOrdersPerAccount.period"},
		{`{"cas":[{"id":"le","directory":"https://a/d","limits":{"NewOrdersPerAccount":{"count":1,"period":"1h","burst":-1}}}]}`, "cas[0].limits.NewOrdersPerAccount.burst"},
		{`{"cas":[{"id":"le","directory":"https://a/d","limits":{"NewOrdersPerAccount":{"count":1,"period":"1h","renewal":"maybe"}}}]}`, "cas[0].limits.NewOrdersPerAccount.renewal"},
		{`{"cas":[{"id":"le","directory":"https://a/d"},{"id":"le","directory":"https://b/d"}]}`, "cas[1].id"},
		{`{"cas":[{"id":"le","directory":"https://a/d"}]} {}`, "trailing"},
		{`{"cas":[{"id":"le","directory":"https://a/d","limits":{"NewOrdersPerAccount":{"count":1,"period":"an hour"}}}]}`, "period"},
	}
	for _, tt := range bad {
		_, err := DecodeCatalogue(strings.NewReader(tt.in))
		if err == nil || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("DecodeCatalogue(%s) = %v, want an error naming %q", tt.in, err, tt.field)
		}
	}
}

func FuzzDecodeCatalogue(f *testing.F) {
	f.Add(`{"cas":[{"id":"le","directory":"https://a/d"}]}`)
	f.Add(`{"cas":[{"id":"p","directory":"https://a/d","limits":{"NewOrdersPerAccount":{"count":5,"period":"1h","burst":2}}}]}`)
	f.Add(`{"cas":[{"id":"p","directory":"https://a/d","limits":{"FleetOrdersPerSecond":{"count":9223372036854775807,"period":"1s"}}}]}`)
	f.Fuzz(func(t *testing.T, in string) {
		c, err := DecodeCatalogue(strings.NewReader(in))
		if err != nil {
			return
		}
		// Anything accepted must be usable without panics or overflow.
		for _, ca := range c.byDirectory {
			for n, lc := range ca.Limits {
				if err := lc.Limit.Validate(); err != nil {
					t.Fatalf("accepted invalid limit %s: %v", n, err)
				}
				d := Spend(lc.Limit, time.Time{}, t0, lc.Burst)
				if !d.Allowed || d.NewTAT().Before(t0) {
					t.Fatalf("full burst on fresh bucket not allowed for %s %v: %+v", n, lc.Limit, d)
				}
			}
		}
	})
}

func TestCatalogueWith(t *testing.T) {
	base := DefaultCatalogue()
	extra := CA{ID: "pebble", Directory: "https://127.0.0.1:14000/dir", Limits: LetsEncryptLimits()}
	c, err := base.With(extra)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.CA(extra.Directory); !ok {
		t.Fatal("added CA missing")
	}
	if _, ok := c.CA(LetsEncryptDirectory); !ok {
		t.Fatal("base CA lost")
	}
	if _, ok := base.CA(extra.Directory); ok {
		t.Fatal("With modified the original catalogue")
	}
	if _, err := c.With(extra); err == nil {
		t.Fatal("duplicate CA accepted")
	}
}
