package events

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// Follow against the real Kafka: records written before it returns are not
// delivered, every record written after is, from every partition of every
// topic, with its topic set; the channel closes when ctx ends.
func TestFollowFromTheEnd(t *testing.T) {
	k := newKafkaEnv(t, 3)
	p := k.producer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	write := func(topic, prefix string, n int) map[string]bool {
		t.Helper()
		want := map[string]bool{}
		var msgs []kafka.Message
		for i := range n {
			key := fmt.Sprintf("%s-%d", prefix, i)
			msgs = append(msgs, kafka.Message{Topic: topic, Key: []byte(key), Value: []byte(key)})
			want[topic+"/"+key] = true
		}
		if err := p.WriteMessages(ctx, msgs...); err != nil {
			t.Fatal(err)
		}
		return want
	}
	before := write(k.topics.Events, "before", 12)

	fctx, stop := context.WithCancel(ctx)
	defer stop()
	msgs, err := Follow(fctx, nil, k.brokers, k.topics.Events, k.topics.DLQ)
	if err != nil {
		t.Fatal(err)
	}
	want := write(k.topics.Events, "after", 12)
	for key := range write(k.topics.DLQ, "dead", 4) {
		want[key] = true
	}
	partitions := map[string]bool{}
	for len(want) > 0 {
		select {
		case m := <-msgs:
			key := m.Topic + "/" + string(m.Key)
			if before[key] {
				t.Fatalf("%s was written before Follow and delivered", key)
			}
			if !want[key] || string(m.Value) != string(m.Key) {
				t.Fatalf("unexpected record %s = %q", key, m.Value)
			}
			delete(want, key)
			partitions[fmt.Sprintf("%s/%d", m.Topic, m.Partition)] = true
		case <-ctx.Done():
			t.Fatalf("records never delivered: %v", want)
		}
	}
	if len(partitions) < 3 {
		t.Errorf("records came from %d partitions (%v); the test wants several", len(partitions), partitions)
	}
	stop()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return
			}
			t.Fatalf("record %s/%s after the end", m.Topic, m.Key)
		case <-deadline:
			t.Fatal("channel still open 15 s after ctx ended")
		}
	}
}

// A topic that does not exist is an error, not a silent wait.
func TestFollowUnknownTopic(t *testing.T) {
	k := newKafkaEnv(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := Follow(ctx, nil, k.brokers, k.topics.Events, "certfleet.no-such-topic."+fmt.Sprint(time.Now().UnixNano())); err == nil {
		t.Fatal("Follow of a missing topic succeeded")
	}
}
