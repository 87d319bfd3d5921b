package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
)

// ProducerConfig configures a Producer. The zero value of every field but
// Brokers means its documented default.
type ProducerConfig struct {
	// Brokers are the bootstrap addresses ("host:port"). Required.
	Brokers []string
	// Topics routes messages by type (Topics.For). Default DefaultTopics().
	Topics Topics
	// BatchTimeout is how long the writer waits to fill a batch. kafka-go's
	// default of 1 s makes every synchronous single write take a second.
	// Default 5 ms.
	BatchTimeout time.Duration
	// BatchSize caps messages per batch. Default 100.
	BatchSize int
	// WriteTimeout bounds one produce request. Default 10 s.
	WriteTimeout time.Duration
	// MaxAttempts is kafka-go's retry budget per batch. Default 10.
	MaxAttempts int
	// Balancer maps keys to partitions. Default kafka.Murmur2Balancer with
	// Consistent set: the partitioner of the Java client and librdkafka's
	// "murmur2", so producers in other languages put a certificate's
	// records on the same partition as certfleet does.
	Balancer kafka.Balancer
	// Transport carries TLS and SASL settings. Default kafka.DefaultTransport.
	Transport kafka.RoundTripper
}

// Producer publishes events synchronously with RequiredAcks=RequireAll: a nil
// error from Publish means every in-sync replica has every message. kafka-go
// retries failed batches, so a message can be written twice; subscribers
// dedupe by event id. Safe for concurrent use.
type Producer struct {
	w      *kafka.Writer
	topics Topics
}

// NewProducer validates cfg and builds a Producer. It does not connect.
func NewProducer(cfg ProducerConfig) (*Producer, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("events: ProducerConfig.Brokers is empty")
	}
	if cfg.BatchTimeout < 0 || cfg.BatchSize < 0 || cfg.WriteTimeout < 0 || cfg.MaxAttempts < 0 {
		return nil, errors.New("events: ProducerConfig: BatchTimeout, BatchSize, WriteTimeout and MaxAttempts must not be negative")
	}
	w := &kafka.Writer{
		Addr:                   kafka.TCP(cfg.Brokers...),
		Balancer:               cfg.Balancer,
		MaxAttempts:            cfg.MaxAttempts,
		BatchSize:              cfg.BatchSize,
		BatchTimeout:           cfg.BatchTimeout,
		WriteTimeout:           cfg.WriteTimeout,
		RequiredAcks:           kafka.RequireAll,
		Async:                  false,
		AllowAutoTopicCreation: false,
		Transport:              cfg.Transport,
	}
	if w.Balancer == nil {
		w.Balancer = &kafka.Murmur2Balancer{Consistent: true}
	}
	if w.MaxAttempts == 0 {
		w.MaxAttempts = 10
	}
	if w.BatchSize == 0 {
		w.BatchSize = 100
	}
	if w.BatchTimeout == 0 {
		w.BatchTimeout = 5 * time.Millisecond
	}
	if w.WriteTimeout == 0 {
		w.WriteTimeout = 10 * time.Second
	}
	return &Producer{w: w, topics: cfg.Topics.WithDefaults()}, nil
}

// Publish encodes evs and writes each to the topic of its type
// (Topics.For). It blocks until all are acknowledged or one fails; ctx
// cancellation abandons the wait, and then some messages may still have been
// written. Nothing is written if any event fails to encode.
func (p *Producer) Publish(ctx context.Context, evs ...Event) error {
	return p.publish(ctx, "", evs)
}

// PublishTo is Publish to one topic, e.g. Topics.Retry for a deferred request.
func (p *Producer) PublishTo(ctx context.Context, topic string, evs ...Event) error {
	if topic == "" {
		return errors.New("events: PublishTo: empty topic")
	}
	return p.publish(ctx, topic, evs)
}

func (p *Producer) publish(ctx context.Context, topic string, evs []Event) error {
	msgs := make([]kafka.Message, 0, len(evs))
	for i, e := range evs {
		m, err := Encode(e)
		if err != nil {
			return fmt.Errorf("events: publishing event %d (%s): %w", i, e.ID, err)
		}
		m.Topic = topic
		if m.Topic == "" {
			m.Topic = p.topics.For(e.Type())
		}
		msgs = append(msgs, m)
	}
	return p.WriteMessages(ctx, msgs...)
}

// WriteMessages writes already-encoded records (each with its Topic set),
// with the same guarantees as Publish. The subscriber uses it to hand records
// to the dead-letter topic unchanged.
func (p *Producer) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if err := p.w.WriteMessages(ctx, msgs...); err != nil {
		var werrs kafka.WriteErrors
		if errors.As(err, &werrs) {
			return fmt.Errorf("events: writing %d messages, %d failed: %w", len(msgs), werrs.Count(), errors.Join(werrs...))
		}
		return fmt.Errorf("events: writing %d messages to %s: %w", len(msgs), msgs[0].Topic, err)
	}
	return nil
}

// Topics returns the producer's topic names, defaults filled in.
func (p *Producer) Topics() Topics { return p.topics }

// Close flushes nothing (writes are synchronous) and releases connections.
func (p *Producer) Close() error {
	if err := p.w.Close(); err != nil {
		return fmt.Errorf("events: closing producer: %w", err)
	}
	return nil
}
