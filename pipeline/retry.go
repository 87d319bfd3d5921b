package pipeline

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/ratelimit"
)

// errDataRefused marks an error caused by the record's own data (a database
// data error, db.DataError, or a batch the limiter refuses,
// ratelimit.ErrInvalidRequest): retrying cannot help, so the record is
// dead-lettered.
var errDataRefused = errors.New("the database refused the request's data")

// retry runs f until it succeeds, returns a permanent error, or ctx ends,
// with capped jittered exponential backoff: for database and Kafka calls whose
// failure says nothing about the job itself.
func retry[T any](ctx context.Context, w *Worker, what string, f func(context.Context) (T, error)) (T, error) {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(50*time.Millisecond),
		backoff.WithMaxInterval(w.cfg.InfraBackoffMax),
		backoff.WithMaxElapsedTime(0),
	)
	attempt := 0
	return backoff.RetryWithData(func() (T, error) {
		attempt++
		v, err := f(ctx)
		if err == nil {
			return v, nil
		}
		if errors.Is(err, certstore.ErrNotOwner) || ctx.Err() != nil {
			return v, backoff.Permanent(err)
		}
		if db.DataError(err) || errors.Is(err, ratelimit.ErrInvalidRequest) {
			// The same statement with the same data fails the same way:
			// retrying would hold the record (and its partition's commits)
			// for ever. The record is dead-lettered instead (handle).
			return v, backoff.Permanent(fmt.Errorf("%s: %w: %w", what, errDataRefused, err))
		}
		if attempt == 1 || attempt%10 == 0 {
			w.cfg.Logger.Warn(what+" failed; retrying", "attempt", attempt, "err", err)
		}
		return v, err
	}, backoff.WithContext(b, ctx))
}
