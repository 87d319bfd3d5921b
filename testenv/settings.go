// Package testenv starts, checks and stops certfleet's real local stack on loopback
// (Apache Kafka in KRaft mode, PostgreSQL or CockroachDB, Pebble with
// pebble-challtestsrv, BIND 9 for DNS-01) and hands its connection settings to tests.
//
// It owns the processes it starts (tracked by pid files under its state
// directory, `.testenv/` at the repository root by default) and the env file
// it writes there. It must not touch processes or data it did not create.
//
// Start the stack with `make testenv-up` (or `go run ./cmd/testenv up`); tests
// call Require to get the settings. Require fails a test whose stack is not
// running; it skips only when CERTFLEET_TESTENV=off says so explicitly.
package testenv

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Settings is how to reach a running stack. Every field is also written to the
// env file as the environment variable named in its tag comment, so shells,
// make targets and other languages can use the same stack.
type Settings struct {
	KafkaBrokers        []string // CERTFLEET_KAFKA_BROKERS, comma separated host:port
	DatabaseURL         string   // CERTFLEET_DATABASE_URL, a pgx/libpq URL
	DatabaseKind        string   // CERTFLEET_DB: "postgres" or "cockroach"
	ACMEDirectory       string   // CERTFLEET_ACME_DIRECTORY, Pebble's directory URL
	ACMETLSCA           string   // CERTFLEET_ACME_TLS_CA, PEM file that signs Pebble's HTTPS certificate
	PebbleRoot          string   // CERTFLEET_PEBBLE_ROOT, PEM file with Pebble's current issuing root
	PebbleManagementURL string   // CERTFLEET_PEBBLE_MANAGEMENT_URL, Pebble's management API (roots, ARI)
	ChallTestSrvURL     string   // CERTFLEET_CHALLTESTSRV_URL, pebble-challtestsrv's management API
	DNSServer           string   // CERTFLEET_DNS_SERVER, the resolver Pebble validates through (BIND: the test zones, challtestsrv behind it)
	HTTP01Port          int      // CERTFLEET_HTTP01_PORT, where Pebble validates HTTP-01 (served by challtestsrv)
	DNSUpdateServer     string   // CERTFLEET_DNS_UPDATE_SERVER, the authoritative server of DNSZone and DNSDelegationZone taking RFC 2136 updates
	DNSTSIGKeyFile      string   // CERTFLEET_DNS_TSIG_KEY_FILE, the TSIG key those updates are signed with (BIND's format, 0600)

	// The production-shaped connections (docs in README, "The local stack").
	KafkaSASLBrokers []string // CERTFLEET_KAFKA_SASL_BROKERS: SASL_SSL (PLAIN, SCRAM-SHA-256/512) with ACLs
	KafkaMTLSBrokers []string // CERTFLEET_KAFKA_MTLS_BROKERS: SSL with a required client certificate (principal = CN)
	KafkaTLSCA       string   // CERTFLEET_KAFKA_TLS_CA: PEM CA of both listeners' certificates
	SecretsDir       string   // CERTFLEET_TESTENV_SECRETS: per principal P.password, P.crt, P.key (0600); database.crt/.key
	DatabaseTLSURL   string   // CERTFLEET_DATABASE_TLS_URL: the database over TLS, verify-full, certificate auth (PostgreSQL only)

	// The second Pebble, which requires External Account Binding. Optional
	// when loading: an env file written before it existed lacks them, and
	// Settings.EAB says to run testenv up.
	EABACMEDirectory string // CERTFLEET_EAB_ACME_DIRECTORY: its directory URL (HTTPS under ACMETLSCA)
	EABKeyID         string // CERTFLEET_EAB_KEY_ID: the key id it knows
	EABKeyFile       string // CERTFLEET_EAB_KEY_FILE: its MAC key, base64url, in a 0600 file
}

