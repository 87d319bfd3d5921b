package changefeed

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/ratelimit"
)

// Handler applies change messages. *ratelimit.OverrideCache is the
// production Handler.
type Handler interface {
	// HandleChange applies one message value. An error means the message
	// was not understood (the cache then drops everything); the consumer
	// reports it and goes on.
	HandleChange(value []byte) error
	// Invalidate drops cached answers for a limit name, all if empty. The
	// consumer calls Invalidate("") whenever it may have missed messages.
	Invalidate(n ratelimit.Name)
}

var _ Handler = (*ratelimit.OverrideCache)(nil)

// ConsumerConfig configures a Consumer. The zero value of every field but
// Brokers means its documented default.
type ConsumerConfig struct {
	// Brokers are the bootstrap addresses ("host:port"). Required.
	Brokers []string
	// Topic is the changes topic. Default ratelimit.ChangesTopic.
	Topic string
	// MaxWait is how long one fetch waits for a message before asking
	// again; messages are delivered as soon as they arrive regardless.
	// Default 500 ms.
	MaxWait time.Duration
	// RetryMin and RetryMax bound the wait before reconnecting after an
	// error; it doubles from RetryMin up to RetryMax. Defaults 100 ms, 5 s.
	RetryMin, RetryMax time.Duration
	// PartitionCheck is how often the topic's partition count is re-read;
	// a change reconnects to read the new partitions. Default 30 s.
	PartitionCheck time.Duration
	// Dialer carries TLS and SASL settings for reading. Default
	// kafka.DefaultDialer.
	Dialer *kafka.Dialer
	// Transport carries TLS and SASL settings for metadata requests. Default
	// kafka.DefaultTransport.
	Transport kafka.RoundTripper
	// OnError receives every error the consumer recovers from: a failed
	// connection (before a reconnect) or a message the handler did not
	// understand. Default: errors are dropped. It must not block for long.
	OnError func(error)
}

// Consumer reads every partition of the changes topic without a consumer
// group, so every process sees every change (a group would share the
// messages among the workers). It starts at the end of each partition:
// older changes are already reflected in the database, and the handler
// is invalidated once positioned, so nothing cached before counts. After
// an error it reconnects, resuming each partition after the last message
// it handled; a partition it has no position for starts at the end again,
// with another full invalidation to cover whatever it skipped.
type Consumer struct {
	cfg   ConsumerConfig
	h     Handler
	ready chan struct{}
	once  sync.Once

	mu   sync.Mutex
	next map[int]int64 // partition -> next offset to read
}

// NewConsumer validates cfg and returns a consumer feeding h. It does not
// connect; Run does.
func NewConsumer(cfg ConsumerConfig, h Handler) (*Consumer, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("changefeed: ConsumerConfig.Brokers is empty")
	}
	if h == nil {
		return nil, errors.New("changefeed: NewConsumer: nil Handler")
	}
	if cfg.MaxWait < 0 || cfg.RetryMin < 0 || cfg.RetryMax < 0 || cfg.PartitionCheck < 0 {
		return nil, errors.New("changefeed: ConsumerConfig: MaxWait, RetryMin, RetryMax and PartitionCheck must not be negative")
	}
	if cfg.Topic == "" {
		cfg.Topic = ratelimit.ChangesTopic
	}
	if cfg.MaxWait == 0 {
		cfg.MaxWait = 500 * time.Millisecond
	}
	if cfg.RetryMin == 0 {
		cfg.RetryMin = 100 * time.Millisecond
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = 5 * time.Second
	}
	if cfg.RetryMax < cfg.RetryMin {
		return nil, fmt.Errorf("changefeed: ConsumerConfig: RetryMax %s is below RetryMin %s", cfg.RetryMax, cfg.RetryMin)
	}
	if cfg.PartitionCheck == 0 {
		cfg.PartitionCheck = 30 * time.Second
	}
	return &Consumer{cfg: cfg, h: h, ready: make(chan struct{}), next: map[int]int64{}}, nil
}

// Ready is closed once Run has positioned itself on every partition for the
// first time: every change published after that is delivered.
func (c *Consumer) Ready() <-chan struct{} { return c.ready }

