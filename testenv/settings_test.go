package testenv

import (
	"os/exec"
	"reflect"
	"strings"
	"testing"
)

func TestEnvFileRoundTrip(t *testing.T) {
	s := Settings{
		KafkaBrokers: []string{"127.0.0.1:19092", "127.0.0.1:19094"}, DatabaseURL: "postgres://u:p w@h/db?sslmode=disable",
		DatabaseKind: "postgres", ACMEDirectory: "https://127.0.0.1:14000/dir", ACMETLSCA: "/x/it's/ca.pem",
		PebbleRoot: "/x/root.pem", PebbleManagementURL: "https://127.0.0.1:15000", ChallTestSrvURL: "http://127.0.0.1:8055",
		DNSServer: "127.0.0.1:8054", HTTP01Port: 5002,
		DNSUpdateServer: "127.0.0.1:8054", DNSTSIGKeyFile: "/x/secrets/dns-tsig.key",
		KafkaSASLBrokers: []string{"127.0.0.1:19094"}, KafkaMTLSBrokers: []string{"127.0.0.1:19095"},
		KafkaTLSCA: "/x/tls/ca.pem", SecretsDir: "/x/secrets",
		DatabaseTLSURL:   "postgres://certfleet@127.0.0.1:15432/certfleet?sslmode=verify-full&sslrootcert=/x/tls/ca.pem",
		EABACMEDirectory: "https://127.0.0.1:14010/dir", EABKeyID: PebbleEABKeyID, EABKeyFile: "/x/secrets/pebble-eab.mac",
	}
	got, err := ParseEnvFile(s.EnvFile())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, s)
	}
	// An env file written before the EAB Pebble existed still loads; what
	// needs the EAB Pebble says to run testenv up.
	var old []string
	for _, line := range strings.Split(s.EnvFile(), "\n") {
		if !strings.HasPrefix(line, "CERTFLEET_EAB_") {
			old = append(old, line)
		}
	}
	got, err = ParseEnvFile(strings.Join(old, "\n"))
	if err != nil {
		t.Fatalf("an env file without the EAB Pebble: %v", err)
	}
	if _, err := got.EAB(); err == nil || !strings.Contains(err.Error(), "testenv up") {
		t.Fatalf("EAB() of a stack without the EAB Pebble: %v", err)
	}
}

// The env file is sourced by sh: a value with a shell operator in it (the
// TLS database URL has '&') must come back whole, not cut at the operator.
func TestEnvFileSourcesInSh(t *testing.T) {
	s := Settings{DatabaseTLSURL: "postgres://u@h/db?sslmode=verify-full&sslrootcert=/x/ca.pem&sslkey=/x/k"}
	out, err := exec.Command("sh", "-c", s.EnvFile()+"\nprintf %s \"$"+EnvDatabaseTLSURL+"\"").Output()
	if err != nil {
		t.Fatalf("sourcing the env file: %v", err)
	}
	if string(out) != s.DatabaseTLSURL {
		t.Fatalf("sh read %q, want %q", out, s.DatabaseTLSURL)
	}
}

func TestParseEnvFileErrors(t *testing.T) {
	for name, tc := range map[string]struct{ in, want string }{
		"missing keys":  {"CERTFLEET_KAFKA_BROKERS=a:1\n", "missing CERTFLEET_ACME_DIRECTORY"},
		"no equals":     {"garbage\n", "line 1: want KEY=value"},
		"bad quote":     {"CERTFLEET_DB='postgres\n", "unterminated quote"},
		"bad http port": {"CERTFLEET_HTTP01_PORT=abc\n", "not a port number"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseEnvFile(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}
