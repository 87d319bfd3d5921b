package events

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/internal/clock"
)

// Handler processes one event. A nil error means the event is done and its
// offset may be committed. Any other error is retried with backoff, up to
// SubscriberConfig.MaxAttempts calls in all, unless it wraps a
// *backoff.PermanentError (see Permanent), which dead-letters at once.
// Handlers must be idempotent: Kafka delivers at least once, and duplicates
// that slip past the dedupe window (restarts, rebalances) reach the handler.
// ctx is cancelled when Run's ctx is, or when Shutdown's deadline passes.
type Handler func(ctx context.Context, e Event) error

// Permanent marks err as not worth retrying: the subscriber dead-letters the
// record after this one attempt.
func Permanent(err error) error { return backoff.Permanent(err) }

// MessageWriter writes records synchronously: a nil error means every record
// is durably written (for Kafka: acknowledged by all in-sync replicas). A
// blocked write returns when ctx is done. *Producer implements it.
type MessageWriter interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// fetcher is the part of *kafka.Reader the subscriber uses; tests of the pure
// logic substitute an in-memory one.
type fetcher interface {
	FetchMessage(ctx context.Context) (kafka.Message, error)
	CommitMessages(ctx context.Context, msgs ...kafka.Message) error
	Close() error
}

// SubscriberConfig configures a Subscriber. The zero value of every optional
// field means its documented default.
type SubscriberConfig struct {
	// Brokers are the bootstrap addresses. Required.
	Brokers []string
	// GroupID is the consumer group. Required: offsets are committed to it.
	GroupID string
	// Topics to consume. Required.
	Topics []string
	// DeadLetter receives records the subscriber gives up on, written to
	// DeadLetterTopic. Both required.
	DeadLetter      MessageWriter
	DeadLetterTopic string
	// MaxAttempts is how many times the handler is called for one event
	// before the record is dead-lettered. Default 5.
	MaxAttempts int
	// Backoff returns a fresh policy for the waits between attempts of one
	// event. A policy that returns backoff.Stop ends the attempts early.
	// Default exponential from 50 ms to 5 s with jitter.
	Backoff func() backoff.BackOff
	// DedupeWindow is how many recent event ids are remembered; an event
	// whose id is among them is committed without calling the handler.
	// Default 10,000 (at most 2^30 are kept); negative disables
	// deduplication.
	DedupeWindow int
	// CommitInterval is how often the offsets of finished records are sent to
	// the group coordinator. Records are marked for commit only once
	// finished, in partition order, and marks are handed to the reader
	// whenever no fetched record is waiting and at least every 512 records,
	// so a crash redelivers at most the records finished in the last
	// interval and the last such batch (handlers are idempotent); Shutdown
	// commits what is marked before leaving the group. Default
	// 100 ms. Negative commits every record synchronously before handling
	// the next, which costs a coordinator round trip per record (measured
	// here: ~150 records/s against ~1,000+ with the default).
	CommitInterval time.Duration
	// MaxWait bounds one fetch long-poll. Default 250 ms.
	MaxWait time.Duration
	// StartOffset for a group with no committed offset: kafka.FirstOffset
	// (default) or kafka.LastOffset.
	StartOffset int64
	// SessionTimeout and HeartbeatInterval of the group membership. Defaults
	// 10 s and 1 s: a member that dies is replaced within about 10 s.
	SessionTimeout    time.Duration
	HeartbeatInterval time.Duration
	// Dialer carries TLS and SASL settings. Default kafka.DefaultDialer.
	Dialer *kafka.Dialer
	// Logger receives retries, dead letters and commit failures. Default
	// slog.Default().
	Logger *slog.Logger
	// Clock stamps dead-letter records (certfleet_dlq_time). Default the
	// wall clock.
	Clock clock.Clock
}

