package ratelimit_test

import (
	"context"
	"testing"
	"time"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/ratelimit/storetest"
	"github.com/certfleet/certfleet/schema"
	"github.com/certfleet/certfleet/testenv"
)

func TestMemStoreConformance(t *testing.T) {
	storetest.Run(t, ratelimit.NewMemStore())
}

func TestDBStoreConformance(t *testing.T) {
	storetest.Run(t, ratelimit.NewDBStore(testDB(t)))
}

// testDB is a migrated fresh database on the testenv server, closed when
// the test ends.
func testDB(t testing.TB) *db.DB {
	t.Helper()
	url := testenv.FreshDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := db.Open(ctx, db.Config{URL: url, MaxConns: 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	migrateDB(t, ctx, d)
	return d
}

func migrateDB(t testing.TB, ctx context.Context, d *db.DB) {
	t.Helper()
	if _, err := schema.Migrate(ctx, d, schema.Options{}); err != nil {
		t.Fatal(err)
	}
}
