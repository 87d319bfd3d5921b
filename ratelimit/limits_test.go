package ratelimit

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func TestDecodeCatalogue(t *testing.T) {
	good := `{"cas":[
	  {"id":"le","directory":"https://acme.example/dir"},
	  {"id":"private","directory":"https://ca.internal/dir","limits":{
	     "NewOrdersPerAccount":{"count":1000,"period":"1h"},
	     "CertificatesPerDomain":null,
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
		t.Errorf("private CA has CertificatesPerDomain although its limits remove it (null)")
	}

	bad := []struct{ in, field string }{
		{`{"cas":[{"id":"le","directory":"https://a/d","limitz":{}}]}`, "limitz"},
		{`{"cas":[]}`, "cas"},
		{`{"cas":[{"id":"LE!","directory":"https://a/d"}]}`, "cas[0].id"},
		{`{"cas":[{"id":"le","directory":"ftp://a/d"}]}`, "cas[0].directory"},
		{`{"cas":[{"id":"le","directory":"https://a/d","limits":{"Bogus":{"count":1,"period":"1s"}}}]}`, "cas[0].limits.Bogus"},
		{`{"cas":[{"id":"le","directory":"https://a/d","limits":{"Bogus":null}}]}`, "cas[0].limits.Bogus"},
		{`{"cas":[{"id":"le","directory":"https://a/d","limits":{"NewOrdersPerAccount":{"period":"1h"}}}]}`, "cas[0].limits.NewOrdersPerAccount.count"},
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

// A CA's limits object changes Let's Encrypt's defaults limit by limit: a
// listed limit replaces the default, null removes it, and one left out keeps
// the default (the fleet budget used to disappear silently).
func TestDecodeCatalogueMergesLimitsWithTheDefaults(t *testing.T) {
	c, err := DecodeCatalogue(strings.NewReader(`{"cas":[{"id":"p","directory":"https://ca.internal/dir","limits":{
	  "NewOrdersPerAccount":{"count":1000,"period":"1h","burst":10},
	  "FailedAuthorizationsPerDomainPerAccount":null}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := c.CA("https://ca.internal/dir")
	le := LetsEncryptLimits()
	want := map[Name]LimitConfig{
		NewOrdersPerAccount:    {Limit: Limit{1000, time.Hour, 10}, Renewal: Enforce, ARIRenewal: Enforce},
		CertificatesPerDomain:  le[CertificatesPerDomain],
		CertificatesPerFQDNSet: le[CertificatesPerFQDNSet],
		FleetOrdersPerSecond:   le[FleetOrdersPerSecond],
		// The registration limits are defaults too.
		NewRegistrationsPerIPAddress: le[NewRegistrationsPerIPAddress],
		NewRegistrationsPerIPv6Range: le[NewRegistrationsPerIPv6Range],
	}
	if len(ca.Limits) != len(want) {
		t.Errorf("limits %v; want %v", ca.Limits, want)
	}
	for n, w := range want {
		if got, ok := ca.Limits[n]; !ok || got != w {
			t.Errorf("%s = %+v, %v; want %+v", n, got, ok, w)
		}
	}
	if l, ok := c.Default("https://ca.internal/dir", FleetOrdersPerSecond); !ok || l != (Limit{10, time.Second, 10}) {
		t.Errorf("FleetOrdersPerSecond = %v, %v; want Let's Encrypt's 10/s", l, ok)
	}
}

// The worker's catalogue: the file's CAs, Let's Encrypt's limits under the
// worker's name for a CA the file does not list, and a file CA no -ca entry
// orders from is refused, naming its directory.
func TestServingCatalogue(t *testing.T) {
	file := t.TempDir() + "/limits.json"
	if err := os.WriteFile(file, []byte(`{"cas":[
	  {"id":"private","directory":"https://ca.internal/dir","limits":{"NewOrdersPerAccount":{"count":7,"period":"1h"}}},
	  {"id":"typo","directory":"https://ca.internal/dir/"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	serving := []CA{{ID: "internal", Directory: "https://ca.internal/dir"}, {ID: "pebble", Directory: "https://127.0.0.1:14000/dir"}}
	_, err := ServingCatalogue(file, serving...)
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "cas[1].directory" || !strings.Contains(err.Error(), `"https://ca.internal/dir/"`) || !strings.Contains(err.Error(), file) {
		t.Fatalf("unused directory: err = %v; want a FieldError naming cas[1].directory and the directory", err)
	}
	c, err := ServingCatalogue(file, append(serving, CA{ID: "x", Directory: "https://ca.internal/dir/"})...)
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := c.Default("https://ca.internal/dir", NewOrdersPerAccount); l.Count != 7 {
		t.Errorf("the file's limit: %v", l)
	}
	if ca, ok := c.CA("https://127.0.0.1:14000/dir"); !ok || ca.ID != "pebble" || ca.Limits[NewOrdersPerAccount] != LetsEncryptLimits()[NewOrdersPerAccount] {
		t.Errorf("a CA the file does not list: %+v, %v; want Let's Encrypt's limits under the worker's name", ca, ok)
	}
	// Without a file: the built-in catalogue, whose CAs need not be served.
	c, err = ServingCatalogue("", serving[1])
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{LetsEncryptDirectory, "https://127.0.0.1:14000/dir"} {
		if _, ok := c.CA(dir); !ok {
			t.Errorf("no CA %s", dir)
		}
	}
	if _, err := ServingCatalogue(file+".missing", serving...); err == nil {
		t.Error("a missing file: no error")
	}
}
