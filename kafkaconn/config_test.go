package kafkaconn

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/internal/envflag"
)

func parse(t *testing.T, args []string, env map[string]string) (*Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	s := envflag.New(fs, func(k string) string { return env[k] })
	c := RegisterFlags(s)
	return c, s.Parse(args)
}

func TestFlagsAndEnvironment(t *testing.T) {
	env := map[string]string{
		"CERTFLEET_KAFKA_BROKERS": "a:1,b:2", "CERTFLEET_KAFKA_TLS": "true", "CERTFLEET_KAFKA_TLS_CA": "/env/ca.pem",
		"CERTFLEET_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "CERTFLEET_KAFKA_SASL_USER": "envuser",
		"CERTFLEET_KAFKA_SASL_PASSWORD_FILE": "/env/pw", "CERTFLEET_KAFKA_TIMEOUT": "3s",
	}
	c, err := parse(t, nil, env)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.brokers(); strings.Join(got, " ") != "a:1 b:2" || !c.TLS || c.TLSCA != "/env/ca.pem" || c.SASLUser != "envuser" ||
		c.mechanism() != MechanismSCRAMSHA512 || c.Timeout != 3*time.Second {
		t.Fatalf("from the environment: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("valid environment: %v", err)
	}
	// Flags win; -brokers is an alias of -kafka-brokers.
	c, err = parse(t, []string{"-brokers", " c:3 , d:4 ", "-kafka-sasl-user", "flaguser", "-kafka-timeout", "1s", "-kafka-tls=false",
		"-kafka-insecure-sasl-plaintext"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.brokers(); strings.Join(got, " ") != "c:3 d:4" || c.TLS || c.SASLUser != "flaguser" || c.Timeout != time.Second {
		t.Fatalf("flags over the environment: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("insecure SASL plaintext allowed: %v", err)
	}
	c, _ = parse(t, []string{"-kafka-brokers", "e:5"}, nil)
	if c.Timeout != DefaultTimeout || strings.Join(c.brokers(), "") != "e:5" {
		t.Fatalf("defaults: %+v", c)
	}
	// An environment value that does not parse names the flag and the variable.
	_, err = parse(t, nil, map[string]string{"CERTFLEET_KAFKA_TLS": "yes", "CERTFLEET_KAFKA_TIMEOUT": "soon"})
	for _, want := range []string{`-kafka-tls: CERTFLEET_KAFKA_TLS="yes"`, `-kafka-timeout: CERTFLEET_KAFKA_TIMEOUT="soon"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("bad environment: %v, want %q", err, want)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := Config{Brokers: []string{"k:9093"}}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string // "" means valid
	}{
		{"plaintext", func(*Config) {}, ""},
		{"no brokers", func(c *Config) { c.Brokers = nil }, "-kafka-brokers: required"},
		{"no port", func(c *Config) { c.Brokers = []string{"kafka"} }, `-kafka-brokers: "kafka" is not host:port`},
		{"bad port", func(c *Config) { c.Brokers = []string{"kafka:x"} }, `port "x" is not a number`},
		{"tls", func(c *Config) { c.TLS, c.TLSCA = true, "/ca.pem" }, ""},
		{"mtls", func(c *Config) { c.TLS, c.TLSCert, c.TLSKey = true, "/c.pem", "/k.pem" }, ""},
		{"cert without key", func(c *Config) { c.TLS, c.TLSCert = true, "/c.pem" }, "-kafka-tls-key: required with -kafka-tls-cert"},
		{"key without cert", func(c *Config) { c.TLS, c.TLSKey = true, "/k.pem" }, "-kafka-tls-cert: required with -kafka-tls-key"},
		{"cert without tls", func(c *Config) { c.TLSCert, c.TLSKey = "/c.pem", "/k.pem" }, "-kafka-tls-cert: needs -kafka-tls"},
		{"server name without tls", func(c *Config) { c.TLSServerName = "kafka" }, "-kafka-tls-server-name: needs -kafka-tls"},
		{"ca without tls is ignored", func(c *Config) { c.TLSCA = "/ca.pem" }, ""},
		{"scram over tls", func(c *Config) {
			c.TLS, c.SASLMechanism, c.SASLUser, c.SASLPasswordFile = true, "scram-sha-256", "u", "/pw"
		}, ""},
		{"sasl without tls", func(c *Config) { c.SASLMechanism, c.SASLUser, c.SASLPasswordFile = "plain", "u", "/pw" },
			"-kafka-sasl-mechanism: plain without TLS would send the credentials in clear"},
		{"sasl without tls, insecure", func(c *Config) {
			c.SASLMechanism, c.SASLUser, c.SASLPasswordFile, c.InsecureSASLPlaintext = "plain", "u", "/pw", true
		}, ""},
		{"unknown mechanism", func(c *Config) { c.TLS, c.SASLMechanism = true, "gssapi" }, `-kafka-sasl-mechanism: "gssapi": want plain`},
		{"no user", func(c *Config) { c.TLS, c.SASLMechanism, c.SASLPasswordFile = true, "scram-sha-512", "/pw" }, "-kafka-sasl-user: required"},
		{"no password", func(c *Config) { c.TLS, c.SASLMechanism, c.SASLUser = true, "scram-sha-512", "u" }, "-kafka-sasl-password-file: required"},
		{"user without mechanism", func(c *Config) { c.SASLUser = "u" }, "-kafka-sasl-mechanism: required with -kafka-sasl-user"},
		{"password without mechanism", func(c *Config) { c.SASLPasswordFile = "/pw" }, "-kafka-sasl-mechanism: required with -kafka-sasl-password-file"},
		{"timeout", func(c *Config) { c.Timeout = time.Hour }, "-kafka-timeout: 1h0m0s is not between"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("valid config refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if _, nerr := New(c); tc.want != "" && (nerr == nil || nerr.Error() != err.Error()) {
				t.Fatalf("New: %v, want Validate's error", nerr)
			}
		})
	}
}

func TestNewReadsFiles(t *testing.T) {
	dir := t.TempDir()
	pki := newTestPKI(t, dir)
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := Config{Brokers: []string{"127.0.0.1:1"}, TLS: true, TLSCA: pki.caFile, TLSCert: pki.clientCert, TLSKey: pki.clientKey,
		SASLMechanism: "SCRAM-SHA-512", SASLUser: "worker", SASLPasswordFile: pw}
	c, err := New(good)
	if err != nil {
		t.Fatal(err)
	}
	if c.Principal() != "worker" || c.tls == nil || len(c.tls.Certificates) != 1 || c.mech == nil || c.mech.Name() != "SCRAM-SHA-512" {
		t.Fatalf("connector: %v principal %s", c, c.Principal())
	}
	if s := c.String(); strings.Contains(s, "s3cret") || !strings.Contains(s, "sasl scram-sha-512 as worker") {
		t.Fatalf("String() = %q", s)
	}
	c, _ = New(Config{Brokers: []string{"127.0.0.1:1"}, TLS: true, TLSCA: pki.caFile, TLSCert: pki.clientCert, TLSKey: pki.clientKey})
	if c.Principal() != "client" {
		t.Fatalf("mTLS principal %q, want the certificate's CN", c.Principal())
	}

	worldReadable := filepath.Join(dir, "pw-644")
	if err := os.WriteFile(worldReadable, []byte("s3cret"), 0o644); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "ca.txt")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	keyOpen := filepath.Join(dir, "key-640")
	data, _ := os.ReadFile(pki.clientKey)
	if err := os.WriteFile(keyOpen, data, 0o640); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want []string
	}{
		{"password file readable by others", func(c *Config) { c.SASLPasswordFile = worldReadable },
			[]string{"-kafka-sasl-password-file", worldReadable, "mode 0644"}},
		{"missing password file", func(c *Config) { c.SASLPasswordFile = filepath.Join(dir, "none") },
			[]string{"-kafka-sasl-password-file", "none"}},
		{"key readable by group", func(c *Config) { c.TLSKey = keyOpen }, []string{"-kafka-tls-key", keyOpen, "mode 0640"}},
		{"ca not PEM", func(c *Config) { c.TLSCA = notPEM }, []string{"-kafka-tls-ca", notPEM, "no PEM certificate"}},
		{"missing ca", func(c *Config) { c.TLSCA = filepath.Join(dir, "none.pem") }, []string{"-kafka-tls-ca", "none.pem"}},
		{"key of another certificate", func(c *Config) { c.TLSCert = pki.serverCert }, []string{"-kafka-tls-cert", "-kafka-tls-key"}},
		{"expired client certificate", func(c *Config) { c.TLSCert, c.TLSKey = pki.expiredCert, pki.expiredKey },
			[]string{"-kafka-tls-cert", pki.expiredCert, "is valid only from"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.edit(&c)
			_, err := New(c)
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Fatalf("New: %v, want %q", err, w)
				}
			}
		})
	}
}
