package events

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/internal/clock"
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
	offs, err := partitionOffsets(ctx, dialer, brokers, topic)
	if err != nil {
		return nil, err
	}
	var all []kafka.Message
	for _, o := range offs {
		if o.end <= o.first {
			continue
		}
		r, err := readerAt(dialer, brokers, topic, o.partition, o.first, 50*time.Millisecond)
		if err != nil {
			return nil, err
		}
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				r.Close()
				return nil, fmt.Errorf("events: reading %s/%d: %w", topic, o.partition, err)
			}
			all = append(all, m)
			if m.Offset >= o.end-1 || (max > 0 && len(all) >= max) {
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

// Follow follows every partition of each topic from its end. The ends are
// read now, before Follow returns: a record written afterwards is always
// delivered, one written before never. Records arrive on the returned
// channel, in order within a partition, with Topic, Partition and Offset
// set, until ctx ends; then the readers close and so does the channel. Like
// ReadTopic it joins no group and commits nothing: it is for tools waiting
// for what happens next (certfleet request --wait, the demo), not for
// consuming. dialer may be nil (kafka.DefaultDialer).
func Follow(ctx context.Context, dialer *kafka.Dialer, brokers []string, topics ...string) (<-chan kafka.Message, error) {
	if dialer == nil {
		dialer = kafka.DefaultDialer
	}
	var readers []*kafka.Reader
	fail := func(err error) (<-chan kafka.Message, error) {
		for _, r := range readers {
			r.Close()
		}
		return nil, err
	}
	for _, topic := range topics {
		offs, err := partitionOffsets(ctx, dialer, brokers, topic)
		if err != nil {
			return fail(err)
		}
		for _, o := range offs {
			r, err := readerAt(dialer, brokers, topic, o.partition, o.end, 100*time.Millisecond)
			if err != nil {
				return fail(err)
			}
			readers = append(readers, r)
		}
	}
	out := make(chan kafka.Message)
	var wg sync.WaitGroup
	for _, r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.Close()
			for {
				m, err := r.ReadMessage(ctx) // an error: ctx ended
				if err != nil {
					return
				}
				select {
				case out <- m:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		close(out)
	}()
	return out, nil
}

// offsets is one partition's first offset and its end (the offset the next
// record will get).
type offsets struct {
	partition  int
	first, end int64
}

// partitionOffsets reads the offsets of every partition of topic from the
// partition's leader. A leadership that is moving (a topic just created, a
// broker failing over: "Not Leader For Partition", "Leader Not Available",
// any error Kafka marks temporary) is asked again, 20 times at most, 100 ms
// apart, within ctx.
func partitionOffsets(ctx context.Context, dialer *kafka.Dialer, brokers []string, topic string) ([]offsets, error) {
	for attempt := 1; ; attempt++ {
		out, err := partitionOffsetsOnce(ctx, dialer, brokers, topic)
		var ke kafka.Error
		if err == nil || !errors.As(err, &ke) || !ke.Temporary() || attempt == 20 {
			return out, err
		}
		if err := clock.Sleep(ctx, 100*time.Millisecond); err != nil {
			return nil, fmt.Errorf("events: offsets of %s: %w", topic, err)
		}
	}
}

func partitionOffsetsOnce(ctx context.Context, dialer *kafka.Dialer, brokers []string, topic string) ([]offsets, error) {
	conn, err := dialer.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		return nil, fmt.Errorf("events: dialing Kafka: %w", err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		return nil, fmt.Errorf("events: partitions of %s: %w", topic, err)
	}
	var out []offsets
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
		out = append(out, offsets{partition: p.ID, first: first, end: last})
	}
	return out, nil
}

// readerAt returns a reader of one partition, without a group, at offset.
func readerAt(dialer *kafka.Dialer, brokers []string, topic string, partition int, offset int64, maxWait time.Duration) (*kafka.Reader, error) {
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: partition, Dialer: dialer, MaxWait: maxWait})
	if err := r.SetOffset(offset); err != nil {
		r.Close()
		return nil, fmt.Errorf("events: reading %s/%d from %d: %w", topic, partition, offset, err)
	}
	return r, nil
}