func (c *SubscriberConfig) validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("empty Brokers"))
	}
	if c.GroupID == "" {
		errs = append(errs, errors.New("empty GroupID"))
	}
	if len(c.Topics) == 0 {
		errs = append(errs, errors.New("empty Topics"))
	}
	if c.DeadLetter == nil {
		errs = append(errs, errors.New("nil DeadLetter"))
	}
	if c.DeadLetterTopic == "" {
		errs = append(errs, errors.New("empty DeadLetterTopic"))
	}
	for _, t := range c.Topics {
		if t == c.DeadLetterTopic && t != "" {
			errs = append(errs, fmt.Errorf("DeadLetterTopic %q is also consumed: a poison record would loop", t))
		}
	}
	if c.MaxAttempts < 0 || c.MaxWait < 0 || c.SessionTimeout < 0 || c.HeartbeatInterval < 0 {
		errs = append(errs, errors.New("negative MaxAttempts, MaxWait, SessionTimeout or HeartbeatInterval"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("events: SubscriberConfig: %w", err)
	}
	return nil
}

func (c *SubscriberConfig) setDefaults() {
	c.Clock = clock.Or(c.Clock)
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 5
	}
	if c.Backoff == nil {
		c.Backoff = func() backoff.BackOff {
			return backoff.NewExponentialBackOff(
				backoff.WithInitialInterval(50*time.Millisecond),
				backoff.WithMaxInterval(5*time.Second),
				backoff.WithMaxElapsedTime(0))
		}
	}
	if c.DedupeWindow == 0 {
		c.DedupeWindow = 10_000
	}
	if c.MaxWait == 0 {
		c.MaxWait = 250 * time.Millisecond
	}
	if c.CommitInterval == 0 {
		c.CommitInterval = 100 * time.Millisecond
	}
	if c.StartOffset == 0 {
		c.StartOffset = kafka.FirstOffset
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = 10 * time.Second
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Stats counts what a subscriber did since it started.
type Stats struct {
	Handled      int64 // handler returned nil, offset committed
	Retries      int64 // handler calls after the first, over all events
	DeadLettered int64 // records written to the dead-letter topic
	// DeadLetterStubs counts the dead letters among them written as a stub
	// (the topic refused the record, or it held private key material).
	DeadLetterStubs int64
	Duplicates      int64 // events skipped because their id was in the window
	CommitErrors    int64 // commits that failed (the record will be redelivered)
}

// Subscriber consumes events as a member of a consumer group. One goroutine
// fetches and decodes up to 256 records ahead while another handles them, one
// at a time in partition order, and commits a record's offset only
// after the handler succeeded or the record was written to the dead-letter
// topic, so no record is ever dropped: each ends handled, deduplicated, or
// dead-lettered. Records that fail to decode go to the dead-letter topic at
// once, with the decode error as the reason.
type Subscriber struct {
	cfg  SubscriberConfig
	r    fetcher
	seen *window
	log  *slog.Logger

	stop     chan struct{} // closed by Shutdown
	stopOnce sync.Once
	started  atomic.Bool
	done     chan struct{} // closed when Run returns
	mu       sync.Mutex
	cancel   context.CancelFunc // cancels Run's handler context

	handled, retries, deadLettered, stubs, duplicates, commitErrors atomic.Int64
}

// NewSubscriber validates cfg and creates the group reader. It does not
// block; the group is joined by the first fetch in Run.
func NewSubscriber(cfg SubscriberConfig) (*Subscriber, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	commitInterval := cfg.CommitInterval
	if commitInterval < 0 {
		commitInterval = 0 // kafka-go: synchronous CommitMessages
	}
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:           cfg.Brokers,
		GroupID:           cfg.GroupID,
		GroupTopics:       cfg.Topics,
		Dialer:            cfg.Dialer,
		MinBytes:          1,
		MaxBytes:          4 << 20,
		MaxWait:           cfg.MaxWait,
		StartOffset:       cfg.StartOffset,
		CommitInterval:    commitInterval,
		SessionTimeout:    cfg.SessionTimeout,
		HeartbeatInterval: cfg.HeartbeatInterval,
		RebalanceTimeout:  cfg.SessionTimeout,
		JoinGroupBackoff:  500 * time.Millisecond,
		ReadLagInterval:   -1,
	})
	return newSubscriber(cfg, r), nil
}

