package pipeline

import (
	"context"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/internal/clock"
)

// Worker processes issuance records. Safe for concurrent use: Run calls
// Handle from many goroutines.
type Worker struct {
	cfg       Config
	routes    map[string]route // by CA name, CA directory and group name
	slots     *slotScheduler   // order slots (Concurrency), by lane and tenant (lanes.go)
	hold      *fairHold        // records kept waiting per lane and tenant, the rest parked (fairpark.go)
	laneMarks laneMarks        // lane signals marked and read (lanes.go)
	progress  progress         // records held, for Stalled (progress.go)
	lat       *latencies       // order latencies per CA, for the issuance lead (lead.go)
	parks     *parkBatcher     // parks in batches, when Parking is a ManyParker (parkbatch.go)
}

// New validates cfg (errors name the field) and returns a Worker.
func New(cfg Config) (*Worker, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	w := &Worker{cfg: cfg, routes: map[string]route{}, slots: newSlotScheduler(cfg.Concurrency, cfg.Lanes, cfg.Clock),
		hold: newFairHold(cfg.MaxPending-cfg.Concurrency, cfg.Concurrency),
		lat:  newLatencies(cfg.Lead)}
	if mp, ok := cfg.Parking.(ManyParker); ok {
		w.parks = &parkBatcher{store: mp}
	}
	byName := map[string]CA{}
	for _, ca := range cfg.CAs {
		byName[ca.Name] = ca
		w.routes[ca.Name], w.routes[ca.Directory] = route{cas: []CA{ca}}, route{cas: []CA{ca}}
	}
	for _, g := range cfg.Groups {
		rt := route{group: g.Name}
		for _, name := range g.CAs {
			rt.cas = append(rt.cas, byName[name])
		}
		w.routes[g.Name] = rt
	}
	return w, nil
}

// Fetcher is the consumer side of Kafka: *kafka.Reader (with a GroupID)
// implements it. FetchMessage blocks until a record or ctx's end;
// CommitMessages commits each record's offset+1 for its partition.
type Fetcher interface {
	FetchMessage(ctx context.Context) (kafka.Message, error)
	CommitMessages(ctx context.Context, msgs ...kafka.Message) error
}

// Run fetches records until ctx ends, handling up to MaxPending at once
// (Concurrency of them ordering), and commits each partition's offsets up to
// its lowest unfinished record. When ctx ends it stops fetching, hands back
// records still waiting (they are not committed, so they are redelivered),
// gives orders in flight up to grace to finish, commits what finished and
// returns. It returns nil after a clean shutdown.
func (w *Worker) Run(ctx context.Context, r Fetcher, grace time.Duration) error {
	jobCtx, cancelJobs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelJobs()
	shareCtx, stopSharing := context.WithCancel(ctx)
	defer stopSharing()
	go w.shareUsage(shareCtx)
	tracker := newOffsetTracker()
	com := newCommitter(r, w.cfg.Logger)
	defer com.close()
	pending := make(chan struct{}, w.cfg.MaxPending)
	var wg sync.WaitGroup
	fetchBackoff := backoff.NewExponentialBackOff(backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0))
fetch:
	for {
		select {
		case pending <- struct{}{}:
		case <-ctx.Done():
			break fetch
		}
		m, err := r.FetchMessage(ctx)
		if err != nil {
			<-pending
			if ctx.Err() != nil {
				break fetch
			}
			d := fetchBackoff.NextBackOff()
			w.cfg.Logger.Warn("fetching from Kafka failed; retrying", "err", err, "in", d)
			if clock.Sleep(ctx, d) != nil {
				break fetch
			}
			continue
		}
		fetchBackoff.Reset()
		tracker.fetched(m.Topic, m.Partition, m.Offset)
		w.cfg.Metrics.Pending.Inc()
		wg.Add(1)
		finish := w.track(m)
		go func() {
			defer wg.Done()
			defer finish()
			defer func() { <-pending; w.cfg.Metrics.Pending.Dec() }()
			if err := w.handle(ctx, jobCtx, m); err != nil {
				// Not finished: never committed, so redelivered after a restart or rebalance.
				w.cfg.Logger.Info("record handed back", "topic", m.Topic, "partition", m.Partition, "offset", m.Offset, "err", err)
				return
			}
			if off := tracker.done(m.Topic, m.Partition, m.Offset); off >= 0 {
				com.commit(m.Topic, m.Partition, off)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		w.cfg.Logger.Warn("shutdown grace over; abandoning orders in flight (their records are redelivered)", "grace", grace)
		cancelJobs()
		<-done
	}
	return nil
}

// committer commits finished offsets in the background, one CommitMessages
// at a time: offsets that finish while a commit is in flight are coalesced
// into the next, one per partition, so a worker reading past thousands of
// records it parks makes a commit round trip per batch, not one per record
// (which held reading past a backlog to one record per round trip). A
// partition's committed offset only grows; close commits what is left.
type committer struct {
	r    Fetcher
	log  interface{ Warn(string, ...any) }
	wake chan struct{} // a commit is pending (capacity 1)
	stop chan struct{} // close: commit what is left and end
	done chan struct{} // closed when run ends

	mu      sync.Mutex
	pending map[partitionKey]int64 // highest finished offset not yet sent
	last    map[partitionKey]int64 // highest offset sent (committed or in flight)
}

func newCommitter(r Fetcher, log interface{ Warn(string, ...any) }) *committer {
	c := &committer{r: r, log: log, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		pending: map[partitionKey]int64{}, last: map[partitionKey]int64{}}
	go c.run()
	return c
}

// commit asks for offset (the next to read: everything before it finished)
// to be committed for the partition; it does not wait.
func (c *committer) commit(topic string, partition int, offset int64) {
	k := partitionKey{topic, partition}
	c.mu.Lock()
	if last, ok := c.last[k]; ok && offset <= last {
		c.mu.Unlock()
		return
	}
	if p, ok := c.pending[k]; !ok || offset > p {
		c.pending[k] = offset
	}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *committer) run() {
	defer close(c.done)
	for {
		select {
		case <-c.wake:
			c.flush()
		case <-c.stop:
			c.flush()
			return
		}
	}
}

// close commits what is pending and returns once it is done.
func (c *committer) close() {
	close(c.stop)
	<-c.done
}

// flush sends every pending offset in one CommitMessages. On failure the
// offsets stay pending, for the next commit to send (the records stay
// uncommitted meanwhile and come back after a rebalance or restart;
// handling them again is idempotent).
func (c *committer) flush() {
	c.mu.Lock()
	msgs := make([]kafka.Message, 0, len(c.pending))
	for k, off := range c.pending {
		msgs = append(msgs, kafka.Message{Topic: k.topic, Partition: k.partition, Offset: off})
		c.last[k] = off
	}
	clear(c.pending)
	c.mu.Unlock()
	if len(msgs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.r.CommitMessages(ctx, msgs...); err != nil {
		c.log.Warn("committing offsets failed; they are sent again with the next commit", "partitions", len(msgs), "err", err)
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, m := range msgs {
			if k := (partitionKey{m.Topic, m.Partition}); c.pending[k] < m.Offset {
				c.pending[k] = m.Offset
			}
		}
	}
}
