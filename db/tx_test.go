package db_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/testenv"
)

func open(t *testing.T) *db.DB {
	t.Helper()
	url := testenv.FreshDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := db.Open(ctx, db.Config{URL: url, MaxConns: 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

// 8 goroutines increment one row by read-then-write at SERIALIZABLE. Every
// increment must survive (no lost update), and the contention must really
// have happened (retries > 0), or the test proves nothing.
func TestExecuteTxNoLostUpdate(t *testing.T) {
	d := open(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if _, err := d.Pool().Exec(ctx, `CREATE TABLE counter (id INT PRIMARY KEY, n INT NOT NULL); INSERT INTO counter VALUES (1, 0)`); err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 25
	var attempts atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				err := d.ExecuteTx(ctx, func(tx pgx.Tx) error {
					attempts.Add(1)
					var n int
					if err := tx.QueryRow(ctx, `SELECT n FROM counter WHERE id = 1`).Scan(&n); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, `UPDATE counter SET n = $1 WHERE id = 1`, n+1)
					return err
				})
				if err != nil {
					t.Errorf("increment: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	var n int
	if err := d.Pool().QueryRow(ctx, `SELECT n FROM counter WHERE id = 1`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != workers*each {
		t.Fatalf("counter = %d after %d committed increments: lost updates", n, workers*each)
	}
	if attempts.Load() == workers*each {
		t.Fatalf("no transaction was retried: the test did not create contention")
	}
	t.Logf("%s: %d increments took %d attempts", d.Kind(), workers*each, attempts.Load())
}

// Write skew: two doctors are on call; each transaction checks that at
// least two are on call, then takes itself off. Both read before either
// writes (a barrier on the first attempt forces the interleaving). Under
// SERIALIZABLE with a correct retry loop exactly one leaves, and ExecuteTx
// never reports both as committed.
func TestExecuteTxWriteSkewNeverBothCommit(t *testing.T) {
	d := open(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if _, err := d.Pool().Exec(ctx, `CREATE TABLE oncall (doctor TEXT PRIMARY KEY, on_call BOOL NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	var retried atomic.Int64
	for round := 0; round < 20; round++ {
		if _, err := d.Pool().Exec(ctx, `DELETE FROM oncall; INSERT INTO oncall VALUES ('alice', true), ('bob', true)`); err != nil {
			t.Fatal(err)
		}
		var readBoth sync.WaitGroup
		readBoth.Add(2)
		left := make([]bool, 2)
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i, who := range []string{"alice", "bob"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				first := true
				errs[i] = d.ExecuteTx(ctx, func(tx pgx.Tx) error {
					left[i] = false
					if !first {
						retried.Add(1)
					}
					var n int
					if err := tx.QueryRow(ctx, `SELECT count(*) FROM oncall WHERE on_call`).Scan(&n); err != nil {
						return err
					}
					if first {
						first = false
						readBoth.Done()
						readBoth.Wait()
					}
					if n < 2 {
						return nil // someone must stay on call
					}
					if _, err := tx.Exec(ctx, `UPDATE oncall SET on_call = false WHERE doctor = $1`, who); err != nil {
						return err
					}
					left[i] = true
					return nil
				})
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if left[0] && left[1] {
			t.Fatalf("round %d: both transactions reported committing their leave: write skew", round)
		}
		var n int
		if err := d.Pool().QueryRow(ctx, `SELECT count(*) FROM oncall WHERE on_call`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Fatalf("round %d: %d doctors on call, want exactly 1", round, n)
		}
	}
	if retried.Load() == 0 {
		t.Fatal("no transaction was retried: the interleaving was not forced")
	}
}

// Errors that are not serialization failures are returned at once, unwrapped
// enough for errors.As, and fn is not re-run.
func TestExecuteTxReturnsOtherErrors(t *testing.T) {
	d := open(t)
	ctx := context.Background()
	calls := 0
	err := d.ExecuteTx(ctx, func(tx pgx.Tx) error {
		calls++
		_, err := tx.Exec(ctx, `SELECT * FROM no_such_table`)
		return err
	})
	var pg *pgconn.PgError
	if !errors.As(err, &pg) || pg.Code != "42P01" {
		t.Fatalf("err = %v, want undefined_table", err)
	}
	if calls != 1 {
		t.Fatalf("fn ran %d times, want 1", calls)
	}
	sentinel := errors.New("business rule")
	if err := d.ExecuteTx(ctx, func(pgx.Tx) error { return sentinel }); !errors.Is(err, sentinel) {
		t.Fatalf("err = %v, want the fn's own error", err)
	}
}

func TestOpenErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := db.Open(ctx, db.Config{}); err == nil || err.Error() != "db: config field URL is empty" {
		t.Fatalf("empty URL: %v", err)
	}
	_, err := db.Open(ctx, db.Config{URL: "postgres://user:s3cret@127.0.0.1:1/x?sslmode=bogus"})
	if err == nil {
		t.Fatal("bad sslmode accepted")
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("error leaks the password: %v", err)
	}
}

// DataError tells the errors a retry cannot cure from those it can, on the
// errors the real database returns.
func TestDataError(t *testing.T) {
	d := open(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := d.Pool().Exec(ctx, `CREATE TABLE t (id INT PRIMARY KEY, v TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Pool().Exec(ctx, `INSERT INTO t VALUES (1, 'a')`); err != nil {
		t.Fatal(err)
	}
	exec := func(sql string, args ...any) error {
		_, err := d.Pool().Exec(ctx, sql, args...)
		return err
	}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"NUL byte in text (22021)", exec(`INSERT INTO t VALUES (2, $1)`, "a\x00b"), true},
		{"unique violation (23505)", exec(`INSERT INTO t VALUES (1, 'b')`), true},
		{"not-null violation (23502)", exec(`INSERT INTO t VALUES (3, NULL)`), true},
		{"missing table (42P01): a deploy problem, retried", exec(`INSERT INTO nope VALUES (1)`), false},
		{"serialization failure (40001)", &pgconn.PgError{Code: "40001"}, false},
		{"connection refused", errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), false},
		{"nil", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.err == nil && tc.name != "nil" {
				t.Fatal("the statement did not fail")
			}
			if got := db.DataError(tc.err); got != tc.want {
				t.Errorf("DataError(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}
