// Package infraretry retries calls to infrastructure (the database, Kafka)
// whose failure says nothing about the record being handled: a consumer
// keeps the record and tries again, with capped jittered exponential
// backoff, until the call succeeds, the error is one retrying cannot cure
// (the record's own data, or one the caller marks permanent), or ctx ends
// (shutdown). Only the first kind of error is worth dead-lettering a
// record for; a database or broker outage is not.
package infraretry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/certfleet/certfleet/db"
)

// ErrData is wrapped by the error Do returns when the failure was caused by
// the data sent (Policy.IsData): the same call with the same data fails the
// same way.
var ErrData = errors.New("the database refused the record's data")

// Policy says how Do waits and what it gives up on. The zero value means
// every default.
type Policy struct {
	// Initial is the first wait (default 50 ms); it doubles, jittered, up to
	// Max (default 5 s). There is no limit on the number of attempts.
	Initial, Max time.Duration
	// IsData reports an error caused by the data itself (default
	// db.DataError: SQLSTATE classes 22 and 23).
	IsData func(error) bool
	// IsPermanent reports an error to return at once, unchanged (for
	// example a refusal or a lost ownership). Default none; an error
	// wrapped with backoff.Permanent is always permanent.
	IsPermanent func(error) bool
	// Logger gets a warning at the first failure and every tenth after it
	// (default slog.Default()).
	Logger *slog.Logger
}

// Do runs f until it succeeds and returns its value, or returns:
//   - f's error unchanged when Policy.IsPermanent says so (or it is a
//     *backoff.PermanentError, unwrapped);
//   - an error wrapping ErrData and f's error, prefixed with what, when
//     Policy.IsData says so;
//   - when ctx ends, f's last error joined with ctx's error (so
//     errors.Is(err, context.Canceled) holds and callers can tell a
//     shutdown from a failure).
//
// Every other error is taken for an infrastructure failure and retried.
func Do[T any](ctx context.Context, p Policy, what string, f func(context.Context) (T, error)) (T, error) {
	initial, maxWait := p.Initial, p.Max
	if initial <= 0 {
		initial = 50 * time.Millisecond
	}
	if maxWait <= 0 {
		maxWait = 5 * time.Second
	}
	isData := p.IsData
	if isData == nil {
		isData = db.DataError
	}
	log := p.Logger
	if log == nil {
		log = slog.Default()
	}
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(initial),
		backoff.WithMaxInterval(maxWait),
		backoff.WithMaxElapsedTime(0),
	)
	attempt := 0
	var last error
	v, err := backoff.RetryWithData(func() (T, error) {
		attempt++
		v, err := f(ctx)
		if err == nil {
			return v, nil
		}
		last = err
		var perm *backoff.PermanentError
		switch {
		case errors.As(err, &perm):
			return v, err
		case p.IsPermanent != nil && p.IsPermanent(err):
			return v, backoff.Permanent(err)
		case ctx.Err() != nil:
			return v, backoff.Permanent(errors.Join(err, ctx.Err()))
		case isData(err):
			return v, backoff.Permanent(fmt.Errorf("%s: %w: %w", what, ErrData, err))
		}
		if attempt == 1 || attempt%10 == 0 {
			log.Warn(what+" failed; retrying", "attempt", attempt, "err", err)
		}
		return v, err
	}, backoff.WithContext(b, ctx))
	if err != nil && last != nil && err == ctx.Err() {
		// ctx ended during a wait between attempts.
		err = errors.Join(last, err)
	}
	return v, err
}
