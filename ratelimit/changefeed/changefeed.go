// Package changefeed carries rate-limit override changes over Kafka: a
// Publisher that lets ratelimit.Relay write the outbox to the changes topic
// through the events package's producer, and a Consumer that feeds every
// message on that topic to a worker's override cache
// (ratelimit.OverrideCache.HandleChange).
//
// It owns only the transport of ratelimit.ChangeEvent messages; what a
// change means stays in package ratelimit, and the producer's settings
// (acks=all, batching, partitioner) stay in package events.
//
// Wiring, in a worker:
//
//	cache := ratelimit.NewOverrideCache(ratelimit.NewOverrideStore(d, nil), 30*time.Second, nil)
//	cons, _ := changefeed.NewConsumer(changefeed.ConsumerConfig{Brokers: brokers}, cache)
//	go cons.Run(ctx)
//
// and in the process that relays the outbox (any number may run):
//
//	prod, _ := events.NewProducer(events.ProducerConfig{Brokers: brokers})
//	relay := ratelimit.NewRelay(d, changefeed.NewPublisher(prod, prod.Topics().RateLimitChanges))
//	go relay.Run(ctx, 100*time.Millisecond, logErr)
package changefeed

import (
	"context"
	"fmt"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/ratelimit"
)

// Writer writes records synchronously, returning once the broker has
// acknowledged them. *events.Producer is the production Writer (acks=all,
// 5 ms batches, synchronous errors).
type Writer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

var _ Writer = (*events.Producer)(nil)

// Publisher implements ratelimit.Publisher over a Writer. Safe for
// concurrent use if the Writer is.
type Publisher struct {
	w     Writer
	topic string
}

var _ ratelimit.Publisher = (*Publisher)(nil)

// NewPublisher returns a Publisher writing to w. Outbox rows addressed to
// ratelimit.ChangesTopic go to topic instead, so a deployment that renames
// the changes topic (events.Topics.RateLimitChanges) needs no other change;
// an empty topic keeps ratelimit.ChangesTopic. Rows for any other topic go
// where they say.
func NewPublisher(w Writer, topic string) *Publisher {
	if topic == "" {
		topic = ratelimit.ChangesTopic
	}
	return &Publisher{w: w, topic: topic}
}

// Publish writes one record keyed by key (the override id, so the changes
// of one override stay in order on one partition) and returns once it is
// acknowledged or failed.
func (p *Publisher) Publish(ctx context.Context, topic, key string, value []byte) error {
	if topic == ratelimit.ChangesTopic {
		topic = p.topic
	}
	if err := p.w.WriteMessages(ctx, kafka.Message{Topic: topic, Key: []byte(key), Value: value}); err != nil {
		return fmt.Errorf("changefeed: publishing change %s to %s: %w", key, topic, err)
	}
	return nil
}
