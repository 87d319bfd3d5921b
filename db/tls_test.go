package db

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckTransport(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key, openKey := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"), filepath.Join(dir, "open.key")
	for f, mode := range map[string]os.FileMode{ca: 0o644, cert: 0o644, key: 0o600, openKey: 0o644} {
		if err := os.WriteFile(f, []byte("x"), mode); err != nil {
			t.Fatal(err)
		}
	}
	remote := "postgresql://certfleet@db.example.com:26257/certfleet"
	verified := remote + "?sslmode=verify-full&sslrootcert=" + ca
	noEnv := func(string) string { return "" }
	for _, tc := range []struct {
		name     string
		url      string
		env      map[string]string
		custom   *tls.Config
		insecure bool
		want     []string // nil: allowed
	}{
		{"loopback plaintext", "postgres://postgres@127.0.0.1:15432/certfleet?sslmode=disable", nil, nil, false, nil},
		{"localhost, no sslmode", "postgres://u@localhost/db", nil, nil, false, nil},
		{"ipv6 loopback", "postgres://u@[::1]:5432/db", nil, nil, false, nil},
		{"unix socket", "host=/var/run/postgresql dbname=certfleet", nil, nil, false, nil},
		{"no host", "dbname=certfleet", nil, nil, false, nil},
		{"remote, no sslmode", remote, nil, nil, false,
			[]string{"host db.example.com is not loopback", "sslmode=verify-full with sslrootcert", "prefer", "-database-insecure"}},
		{"remote, require", remote + "?sslmode=require", nil, nil, false, []string{"it has sslmode require"}},
		{"remote, verify-ca", remote + "?sslmode=verify-ca&sslrootcert=" + ca, nil, nil, false, []string{"it has sslmode verify-ca"}},
		{"remote, verify-full without root", remote + "?sslmode=verify-full", nil, nil, false, []string{"needs sslrootcert=FILE"}},
		{"remote, verify-full", verified, nil, nil, false, nil},
		{"remote, system roots", remote + "?sslrootcert=system", nil, nil, false, nil},
		{"remote, cert auth", verified + "&sslcert=" + cert + "&sslkey=" + key, nil, nil, false, nil},
		{"missing root file", remote + "?sslmode=verify-full&sslrootcert=" + dir + "/none.pem", nil, nil, false, []string{"sslrootcert", "none.pem"}},
		{"cert without key", verified + "&sslcert=" + cert, nil, nil, false, []string{"sslcert but no sslkey"}},
		{"key without cert", verified + "&sslkey=" + key, nil, nil, false, []string{"sslkey but no sslcert"}},
		{"key others may read", verified + "&sslcert=" + cert + "&sslkey=" + openKey, nil, nil, false, []string{"sslkey", openKey, "mode 0644"}},
		{"key others may read, loopback", "postgres://u@127.0.0.1/db?sslmode=verify-full&sslrootcert=" + ca + "&sslcert=" + cert + "&sslkey=" + openKey,
			nil, nil, false, []string{"mode 0644"}},
		{"insecure", remote + "?sslmode=disable", nil, nil, true, nil},
		{"second host remote", "postgres://u@127.0.0.1:1,db.example.com:2/db", nil, nil, false, []string{"host db.example.com is not loopback"}},
		{"keyword/value remote", "host=db.example.com user=u sslmode='require'", nil, nil, false, []string{"it has sslmode require"}},
		{"keyword/value verified", "host=db.example.com sslmode=verify-full sslrootcert='" + ca + "'", nil, nil, false, nil},
		{"environment fills in", remote, map[string]string{"PGSSLMODE": "verify-full", "PGSSLROOTCERT": ca}, nil, false, nil},
		{"URL wins over environment", remote + "?sslmode=prefer", map[string]string{"PGSSLMODE": "verify-full", "PGSSLROOTCERT": ca}, nil, false,
			[]string{"it has sslmode prefer"}},
		{"PGHOST remote", "dbname=certfleet", map[string]string{"PGHOST": "db.example.com"}, nil, false, []string{"db.example.com is not loopback"}},
		{"custom TLS", remote, nil, &tls.Config{ServerName: "db.example.com"}, false, nil},
		{"custom TLS, no verification", remote, nil, &tls.Config{InsecureSkipVerify: true}, false, []string{"Config.TLS skips verifying"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			getenv := noEnv
			if tc.env != nil {
				getenv = func(k string) string { return tc.env[k] }
			}
			err := checkTransport(tc.url, tc.custom, tc.insecure, getenv)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Fatalf("error %v, want %q", err, w)
				}
			}
		})
	}
}

func TestOpenRefusesBeforeConnecting(t *testing.T) {
	// No server at this address: the refusal must come from the check, at once.
	_, err := Open(context.Background(), Config{URL: "postgres://u:secretpw@db.invalid:26257/db?sslmode=require"})
	if err == nil || !strings.Contains(err.Error(), "sslmode=verify-full") || strings.Contains(err.Error(), "secretpw") {
		t.Fatalf("Open: %v", err)
	}
}

func TestConfigCheck(t *testing.T) {
	if err := (Config{}).Check(); err == nil || err.Error() != "db: config field URL is empty" {
		t.Fatalf("empty: %v", err)
	}
	if err := (Config{URL: "postgres://u@db.example.com/db"}).Check(); err == nil || !strings.Contains(err.Error(), "verify-full") {
		t.Fatalf("remote: %v", err)
	}
	if err := (Config{URL: "postgres://u@db.example.com/db", Insecure: true}).Check(); err != nil {
		t.Fatalf("insecure: %v", err)
	}
}

func TestKeywordValues(t *testing.T) {
	kv, err := keywordValues(`host=a  sslrootcert='/p a\'th' user = u dbname=x\ y`)
	if err != nil || kv["host"] != "a" || kv["sslrootcert"] != "/p a'th" || kv["user"] != "u" || kv["dbname"] != "x y" {
		t.Fatalf("%q %v", kv, err)
	}
	for _, bad := range []string{"host", "host='a"} {
		if _, err := keywordValues(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
