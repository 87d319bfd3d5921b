package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	good := map[string]string{
		"CERTFLEET_KAFKA_BROKERS": "127.0.0.1:19092", "CERTFLEET_DATABASE_URL": "postgres://x@127.0.0.1/db",
		"CERTFLEET_SEAL_KEYS": "k1=AAAA", "CERTFLEET_CAS": "pebble=https://127.0.0.1:14000/dir",
	}
	env := func(over map[string]string) func(string) string {
		return func(k string) string {
			if v, ok := over[k]; ok {
				return v
			}
			return good[k]
		}
	}
	c, err := parseConfig(nil, env(nil))
	if err != nil {
		t.Fatalf("good config rejected: %v", err)
	}
	if c.Concurrency != 8 || c.Group != "certfleet-issuer-workers" || len(c.CAs) != 1 || c.CAs[0].Name != "pebble" {
		t.Fatalf("defaults: %+v", c)
	}
	if c.OrderTimeout != 2*time.Minute || c.DNS01Config != "" {
		t.Fatalf("order timeout %v, dns01 config %q", c.OrderTimeout, c.DNS01Config)
	}
	if c, err := parseConfig([]string{"-challenge-types", "dns-01", "-dns01-config", "/etc/certfleet/dns01.json"}, env(nil)); err != nil || c.DNS01Config != "/etc/certfleet/dns01.json" {
		t.Fatalf("dns-01 through a configuration: %v", err)
	}
	if c.Breaker.Failures != 5 || c.Breaker.Cooldown != 30*time.Second || c.FailoverAfter != 10*time.Minute || len(c.CAGroups) != 0 {
		t.Fatalf("failover defaults: %+v %v %v", c.Breaker, c.FailoverAfter, c.CAGroups)
	}
	two := map[string]string{"CERTFLEET_CAS": "le=https://le.test/dir,zs=https://zs.test/dir,eab-kid=k,eab-key-file=/zs.eab", "CERTFLEET_CA_GROUPS": "any=le+zs"}
	if c, err := parseConfig(nil, env(two)); err != nil || len(c.CAGroups) != 1 || c.CAGroups[0].Name != "any" || c.CAs[1].EABKeyID != "k" {
		t.Fatalf("a group of two CAs: %+v, %v", c.CAGroups, err)
	}
	if c.AccountMode != "per-tenant" {
		t.Fatalf("default account mode %q; want per-tenant", c.AccountMode)
	}
	if c, err := parseConfig(nil, env(map[string]string{"CERTFLEET_ACCOUNT_MODE": "shared"})); err != nil || c.AccountMode != "shared" {
		t.Fatalf("CERTFLEET_ACCOUNT_MODE=shared: %q, %v", c.AccountMode, err)
	}
	if c.EgressAddress.IsValid() {
		t.Fatalf("default egress address %v; want none (registrations not counted)", c.EgressAddress)
	}
	if c, err := parseConfig([]string{"-egress-address", "2001:db8::7"}, env(nil)); err != nil || c.EgressAddress.String() != "2001:db8::7" {
		t.Fatalf("-egress-address 2001:db8::7: %v, %v", c.EgressAddress, err)
	}
	if len(c.Names.AllowedSpecialUse) != 0 {
		t.Fatalf("default names policy %s; want strict", c.Names)
	}
	if c, err := parseConfig(nil, env(map[string]string{"CERTFLEET_ALLOW_SPECIAL_NAMES": "test,.example"})); err != nil || c.Names.String() != "strict but for .example, .test" {
		t.Fatalf("CERTFLEET_ALLOW_SPECIAL_NAMES: %s, %v", c.Names, err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no brokers", nil, map[string]string{"CERTFLEET_KAFKA_BROKERS": ""}, "-kafka-brokers: required"},
		{"bad broker", []string{"-brokers", "localhost"}, nil, `-kafka-brokers: "localhost" is not host:port`},
		{"SASL without TLS", []string{"-kafka-sasl-mechanism", "scram-sha-512", "-kafka-sasl-user", "worker", "-kafka-sasl-password-file", "/pw"}, nil,
			"-kafka-sasl-mechanism: scram-sha-512 without TLS"},
		{"provisioning min ISR above replication", []string{"-provision-topics", "-replication-factor", "1"}, nil,
			"-provision-topics: min.insync.replicas 2: want 0 (the broker's default) to the replication factor 1"},
		{"no database", nil, map[string]string{"CERTFLEET_DATABASE_URL": ""}, "-database-url: required"},
		{"no keys", nil, map[string]string{"CERTFLEET_SEAL_KEYS": ""}, "-seal-keys-file: required"},
		{"http CA", []string{"-ca", "le=http://acme.test/dir"}, nil, "want a name and an https directory URL"},
		{"CA without name", []string{"-ca", "https://acme.test/dir"}, nil, "want name=directoryURL"},
		{"CA twice", []string{"-ca", "a=https://x.test/d,a=https://y.test/d"}, nil, `"a" configured twice`},
		{"group of an unknown CA", []string{"-ca-group", "any=pebble+gts"}, nil, `-ca-group: group "any": CA "gts" is not configured (-ca)`},
		{"group named like a CA", []string{"-ca-group", "pebble=pebble"}, nil, `-ca-group: group "pebble": a CA has that name`},
		{"EAB key id without key file", []string{"-ca", "zs=https://zs.test/dir,eab-kid=k"}, nil, "zs: eab-kid and eab-key-file go together"},
		{"breaker never opens", []string{"-ca-breaker-failures", "0"}, nil, "-ca-breaker-failures: 0 must be at least 1"},
		{"cooldown beyond its cap", []string{"-ca-breaker-cooldown", "1h"}, nil, "-ca-breaker-cooldown: 1h0m0s must be positive and at most -ca-breaker-max-cooldown"},
		{"zero failover bound", []string{"-ca-failover-after", "0s"}, nil, "-ca-failover-after: 0s must be positive"},
		{"zero concurrency", []string{"-concurrency", "0"}, nil, "-concurrency: 0 is not between 1 and 1000"},
		{"env not a number", nil, map[string]string{"CERTFLEET_CONCURRENCY": "many"}, `-concurrency: CERTFLEET_CONCURRENCY="many" is not an integer`},
		{"pending below concurrency", []string{"-concurrency", "10", "-max-pending", "5"}, nil, "-max-pending: 5"},
		{"short lease", []string{"-lease", "1s"}, nil, "-lease: 1s is below 10s"},
		{"session too short", []string{"-session-timeout", "1s"}, nil, "-session-timeout: 1s is not between 6s and 5m"},
		{"bad listen", []string{"-listen", "9090"}, nil, `-listen: "9090" is not host:port`},
		{"bad level", []string{"-log-level", "loud"}, nil, `-log-level: "loud"`},
		{"unknown account mode", []string{"-account-mode", "per-ca"}, nil, `-account-mode: account mode "per-ca": want per-tenant or shared`},
		{"egress not an address", []string{"-egress-address", "nat.example"}, nil, `-egress-address: "nat.example" is not an IP address`},
		{"egress unspecified", []string{"-egress-address", "0.0.0.0"}, nil, `-egress-address: "0.0.0.0" is not an IP address`},
		{"unknown challenge type", []string{"-challenge-types", "tls-alpn-01"}, nil, `-challenge-types: "tls-alpn-01"`},
		{"dns-01 without provider", []string{"-challenge-types", "dns-01"}, nil, "no challenge type can be solved"},
		{"two dns-01 providers", []string{"-dns01-config", "/d.json", "-dns01-challtestsrv", "http://127.0.0.1:8055"}, nil, "-dns01-config: and -dns01-challtestsrv exclude each other"},
		{"short order timeout", []string{"-order-timeout", "5s"}, nil, "-order-timeout: 5s is below 10s"},
		{"lead cap below its floor", []string{"-issuance-lead-floor", "10s", "-issuance-lead-cap", "5s"}, nil, "-issuance-lead-cap: 5s must be at least -issuance-lead-floor"},
		{"stall within the lease", []string{"-stall-timeout", "5m", "-lease", "6m"}, nil, "-stall-timeout: 5m0s must be 0 (never) or longer than -lease"},
		{"stall within an order", []string{"-stall-timeout", "1m"}, nil, "-stall-timeout: 1m0s must be 0 (never) or longer than -lease (15s) and -order-timeout (2m0s)"},
		{"stall not a duration", nil, map[string]string{"CERTFLEET_STALL_TIMEOUT": "soon"}, "-stall-timeout: CERTFLEET_STALL_TIMEOUT"},
		{"delegated TLD allowed", []string{"-allow-special-names", "test,com"}, nil, `-allow-special-names: names: allowed special-use TLD "com": it is delegated`},
		{"stray argument", []string{"extra"}, nil, `unexpected argument "extra"`},
		{"unknown flag", []string{"-bogus"}, nil, "flag provided but not defined"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig(tc.args, env(tc.env))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
