package schema

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/testenv"
)

func TestLoadNaming(t *testing.T) {
	for name, tc := range map[string]struct {
		files map[string]string
		want  string // error substring; "" means ok
	}{
		"ordered":       {map[string]string{"0002_b.sql": "x", "0001_a.sql": "y"}, ""},
		"no number":     {map[string]string{"init.sql": "x"}, "want NNNN_description.sql"},
		"zero":          {map[string]string{"0000_a.sql": "x"}, "want NNNN_description.sql"},
		"not sql":       {map[string]string{"0001_a.txt": "x"}, "want NNNN_description.sql"},
		"duplicate ver": {map[string]string{"0001_a.sql": "x", "1_b.sql": "y"}, "share version 1"},
	} {
		t.Run(name, func(t *testing.T) {
			fsys := fstest.MapFS{}
			for n, body := range tc.files {
				fsys["m/"+n] = &fstest.MapFile{Data: []byte(body)}
			}
			ms, err := load(fsys, "m")
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if ms[0].Version != 1 || ms[1].Version != 2 {
					t.Fatalf("order %v", ms)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestEmbeddedMigrationsAreIdempotentStatements(t *testing.T) {
	ms, err := embeddedMigrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 {
		t.Fatal("no migrations embedded")
	}
	for _, m := range ms {
		for _, stmt := range strings.Split(m.SQL, ";") {
			s := strings.ToUpper(strings.TrimSpace(stripComments(stmt)))
			for _, create := range []string{"CREATE TABLE ", "CREATE INDEX ", "CREATE UNIQUE INDEX "} {
				if strings.HasPrefix(s, create) && !strings.HasPrefix(s, create+"IF NOT EXISTS") {
					t.Errorf("%s: %q is not idempotent; use IF NOT EXISTS", m.Name, firstLine(s))
				}
			}
			for _, banned := range []*regexp.Regexp{serialType, regexp.MustCompile(`CREATE TRIGGER|\bLISTEN\b|\bNOTIFY\b|PG_ADVISORY`)} {
				if banned.MatchString(s) {
					t.Errorf("%s: %q uses %s, which the database rules forbid (docs/contracts.md, \"Database rules\")", m.Name, firstLine(s), banned)
				}
			}
		}
	}
}

// serialType matches a column typed SERIAL (not a column named serial).
var serialType = regexp.MustCompile(`\w\s+(BIG|SMALL)?SERIAL\b`)

func stripComments(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if i := strings.Index(l, "--"); i >= 0 {
			l = l[:i]
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }

func openFresh(t *testing.T) *db.DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := db.Open(ctx, db.Config{URL: testenv.FreshDatabase(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

// Four processes migrating one database at once: every migration is applied
// exactly once, nobody fails, and a later run has nothing to do.
func TestMigrateConcurrentlyAppliesOnce(t *testing.T) {
	d := openFresh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ms, _ := embeddedMigrations()
	var mu sync.Mutex
	total := 0
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := Migrate(ctx, d, Options{Poll: 20 * time.Millisecond})
			if err != nil {
				t.Errorf("migrator %d: %v", i, err)
			}
			mu.Lock()
			total += len(got)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if total != len(ms) {
		t.Fatalf("migrations applied %d times in total, want %d (each once)", total, len(ms))
	}
	var n int
	if err := d.Pool().QueryRow(ctx, `SELECT count(*) FROM schema_migrations`).Scan(&n); err != nil || n != len(ms) {
		t.Fatalf("schema_migrations has %d rows (%v), want %d", n, err, len(ms))
	}
	again, err := Migrate(ctx, d, Options{})
	if err != nil || len(again) != 0 {
		t.Fatalf("second run applied %v, err %v; want nothing", again, err)
	}
	// The tables exist and are usable.
	if _, err := d.Pool().Exec(ctx, `INSERT INTO leases (name, holder, token, expires_at) VALUES ('t', 'me', 1, now())`); err != nil {
		t.Fatalf("using a migrated table: %v", err)
	}
}

// Editing an applied migration is reported, not silently ignored.
func TestMigrateDetectsEditedMigration(t *testing.T) {
	d := openFresh(t)
	ctx := context.Background()
	m := []migration{{Version: 1, Name: "0001_t.sql", SQL: "CREATE TABLE IF NOT EXISTS t (id INT PRIMARY KEY)", Checksum: "aaaa"}}
	if _, err := apply(ctx, d, m, Options{}); err != nil {
		t.Fatal(err)
	}
	m[0].Checksum = "bbbb"
	if _, err := apply(ctx, d, m, Options{}); !errors.Is(err, ErrChecksum) {
		t.Fatalf("err = %v, want ErrChecksum", err)
	}
}

// A migrator waits while another holds the lock and gives up cleanly when
// its context ends; an expired lock (crashed holder) is taken over.
func TestMigrateLock(t *testing.T) {
	d := openFresh(t)
	ctx := context.Background()
	if _, err := apply(ctx, d, nil, Options{}); err != nil { // creates the bookkeeping tables
		t.Fatal(err)
	}
	if _, err := d.Pool().Exec(ctx, `INSERT INTO schema_migration_lock VALUES (1, 'other', now() + INTERVAL '1 hour')`); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := Migrate(short, d, Options{Poll: 20 * time.Millisecond}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want to wait for the held lock until the deadline", err)
	}
	if _, err := d.Pool().Exec(ctx, `UPDATE schema_migration_lock SET expires_at = now() - INTERVAL '1 second'`); err != nil {
		t.Fatal(err)
	}
	if _, err := Migrate(ctx, d, Options{}); err != nil {
		t.Fatalf("expired lock not taken over: %v", err)
	}
	var n int
	_ = d.Pool().QueryRow(ctx, `SELECT count(*) FROM schema_migration_lock`).Scan(&n)
	if n != 0 {
		t.Fatalf("lock row left behind after Migrate")
	}
}