// Environment variable names; kept in one place so the env file, the CLI and
// the docs agree.
const (
	EnvKafkaBrokers        = "CERTFLEET_KAFKA_BROKERS"
	EnvDatabaseURL         = "CERTFLEET_DATABASE_URL"
	EnvDatabaseKind        = "CERTFLEET_DB"
	EnvACMEDirectory       = "CERTFLEET_ACME_DIRECTORY"
	EnvACMETLSCA           = "CERTFLEET_ACME_TLS_CA"
	EnvPebbleRoot          = "CERTFLEET_PEBBLE_ROOT"
	EnvPebbleManagementURL = "CERTFLEET_PEBBLE_MANAGEMENT_URL"
	EnvChallTestSrvURL     = "CERTFLEET_CHALLTESTSRV_URL"
	EnvDNSServer           = "CERTFLEET_DNS_SERVER"
	EnvHTTP01Port          = "CERTFLEET_HTTP01_PORT"
	EnvDNSUpdateServer     = "CERTFLEET_DNS_UPDATE_SERVER"
	EnvDNSTSIGKeyFile      = "CERTFLEET_DNS_TSIG_KEY_FILE"
	EnvKafkaSASLBrokers    = "CERTFLEET_KAFKA_SASL_BROKERS"
	EnvKafkaMTLSBrokers    = "CERTFLEET_KAFKA_MTLS_BROKERS"
	EnvKafkaTLSCA          = "CERTFLEET_KAFKA_TLS_CA"
	EnvSecretsDir          = "CERTFLEET_TESTENV_SECRETS"
	EnvDatabaseTLSURL      = "CERTFLEET_DATABASE_TLS_URL"
	EnvEABACMEDirectory    = "CERTFLEET_EAB_ACME_DIRECTORY"
	EnvEABKeyID            = "CERTFLEET_EAB_KEY_ID"
	EnvEABKeyFile          = "CERTFLEET_EAB_KEY_FILE"

	// EnvSwitch set to "off" makes Require skip (pure unit runs). Any other
	// value, or none, means integration tests must have the stack.
	EnvSwitch = "CERTFLEET_TESTENV"
	// EnvStateDir overrides where the stack keeps pid files, data and the env file.
	EnvStateDir = "CERTFLEET_TESTENV_DIR"
)

// optionalVars may be missing from an env file: a stack started by an older
// testenv lacks them, and the tests that need them say to run testenv up.
var optionalVars = map[string]bool{EnvEABACMEDirectory: true, EnvEABKeyID: true, EnvEABKeyFile: true,
	EnvDNSUpdateServer: true, EnvDNSTSIGKeyFile: true}

// ErrNotRunning means no env file was found: the stack was never started
// (or was stopped).
var ErrNotRunning = errors.New("testenv: the local stack is not running")

// vars returns the settings as environment variables, sorted by name.
func (s Settings) vars() [][2]string {
	v := [][2]string{
		{EnvKafkaBrokers, strings.Join(s.KafkaBrokers, ",")},
		{EnvDatabaseURL, s.DatabaseURL},
		{EnvDatabaseKind, s.DatabaseKind},
		{EnvACMEDirectory, s.ACMEDirectory},
		{EnvACMETLSCA, s.ACMETLSCA},
		{EnvPebbleRoot, s.PebbleRoot},
		{EnvPebbleManagementURL, s.PebbleManagementURL},
		{EnvChallTestSrvURL, s.ChallTestSrvURL},
		{EnvDNSServer, s.DNSServer},
		{EnvHTTP01Port, fmt.Sprint(s.HTTP01Port)},
		{EnvDNSUpdateServer, s.DNSUpdateServer},
		{EnvDNSTSIGKeyFile, s.DNSTSIGKeyFile},
		{EnvKafkaSASLBrokers, strings.Join(s.KafkaSASLBrokers, ",")},
		{EnvKafkaMTLSBrokers, strings.Join(s.KafkaMTLSBrokers, ",")},
		{EnvKafkaTLSCA, s.KafkaTLSCA},
		{EnvSecretsDir, s.SecretsDir},
		{EnvDatabaseTLSURL, s.DatabaseTLSURL},
		{EnvEABACMEDirectory, s.EABACMEDirectory},
		{EnvEABKeyID, s.EABKeyID},
		{EnvEABKeyFile, s.EABKeyFile},
	}
	sort.Slice(v, func(i, j int) bool { return v[i][0] < v[j][0] })
	return v
}

// EnvFile renders the settings as a file that `sh` can source
// (`set -a; . .testenv/env; set +a`) and ParseEnvFile can read back.
func (s Settings) EnvFile() string {
	var b strings.Builder
	b.WriteString("# certfleet testenv settings, written by `testenv up`; source with: set -a; . ./.testenv/env; set +a\n")
	for _, kv := range s.vars() {
		fmt.Fprintf(&b, "%s=%s\n", kv[0], shellQuote(kv[1]))
	}
	// Not a setting of the stack but what its CA needs: the binaries and the
	// CLI accept Pebble's lab names (LabNames).
	fmt.Fprintf(&b, "%s=%s\n", EnvAllowSpecialNames, shellQuote(labNamesList()))
	return b.String()
}

// shellQuote quotes v for POSIX sh when it holds anything but safe characters.
func shellQuote(v string) string {
	safe := true
	for _, r := range v {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:@,=?%+", r)) {
			safe = false
			break
		}
	}
	if safe && v != "" {
		return v
	}
	return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'"
}

