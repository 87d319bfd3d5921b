package events

import (
	"context"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
)

// ReadTopic returns the records of topic from each partition's first offset
// up to its end offset at the time of the call, at most max in all (0: no
// cap). It is for operators' tools (listing the dead-letter topic) and tests,
// not for consuming: it joins no group and commits nothing. dialer may be nil
// (kafka.DefaultDialer).
func ReadTopic(ctx context.Context, dialer *kafka.Dialer, brokers []string, topic string, max int) ([]kafka.Message, error) {
	if dialer == nil {
		dialer = kafka.DefaultDialer
	}
	conn, err := dialer.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		return nil, fmt.Errorf("events: dialing Kafka: %w", err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		return nil, fmt.Errorf("events: partitions of %s: %w", topic, err)
	}
	var all []kafka.Message
	for _, p := range parts {
		pc, err := dialer.DialLeader(ctx, "tcp", brokers[0], topic, p.ID)
		if err != nil {
			return nil, fmt.Errorf("events: leader of %s/%d: %w", topic, p.ID, err)
		}
		first, last, err := pc.ReadOffsets()
		pc.Close()
		if err != nil {
			return nil, fmt.Errorf("events: offsets of %s/%d: %w", topic, p.ID, err)
		}
		if last <= first {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p.ID, Dialer: dialer, MaxWait: 50 * time.Millisecond})
		if err := r.SetOffset(first); err != nil {
			r.Close()
			return nil, err
		}
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				r.Close()
				return nil, fmt.Errorf("events: reading %s/%d: %w", topic, p.ID, err)
			}
			all = append(all, m)
			if m.Offset >= last-1 || (max > 0 && len(all) >= max) {
				break
			}
		}
		r.Close()
		if max > 0 && len(all) >= max {
			break
		}
	}
	return all, nil
}
