package infraretry_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/certfleet/certfleet/internal/infraretry"
)

var (
	errOutage  = errors.New("connection refused")
	errRefused = errors.New("refused by policy")
)

func TestDo(t *testing.T) {
	uniqueViolation := &pgconn.PgError{Code: "23505", Message: "duplicate key"}
	pol := infraretry.Policy{Initial: time.Millisecond, Max: 2 * time.Millisecond,
		IsPermanent: func(err error) bool { return errors.Is(err, errRefused) },
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, tc := range []struct {
		name         string
		errs         []error // returned by the successive attempts; then success
		wantAttempts int
		wantErr      func(error) bool
	}{
		{"an outage is retried until it ends", []error{errOutage, errOutage, errOutage}, 4,
			func(err error) bool { return err == nil }},
		{"a data error is returned at once, marked", []error{uniqueViolation}, 1,
			func(err error) bool {
				var pg *pgconn.PgError
				return errors.Is(err, infraretry.ErrData) && errors.As(err, &pg) && pg.Code == "23505"
			}},
		{"a data error after an outage", []error{errOutage, uniqueViolation}, 2,
			func(err error) bool { return errors.Is(err, infraretry.ErrData) }},
		{"IsPermanent: returned unchanged", []error{errOutage, errRefused}, 2,
			func(err error) bool { return err == errRefused }},
		{"backoff.Permanent: unwrapped", []error{backoff.Permanent(errRefused)}, 1,
			func(err error) bool { return err == errRefused }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			attempts := 0
			v, err := infraretry.Do(context.Background(), pol, "recording", func(context.Context) (int, error) {
				attempts++
				if attempts <= len(tc.errs) {
					return 0, tc.errs[attempts-1]
				}
				return 42, nil
			})
			if attempts != tc.wantAttempts || !tc.wantErr(err) {
				t.Fatalf("attempts %d (want %d), err %v", attempts, tc.wantAttempts, err)
			}
			if err == nil && v != 42 {
				t.Fatalf("value %d, want f's", v)
			}
			if errors.Is(err, infraretry.ErrData) && tc.wantAttempts != len(tc.errs) {
				t.Fatal("a data error was retried")
			}
		})
	}
}

// Shutdown ends the retries: the error says so (context.Canceled) and
// carries the last failure, and is not a data error.
func TestDoStopsAtShutdown(t *testing.T) {
	for _, during := range []string{"call", "wait"} {
		t.Run(during, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			pol := infraretry.Policy{Initial: time.Millisecond, Max: time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
			if during == "wait" {
				pol.Initial, pol.Max = time.Hour, time.Hour
			}
			attempts := 0
			_, err := infraretry.Do(ctx, pol, "recording", func(context.Context) (struct{}, error) {
				attempts++
				switch {
				case during == "call" && attempts == 3:
					cancel()
				case during == "wait":
					time.AfterFunc(20*time.Millisecond, cancel) // while Do waits its hour
				}
				return struct{}{}, errOutage
			})
			if !errors.Is(err, context.Canceled) || !errors.Is(err, errOutage) || errors.Is(err, infraretry.ErrData) {
				t.Fatalf("err %v", err)
			}
			if want := map[string]int{"call": 3, "wait": 1}[during]; attempts != want {
				t.Fatalf("attempts %d, want %d", attempts, want)
			}
		})
	}
}