func newSubscriber(cfg SubscriberConfig, r fetcher) *Subscriber {
	return &Subscriber{
		cfg:  cfg,
		r:    r,
		seen: newWindow(cfg.DedupeWindow),
		log:  cfg.Logger.With("group", cfg.GroupID),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
}

// ErrSubscriberUsed is returned by a second call to Run.
var ErrSubscriberUsed = errors.New("events: Subscriber.Run called twice")

// Run fetches and handles records until Shutdown or ctx ends. It returns nil
// after Shutdown, ctx's error when ctx ends (the record in hand is then not
// committed and will be redelivered), or the reader's error. Run may be
// called once. Call Close or Shutdown after Run returns, from outside the
// handler: it commits the offsets marked so far and leaves the group.
func (s *Subscriber) Run(ctx context.Context, h Handler) error {
	if !s.started.CompareAndSwap(false, true) {
		return ErrSubscriberUsed
	}
	defer close(s.done)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.mu.Lock()
	s.cancel = cancel
	s.mu.Unlock()

	// Fetches stop at Shutdown; the handler context lives on until Run's ctx
	// ends or Shutdown's deadline passes.
	fetchCtx, fetchCancel := context.WithCancel(runCtx)
	defer fetchCancel()
	go func() {
		select {
		case <-s.stop:
			fetchCancel()
		case <-fetchCtx.Done():
		}
	}()

	// One goroutine fetches and decodes ahead, in partition order, while
	// this one handles and commits: decoding overlaps handling. Records
	// fetched ahead but not handled when Run returns are never committed, so
	// they are redelivered like any record after the last commit.
	ahead := make(chan fetched, prefetch)
	quit := make(chan struct{})
	var fetcherDone sync.WaitGroup
	fetcherDone.Go(func() { s.fetch(fetchCtx, ahead, quit) })
	defer fetcherDone.Wait()
	defer close(quit)
	defer fetchCancel()

	c := s.newCommitter()
	// Marked offsets are handed over whenever nothing is waiting and when
	// Run returns, so an idle subscriber holds nothing back.
	defer c.flush(context.WithoutCancel(ctx))
	for {
		var f fetched
		select {
		case f = <-ahead:
		default:
			c.flush(runCtx)
			f = <-ahead
		}
		if s.stopping() {
			return nil // Shutdown: the records fetched ahead stay uncommitted
		}
		if err := f.fetchErr; err != nil {
			switch {
			case s.stopping():
				return nil
			case ctx.Err() != nil:
				return ctx.Err()
			case errors.Is(err, io.EOF):
				return errors.New("events: subscriber reader closed")
			}
			return fmt.Errorf("events: fetching from %v: %w", s.cfg.Topics, err)
		}
		if err := s.process(runCtx, h, f, c); err != nil {
			if s.stopping() && ctx.Err() == nil {
				return nil // Shutdown's deadline cut the handler short
			}
			return err
		}
	}
}

// prefetch is how many decoded records the fetching goroutine keeps ready.
const prefetch = 256

// fetched is one record as the fetching goroutine hands it over: the record
// and its decoding, or the fetch error that ends Run.
type fetched struct {
	m         kafka.Message
	e         Event
	decodeErr error
	fetchErr  error
}

// fetch fetches and decodes records into ahead until a fetch fails, which it
// hands over last, or quit is closed.
func (s *Subscriber) fetch(ctx context.Context, ahead chan<- fetched, quit <-chan struct{}) {
	for {
		var f fetched
		f.m, f.fetchErr = s.r.FetchMessage(ctx)
		if f.fetchErr == nil {
			f.e, f.decodeErr = Decode(f.m)
		}
		select {
		case ahead <- f:
		case <-quit:
			return
		}
		if f.fetchErr != nil {
			return
		}
	}
}

func (s *Subscriber) stopping() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

// process takes one record to an end: handled, duplicate or dead-lettered,
// then marks it for commit. It returns an error only when ctx ended first;
// the record is then left uncommitted.
func (s *Subscriber) process(ctx context.Context, h Handler, f fetched, c *committer) error {
	m, e := f.m, f.e
	if f.decodeErr != nil {
		if err := s.deadLetter(ctx, m, f.decodeErr, 0); err != nil {
			return err
		}
		return c.mark(ctx, m)
	}
	if s.seen.Seen(e.ID) {
		s.duplicates.Add(1)
		if s.log.Enabled(ctx, slog.LevelDebug) {
			s.log.Debug("events: duplicate skipped", recordAttrs(m, e)...)
		}
		return c.mark(ctx, m)
	}
	attempts := 1
	err := callHandler(ctx, h, e)
	if err != nil {
		// Only a failure pays for the retry machinery; the first attempt's
		// result is its first operation, so waits and notices are as if
		// it had run there.
		first := err
		attempts = 0
		err = backoff.RetryNotify(func() error {
			attempts++
			err := first
			if attempts > 1 {
				s.retries.Add(1)
				err = callHandler(ctx, h, e)
			}
			if err != nil && attempts >= s.cfg.MaxAttempts {
				return backoff.Permanent(err)
			}
			return err
		}, backoff.WithContext(s.cfg.Backoff(), ctx), func(err error, wait time.Duration) {
			s.log.Warn("events: handler failed, retrying", append(recordAttrs(m, e), "attempt", attempts, "wait", wait, "error", err)...)
		})
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		if err := s.deadLetter(ctx, m, err, attempts); err != nil {
			return err
		}
	} else {
		s.handled.Add(1)
	}
	// Remember the id either way: a redelivered copy of a dead-lettered record
	// must not be dead-lettered twice.
	s.seen.Add(e.ID)
	return c.mark(ctx, m)
}

// recordAttrs are the log attributes naming a record and its event, built
// only when a line is written.
func recordAttrs(m kafka.Message, e Event) []any {
	return []any{"topic", m.Topic, "partition", m.Partition, "offset", m.Offset, "event_id", e.ID, "type", e.Type()}
}

// callHandler turns a handler panic into an error, so one bad event cannot
// crash the consumer.
func callHandler(ctx context.Context, h Handler, e Event) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	return h(ctx, e)
}

