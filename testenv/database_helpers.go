package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// FreshDatabase creates an empty database on the stack's server for one test
// and drops it when the test ends, so tests in different packages can run
// migrations and contention checks in parallel without seeing each other.
// It returns the new database's URL.
func FreshDatabase(t testing.TB) string {
	t.Helper()
	s := Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DatabaseURL)
	if err != nil {
		t.Fatalf("testenv: connecting to %s: %v", s.DatabaseKind, err)
	}
	defer conn.Close(ctx)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "certfleet_test_" + hex.EncodeToString(b)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("testenv: creating database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, s.DatabaseURL)
		if err != nil {
			t.Errorf("testenv: dropping database %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		drop := "DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"
		if s.DatabaseKind == "cockroach" {
			drop = "DROP DATABASE IF EXISTS " + name + " CASCADE"
		}
		if _, err := conn.Exec(ctx, drop); err != nil {
			t.Errorf("testenv: dropping database %s: %v", name, err)
		}
	})
	u, err := url.Parse(s.DatabaseURL)
	if err != nil {
		t.Fatalf("testenv: database URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}
