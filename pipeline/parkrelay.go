package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/internal/clock"
)

// ParkedSource hands out parked records that are due. *certstore.Store
// implements it.
//
// Contract: Due claims up to limit due records, oldest due first, for owner
// during lease (no other caller gets them until the lease ends); Unpark
// deletes a record handed out unless the request was parked again since.
// Safe for concurrent use, also across processes; honours ctx.
type ParkedSource interface {
	Due(ctx context.Context, owner string, lease time.Duration, limit int) ([]certstore.Parked, error)
	Unpark(ctx context.Context, p certstore.Parked) error
}

// ParkRelay writes parked records to the retry topic once due, oldest
// first; every worker runs one. A record is deleted only after its write,
// so a crash in between writes it again (a duplicate the claim absorbs).
type ParkRelay struct {
	Source ParkedSource // required
	Writer Writer       // required
	Topic  string       // the retry topic (required)
	Owner  string       // names this relay in the rows it holds (required)
	// Interval between polls when nothing was due. Default 250 ms.
	Interval time.Duration
	// Batch is the most records relayed per poll. Default 500.
	Batch  int
	Logger *slog.Logger // default slog.Default()
}

// relayLease is how long a relay holds the rows it took: far longer than a
// write, short enough that a dead relay's rows are soon relayed by another.
const relayLease = 30 * time.Second

// Run relays until ctx ends; errors are logged and retried at the next
// poll. It returns ctx's error.
func (r *ParkRelay) Run(ctx context.Context) error {
	interval, log := r.Interval, r.Logger
	if interval <= 0 {
		interval = 250 * time.Millisecond
	}
	if log == nil {
		log = slog.Default()
	}
	for {
		n, err := r.Once(ctx)
		if err != nil && ctx.Err() == nil {
			log.Warn("relaying parked requests", "err", err)
		}
		if n < r.batch() || err != nil {
			if err := clock.Sleep(ctx, interval); err != nil {
				return err
			}
		}
	}
}

func (r *ParkRelay) batch() int {
	if r.Batch <= 0 {
		return 500
	}
	return r.Batch
}

// Once relays the records due now and returns how many it took.
func (r *ParkRelay) Once(ctx context.Context) (int, error) {
	due, err := r.Source.Due(ctx, r.Owner, relayLease, r.batch())
	if err != nil || len(due) == 0 {
		return 0, err
	}
	for _, p := range due {
		m, err := decodeStored(p.Record, r.Topic)
		if err != nil {
			return len(due), fmt.Errorf("parked request %q: %w", p.RequestID, err)
		}
		if err := r.Writer.WriteMessages(ctx, m); err != nil {
			return len(due), fmt.Errorf("writing parked request %q to %s: %w", p.RequestID, r.Topic, err)
		}
		if err := r.Source.Unpark(ctx, p); err != nil {
			return len(due), err
		}
	}
	return len(due), nil
}