// deadLetter writes m to the dead-letter topic, retrying until it succeeds or
// ctx ends: a record is committed only once it is safe somewhere.
func (s *Subscriber) deadLetter(ctx context.Context, m kafka.Message, reason error, attempts int) error {
	d := DeadLetter{
		Reason:    reason.Error(),
		Topic:     m.Topic,
		Partition: m.Partition,
		Offset:    m.Offset,
		Attempts:  attempts,
		Group:     s.cfg.GroupID,
		Time:      s.cfg.Clock.Now(),
	}
	var rec kafka.Message
	b := backoff.NewExponentialBackOff(backoff.WithInitialInterval(100*time.Millisecond),
		backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0))
	err := backoff.RetryNotify(func() error {
		// A record the topic refuses for good goes as a stub (WriteDeadLetter):
		// only errors that hold every record are retried.
		var err error
		rec, err = WriteDeadLetter(ctx, s.cfg.DeadLetter, s.cfg.DeadLetterTopic, m, d)
		return err
	}, backoff.WithContext(b, ctx), func(err error, wait time.Duration) {
		s.log.Error("events: dead-letter write failed, retrying", "topic", s.cfg.DeadLetterTopic, "wait", wait, "error", err)
	})
	if err != nil {
		return fmt.Errorf("events: dead-lettering %s/%d@%d: %w", m.Topic, m.Partition, m.Offset, err)
	}
	s.deadLettered.Add(1)
	written, _ := ReadDeadLetter(rec)
	if written.Stub != "" {
		s.stubs.Add(1)
		s.log.Warn("events: record dead-lettered as a stub (hashes and a prefix, not the record)", "topic", m.Topic, "partition", m.Partition,
			"offset", m.Offset, "attempts", attempts, "stub", written.Stub, "size", len(m.Value), "reason", written.Reason)
		return nil
	}
	s.log.Warn("events: record dead-lettered", "topic", m.Topic, "partition", m.Partition, "offset", m.Offset,
		"attempts", attempts, "reason", written.Reason)
	return nil
}