// Run consumes until ctx ends and then returns ctx's error, after closing
// its connections. Errors are reported to OnError and followed by a
// reconnect; Run never gives up on its own. Call it once.
func (c *Consumer) Run(ctx context.Context) error {
	wait := c.cfg.RetryMin
	for {
		positioned, err := c.session(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.report(err)
		if positioned {
			wait = c.cfg.RetryMin
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, c.cfg.RetryMax)
	}
}

func (c *Consumer) report(err error) {
	if err != nil && c.cfg.OnError != nil {
		c.cfg.OnError(err)
	}
}

var errPartitionsChanged = errors.New("partition count changed")

// session connects, positions a reader on every partition and reads until
// one of them fails, the partition count changes or ctx ends.
func (c *Consumer) session(ctx context.Context) (positioned bool, err error) {
	client := &kafka.Client{Addr: kafka.TCP(c.cfg.Brokers...), Timeout: 10 * time.Second, Transport: c.cfg.Transport}
	parts, err := c.partitions(ctx, client)
	if err != nil {
		return false, err
	}
	start, fromEnd, err := c.positions(ctx, client, parts)
	if err != nil {
		return false, err
	}
	if fromEnd {
		c.h.Invalidate("")
	}
	c.once.Do(func() { close(c.ready) })

	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for _, p := range parts {
		wg.Go(func() {
			if err := c.read(sctx, p, start[p]); err != nil {
				cancel(err)
			}
		})
	}
	wg.Go(func() {
		t := time.NewTicker(c.cfg.PartitionCheck)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
			}
			now, err := c.partitions(sctx, client)
			if err == nil && len(now) != len(parts) {
				cancel(fmt.Errorf("changefeed: topic %s: %w (%d to %d), reconnecting", c.cfg.Topic, errPartitionsChanged, len(parts), len(now)))
			}
		}
	})
	<-sctx.Done()
	wg.Wait()
	if ctx.Err() != nil {
		return true, nil
	}
	return true, context.Cause(sctx)
}

// partitions lists the topic's partition ids.
func (c *Consumer) partitions(ctx context.Context, client *kafka.Client) ([]int, error) {
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{c.cfg.Topic}})
	if err != nil {
		return nil, fmt.Errorf("changefeed: reading metadata of %s from %v: %w", c.cfg.Topic, c.cfg.Brokers, err)
	}
	for _, t := range md.Topics {
		if t.Name != c.cfg.Topic {
			continue
		}
		if t.Error != nil {
			return nil, fmt.Errorf("changefeed: topic %s: %w (create it with events.Provision)", c.cfg.Topic, t.Error)
		}
		var ids []int
		for _, p := range t.Partitions {
			ids = append(ids, p.ID)
		}
		if len(ids) == 0 {
			return nil, fmt.Errorf("changefeed: topic %s has no partitions yet", c.cfg.Topic)
		}
		sort.Ints(ids)
		return ids, nil
	}
	return nil, fmt.Errorf("changefeed: topic %s is not in the metadata (create it with events.Provision)", c.cfg.Topic)
}

// positions returns where to start reading each partition: after the last
// message handled, or at the current end for a partition without one
// (fromEnd then reports that messages may have been skipped).
func (c *Consumer) positions(ctx context.Context, client *kafka.Client, parts []int) (map[int]int64, bool, error) {
	start := map[int]int64{}
	var unknown []kafka.OffsetRequest
	c.mu.Lock()
	for _, p := range parts {
		if off, ok := c.next[p]; ok {
			start[p] = off
		} else {
			unknown = append(unknown, kafka.LastOffsetOf(p))
		}
	}
	c.mu.Unlock()
	if len(unknown) == 0 {
		return start, false, nil
	}
	resp, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{c.cfg.Topic: unknown}})
	if err != nil {
		return nil, false, fmt.Errorf("changefeed: reading end offsets of %s: %w", c.cfg.Topic, err)
	}
	for _, po := range resp.Topics[c.cfg.Topic] {
		if po.Error != nil {
			return nil, false, fmt.Errorf("changefeed: reading end offset of %s partition %d: %w", c.cfg.Topic, po.Partition, po.Error)
		}
		start[po.Partition] = po.LastOffset
	}
	for _, p := range parts {
		if _, ok := start[p]; !ok {
			return nil, false, fmt.Errorf("changefeed: no end offset for %s partition %d", c.cfg.Topic, p)
		}
	}
	// Remember the positions: a session that fails before reading anything
	// resumes here instead of skipping to a later end.
	c.mu.Lock()
	for p, off := range start {
		c.next[p] = off
	}
	c.mu.Unlock()
	return start, true, nil
}

// read handles one partition's messages from offset until ctx ends (nil)
// or the reader fails.
func (c *Consumer) read(ctx context.Context, partition int, offset int64) error {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:   c.cfg.Brokers,
		Topic:     c.cfg.Topic,
		Partition: partition,
		Dialer:    c.cfg.Dialer,
		MinBytes:  1,
		MaxBytes:  1 << 20,
		MaxWait:   c.cfg.MaxWait,
	})
	defer r.Close()
	if err := r.SetOffset(offset); err != nil {
		return fmt.Errorf("changefeed: seeking %s partition %d to %d: %w", c.cfg.Topic, partition, offset, err)
	}
	for {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("changefeed: reading %s partition %d at offset %d: %w", c.cfg.Topic, partition, offset, err)
		}
		if err := c.h.HandleChange(m.Value); err != nil {
			c.report(fmt.Errorf("changefeed: %s partition %d offset %d: %w", c.cfg.Topic, partition, m.Offset, err))
		}
		offset = m.Offset + 1
		c.mu.Lock()
		c.next[partition] = offset
		c.mu.Unlock()
	}
}
