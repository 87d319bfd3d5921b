// Package dbtest gives a test a migrated database of its own on the testenv
// stack: an empty database (testenv.FreshDatabase, dropped when the test
// ends), opened and migrated to the newest schema. It is for tests only.
package dbtest

import (
	"context"
	"testing"
	"time"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/schema"
	"github.com/certfleet/certfleet/testenv"
)

// Migrated returns a pool over a fresh, migrated database, closed when the
// test ends (maxConns 0: db's default). It skips the test when the stack is
// off (testenv.Require).
func Migrated(t testing.TB, maxConns int32) *db.DB {
	t.Helper()
	url := testenv.FreshDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d, err := db.Open(ctx, db.Config{URL: url, MaxConns: maxConns})
	if err != nil {
		t.Fatalf("dbtest: opening the test database: %v", err)
	}
	t.Cleanup(d.Close)
	if _, err := schema.Migrate(ctx, d, schema.Options{}); err != nil {
		t.Fatalf("dbtest: migrating the test database: %v", err)
	}
	return d
}
