package testenv

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/certfleet/certfleet/kafkaconn"
)

// KafkaSASLEnv is the environment that puts a certfleet binary on the
// SASL_SSL listener as principal: TLS trusting the stack's CA, SCRAM-SHA-512
// with the password read from its 0600 file (kafkaconn's CERTFLEET_KAFKA_*
// variables). principal gets only its ACLs (PrincipalWorker,
// PrincipalScheduler, ...), so the topics and groups it uses must be named
// under certfleet's defaults (see kafka_acl.go).
func (s Settings) KafkaSASLEnv(principal string) []string {
	return []string{"CERTFLEET_KAFKA_BROKERS=" + strings.Join(s.KafkaSASLBrokers, ","), "CERTFLEET_KAFKA_TLS=true",
		"CERTFLEET_KAFKA_TLS_CA=" + s.KafkaTLSCA, "CERTFLEET_KAFKA_SASL_MECHANISM=scram-sha-512",
		"CERTFLEET_KAFKA_SASL_USER=" + principal, "CERTFLEET_KAFKA_SASL_PASSWORD_FILE=" + filepath.Join(s.SecretsDir, principal+".password")}
}

// KafkaSASLConfig is KafkaSASLEnv as a kafkaconn.Config, for a test or tool
// that is itself a client of the SASL_SSL listener.
func (s Settings) KafkaSASLConfig(principal string) kafkaconn.Config {
	return kafkaconn.Config{Brokers: s.KafkaSASLBrokers, TLS: true, TLSCA: s.KafkaTLSCA,
		SASLMechanism: kafkaconn.MechanismSCRAMSHA512, SASLUser: principal,
		SASLPasswordFile: filepath.Join(s.SecretsDir, principal+".password"), Timeout: 10 * time.Second}
}

// DatabaseTLSURLOf returns the database of dbURL (a FreshDatabase URL)
// reached as DatabaseTLSURL reaches certfleet's: TLS with verify-full and the
// client certificate. On CockroachDB, where the stack serves no TLS, it is
// dbURL itself.
func (s Settings) DatabaseTLSURLOf(dbURL string) (string, error) {
	if s.DatabaseTLSURL == "" {
		return dbURL, nil
	}
	db, err := url.Parse(dbURL)
	if err != nil {
		return "", fmt.Errorf("testenv: database URL: %w", err)
	}
	u, err := url.Parse(s.DatabaseTLSURL)
	if err != nil {
		return "", fmt.Errorf("testenv: %s: %w", EnvDatabaseTLSURL, err)
	}
	u.Path = db.Path
	return u.String(), nil
}
