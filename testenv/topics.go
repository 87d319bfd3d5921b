package testenv

import (
	"context"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
)

// ReadTopic returns every record of topic, reading each partition from its
// first offset up to its end offset at the time of the call. For tests that
// check what a run left on a topic.
func ReadTopic(ctx context.Context, brokers []string, topic string) ([]kafka.Message, error) {
	conn, err := kafka.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		return nil, fmt.Errorf("testenv: dialing Kafka: %w", err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		return nil, fmt.Errorf("testenv: partitions of %s: %w", topic, err)
	}
	var all []kafka.Message
	for _, p := range parts {
		pc, err := kafka.DialLeader(ctx, "tcp", brokers[0], topic, p.ID)
		if err != nil {
			return nil, fmt.Errorf("testenv: leader of %s/%d: %w", topic, p.ID, err)
		}
		first, last, err := pc.ReadOffsets()
		pc.Close()
		if err != nil {
			return nil, fmt.Errorf("testenv: offsets of %s/%d: %w", topic, p.ID, err)
		}
		if last <= first {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p.ID, MaxWait: 50 * time.Millisecond})
		if err := r.SetOffset(first); err != nil {
			r.Close()
			return nil, err
		}
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				r.Close()
				return nil, fmt.Errorf("testenv: reading %s/%d: %w", topic, p.ID, err)
			}
			all = append(all, m)
			if m.Offset >= last-1 {
				break
			}
		}
		r.Close()
	}
	return all, nil
}

// WaitTopic polls topic with ReadTopic until done accepts its records, and
// returns them; at ctx's end it returns the last records read and ctx's error.
func WaitTopic(ctx context.Context, brokers []string, topic string, done func([]kafka.Message) bool) ([]kafka.Message, error) {
	for {
		all, err := ReadTopic(ctx, brokers, topic)
		if err == nil && done(all) {
			return all, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
			return all, fmt.Errorf("testenv: waiting for records on %s (have %d): %w", topic, len(all), err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}
