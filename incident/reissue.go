package incident

import (
	"context"
	"fmt"
	"time"

	"github.com/certfleet/certfleet/events"
)

// PublishReplacements publishes the replacement of every certificate of
// certs (Replacement: reason reissue, emergency priority), in batches of
// batch (default 500), and returns their request ids in order. A run that
// fails part way can be run again: the ids are the same and the workers
// order each once.
func PublishReplacements(ctx context.Context, pub Publisher, source string, now time.Time, certs []Certificate, batch int) ([]string, error) {
	if batch <= 0 {
		batch = 500
	}
	if source == "" {
		source = "//certfleet/cli"
	}
	ids := make([]string, 0, len(certs))
	var evs []events.Event
	flush := func() error {
		if len(evs) == 0 {
			return nil
		}
		if err := pub.Publish(ctx, evs...); err != nil {
			return fmt.Errorf("incident: publishing replacements (%d of %d published): %w", len(ids)-len(evs), len(certs), err)
		}
		evs = evs[:0]
		return nil
	}
	for _, c := range certs {
		ev, err := events.New(source, now, Replacement(c))
		if err != nil {
			return ids, fmt.Errorf("incident: the replacement of certificate %s: %w", c.Serial, err)
		}
		evs = append(evs, ev)
		ids = append(ids, ReplacementID(c))
		if len(evs) >= batch {
			if err := flush(); err != nil {
				return ids[:len(ids)-len(evs)], err
			}
		}
	}
	if err := flush(); err != nil {
		return ids[:len(ids)-len(evs)], err
	}
	return ids, nil
}