// committer marks finished records for commit. With the default
// asynchronous commits it keeps the last finished record of each partition
// and hands them to the reader (which sends them to the group coordinator
// every CommitInterval) when flushed, at the latest every markBatch
// records: one call per batch instead of one per record. With synchronous
// commits (a negative CommitInterval) it commits each record at once.
type committer struct {
	s       *Subscriber
	sync    bool
	pending map[topicPartition]kafka.Message
	marked  int // records marked since the last flush
}

type topicPartition struct {
	topic     string
	partition int
}

const markBatch = 512

func (s *Subscriber) newCommitter() *committer {
	return &committer{s: s, sync: s.cfg.CommitInterval < 0, pending: map[topicPartition]kafka.Message{}}
}

// mark records m as finished. Records of one partition are marked in
// order, so the last one stands for all before it.
func (c *committer) mark(ctx context.Context, m kafka.Message) error {
	if c.sync {
		return c.s.commit(ctx, m)
	}
	c.pending[topicPartition{m.Topic, m.Partition}] = m
	if c.marked++; c.marked >= markBatch {
		return c.flush(ctx)
	}
	return nil
}

// flush hands the marked records to the reader.
func (c *committer) flush(ctx context.Context) error {
	if len(c.pending) == 0 {
		return nil
	}
	msgs := make([]kafka.Message, 0, len(c.pending))
	for _, m := range c.pending {
		msgs = append(msgs, m)
	}
	if err := c.s.commit(ctx, msgs...); err != nil {
		return err // ctx ended: kept for the flush when Run returns
	}
	clear(c.pending)
	c.marked = 0
	return nil
}

// commit commits msgs (asynchronously, unless CommitInterval is negative).
// A failed commit (typically a rebalance) is logged, not fatal: the records
// will be redelivered to whoever owns the partition next, and handlers are
// idempotent.
func (s *Subscriber) commit(ctx context.Context, msgs ...kafka.Message) error {
	err := s.r.CommitMessages(ctx, msgs...)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	s.commitErrors.Add(1)
	for _, m := range msgs {
		s.log.Warn("events: commit failed; the record will be redelivered", "topic", m.Topic,
			"partition", m.Partition, "offset", m.Offset, "error", err)
	}
	return nil
}

// Stats returns the subscriber's counters.
func (s *Subscriber) Stats() Stats {
	return Stats{
		Handled:         s.handled.Load(),
		Retries:         s.retries.Load(),
		DeadLettered:    s.deadLettered.Load(),
		DeadLetterStubs: s.stubs.Load(),
		Duplicates:      s.duplicates.Load(),
		CommitErrors:    s.commitErrors.Load(),
	}
}

// Shutdown stops fetching, lets the record in hand finish (handler, dead
// letter, commit), then leaves the group and closes the reader. If ctx ends
// first, the handler's context is cancelled, that record stays uncommitted
// and is redelivered to another member. Safe to call more than once and
// without Run.
func (s *Subscriber) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() { close(s.stop) })
	if s.started.Load() {
		select {
		case <-s.done:
		case <-ctx.Done():
			s.mu.Lock()
			if s.cancel != nil {
				s.cancel()
			}
			s.mu.Unlock()
			<-s.done
		}
	}
	if err := s.r.Close(); err != nil {
		return fmt.Errorf("events: closing subscriber: %w", err)
	}
	return nil
}

// Close is Shutdown without a deadline.
func (s *Subscriber) Close() error { return s.Shutdown(context.Background()) }
