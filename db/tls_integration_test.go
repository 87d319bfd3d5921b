package db_test

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/testenv"
)

// The database over TLS: verify-full with the testenv CA and certificate
// authentication, as CockroachDB runs in production.
func TestOpenVerifyFullWithClientCertificate(t *testing.T) {
	s := testenv.Require(t)
	if s.DatabaseKind == "cockroach" {
		t.Skip("testenv serves TLS with certificate auth on PostgreSQL only (CERTFLEET_DATABASE_TLS_URL is empty on CockroachDB)")
	}
	if s.DatabaseTLSURL == "" {
		t.Fatalf("testenv has no %s: restart it with `go run ./cmd/testenv up`", testenv.EnvDatabaseTLSURL)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	u, err := url.Parse(s.DatabaseTLSURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	if q.Get("sslmode") != "verify-full" || q.Get("sslrootcert") == "" || q.Get("sslcert") == "" || q.Get("sslkey") == "" {
		t.Fatalf("%s is not verify-full with a client certificate: %s", testenv.EnvDatabaseTLSURL, s.DatabaseTLSURL)
	}
	d, err := db.Open(ctx, db.Config{URL: s.DatabaseTLSURL})
	if err != nil {
		t.Fatal(err)
	}
	var ssl bool
	var user string
	err = d.Pool().QueryRow(ctx, "SELECT ssl, current_user FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE pid = pg_backend_pid()").Scan(&ssl, &user)
	d.Close()
	if err != nil || !ssl {
		t.Fatalf("connection is not TLS (ssl=%v, user %s): %v", ssl, user, err)
	}

	// A client key others may read is refused before connecting.
	origKey := q.Get("sslkey")
	key, err := os.ReadFile(origKey)
	if err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(t.TempDir(), "client.key")
	if err := os.WriteFile(open, key, 0o644); err != nil {
		t.Fatal(err)
	}
	q.Set("sslkey", open)
	u.RawQuery = q.Encode()
	if _, err := db.Open(ctx, db.Config{URL: u.String()}); err == nil || !strings.Contains(err.Error(), open) || !strings.Contains(err.Error(), "mode 0644") {
		t.Fatalf("world-readable sslkey: %v", err)
	}

	// A root that did not sign the server's certificate fails verification.
	q = u.Query()
	q.Set("sslkey", origKey)
	q.Set("sslrootcert", s.ACMETLSCA)
	u.RawQuery = q.Encode()
	if _, err := db.Open(ctx, db.Config{URL: u.String()}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("untrusted server certificate: %v", err)
	}
}
