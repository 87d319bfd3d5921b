package main

import (
	"context"
	"testing"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/schema"
	"github.com/certfleet/certfleet/testenv"
)

// migratedDatabase is a fresh, migrated database of the test's own on the
// testenv server: its URL (for a scheduler's -database-url) and a pool,
// closed when the test ends.
func migratedDatabase(t *testing.T, ctx context.Context) (string, *db.DB) {
	t.Helper()
	url := testenv.FreshDatabase(t)
	d, err := db.Open(ctx, db.Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	if _, err := schema.Migrate(ctx, d, schema.Options{}); err != nil {
		t.Fatal(err)
	}
	return url, d
}
