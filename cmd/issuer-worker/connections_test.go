package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/kafkaconn"
	"github.com/certfleet/certfleet/seal"
	"github.com/certfleet/certfleet/testenv"
)

// connections are testenv's production-shaped listeners: Kafka's SASL_SSL
// listener with its ACLs, PostgreSQL over TLS with certificate auth.
type connections struct {
	s testenv.Settings
}

// productionConnections fails (never skips) when the running stack lacks
// them: the tests that use them prove the production configuration.
func productionConnections(t *testing.T, s testenv.Settings) connections {
	t.Helper()
	if len(s.KafkaSASLBrokers) == 0 || s.KafkaTLSCA == "" || s.SecretsDir == "" {
		t.Fatalf("testenv has no SASL_SSL listener (%s): restart it with `go run ./cmd/testenv up`", testenv.EnvKafkaSASLBrokers)
	}
	if s.DatabaseTLSURL == "" && s.DatabaseKind != "cockroach" {
		t.Fatalf("testenv has no %s: restart it with `go run ./cmd/testenv up`", testenv.EnvDatabaseTLSURL)
	}
	return connections{s: s}
}

// kafkaEnv puts a binary on the SASL_SSL listener as principal.
func (c connections) kafkaEnv(principal string) []string { return c.s.KafkaSASLEnv(principal) }

// connector is a client of the SASL_SSL listener as principal.
func (c connections) connector(t *testing.T, principal string) *kafkaconn.Connector {
	t.Helper()
	k, err := kafkaconn.New(c.s.KafkaSASLConfig(principal))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	return k
}

// databaseURL is fresh (a FreshDatabase URL) over TLS with verify-full and
// the client certificate.
func (c connections) databaseURL(t *testing.T, fresh string) string {
	t.Helper()
	u, err := c.s.DatabaseTLSURLOf(fresh)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// keyringFile writes a new keyring to a 0600 file, as production mounts it.
func (connections) keyringFile(t *testing.T) string {
	t.Helper()
	line, err := seal.GenerateKeyText("k1")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "keyring")
	if err := os.WriteFile(p, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// aclTopics are topic names under the defaults, so testenv's ACLs (granted
// on the default names as prefixes) apply.
func aclTopics(suffix string) events.Topics {
	d := events.DefaultTopics()
	return events.Topics{Requests: d.Requests + suffix, Retry: d.Retry + suffix, DLQ: d.DLQ + suffix, Events: d.Events + suffix,
		RateLimitChanges: d.RateLimitChanges + suffix}
}