// ParseEnvFile reads the format EnvFile writes (KEY=value, KEY='quoted value',
// comments and blank lines).
func ParseEnvFile(data string) (Settings, error) {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return Settings{}, fmt.Errorf("testenv: env file line %d: want KEY=value, got %q", n, line)
		}
		if strings.HasPrefix(v, "'") {
			if len(v) < 2 || !strings.HasSuffix(v, "'") {
				return Settings{}, fmt.Errorf("testenv: env file line %d: unterminated quote", n)
			}
			v = strings.ReplaceAll(v[1:len(v)-1], `'\''`, "'")
		}
		m[k] = v
	}
	if err := sc.Err(); err != nil {
		return Settings{}, fmt.Errorf("testenv: reading env file: %w", err)
	}
	return settingsFrom(func(k string) string { return m[k] })
}

// settingsFrom builds Settings from a lookup (the env file or the process
// environment) and checks that nothing required is missing.
func settingsFrom(get func(string) string) (Settings, error) {
	s := Settings{
		DatabaseURL:         get(EnvDatabaseURL),
		DatabaseKind:        get(EnvDatabaseKind),
		ACMEDirectory:       get(EnvACMEDirectory),
		ACMETLSCA:           get(EnvACMETLSCA),
		PebbleRoot:          get(EnvPebbleRoot),
		PebbleManagementURL: get(EnvPebbleManagementURL),
		ChallTestSrvURL:     get(EnvChallTestSrvURL),
		DNSServer:           get(EnvDNSServer),
		DNSUpdateServer:     get(EnvDNSUpdateServer),
		DNSTSIGKeyFile:      get(EnvDNSTSIGKeyFile),
		KafkaTLSCA:          get(EnvKafkaTLSCA),
		SecretsDir:          get(EnvSecretsDir),
		DatabaseTLSURL:      get(EnvDatabaseTLSURL),
		EABACMEDirectory:    get(EnvEABACMEDirectory),
		EABKeyID:            get(EnvEABKeyID),
		EABKeyFile:          get(EnvEABKeyFile),
	}
	for env, dst := range map[string]*[]string{EnvKafkaBrokers: &s.KafkaBrokers, EnvKafkaSASLBrokers: &s.KafkaSASLBrokers, EnvKafkaMTLSBrokers: &s.KafkaMTLSBrokers} {
		if b := get(env); b != "" {
			*dst = strings.Split(b, ",")
		}
	}
	if p := get(EnvHTTP01Port); p != "" {
		if _, err := fmt.Sscan(p, &s.HTTP01Port); err != nil {
			return Settings{}, fmt.Errorf("testenv: %s=%q is not a port number", EnvHTTP01Port, p)
		}
	}
	var missing []string
	for _, kv := range s.vars() {
		if kv[0] == EnvDatabaseTLSURL && s.DatabaseKind == "cockroach" {
			continue // cockroach start-single-node runs --insecure here
		}
		if optionalVars[kv[0]] {
			continue
		}
		if kv[1] == "" || kv[1] == "0" {
			missing = append(missing, kv[0])
		}
	}
	if len(missing) > 0 {
		return Settings{}, fmt.Errorf("testenv: settings incomplete, missing %s", strings.Join(missing, ", "))
	}
	return s, nil
}

// StateDir is where the stack keeps its pid files, data, logs and env file:
// $CERTFLEET_TESTENV_DIR, else .testenv at the repository root (the nearest
// directory above the working directory holding go.mod).
func StateDir() (string, error) {
	if d := os.Getenv(EnvStateDir); d != "" {
		return filepath.Abs(d)
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("testenv: finding the state directory: %w", err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, ".testenv"), nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("testenv: no go.mod above %s; set %s", dir, EnvStateDir)
		}
	}
}

// Load returns the settings of the running stack: from the process
// environment when CERTFLEET_KAFKA_BROKERS is set there (someone sourced the
// env file or points tests at another stack), else from the env file in the
// state directory. It returns ErrNotRunning when there is neither.
func Load() (Settings, error) {
	if os.Getenv(EnvKafkaBrokers) != "" {
		return settingsFrom(os.Getenv)
	}
	dir, err := StateDir()
	if err != nil {
		return Settings{}, err
	}
	data, err := os.ReadFile(filepath.Join(dir, "env"))
	if errors.Is(err, os.ErrNotExist) {
		return Settings{}, ErrNotRunning
	}
	if err != nil {
		return Settings{}, fmt.Errorf("testenv: reading env file: %w", err)
	}
	return ParseEnvFile(string(data))
}
