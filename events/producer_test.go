package events

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/testenv"
)

// kafkaEnv is what an integration test needs: brokers, an admin client, and
// a fresh set of topics with a random suffix, deleted at cleanup.
type kafkaEnv struct {
	brokers []string
	client  *kafka.Client
	topics  Topics
}

func newKafkaEnv(t testing.TB, partitions int) kafkaEnv {
	t.Helper()
	s := testenv.Require(t)
	b := make([]byte, 4)
	rand.Read(b)
	suffix := "." + t.Name() + "." + hex.EncodeToString(b)
	suffix = sanitizeTopic(suffix)
	d := DefaultTopics()
	topics := Topics{
		Requests:         d.Requests + suffix,
		Retry:            d.Retry + suffix,
		DLQ:              d.DLQ + suffix,
		Events:           d.Events + suffix,
		RateLimitChanges: d.RateLimitChanges + suffix,
	}
	client := &kafka.Client{Addr: kafka.TCP(s.KafkaBrokers...), Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := Provision(ctx, client, topics.Specs(partitions, 1)...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: topics.All()})
	})
	return kafkaEnv{brokers: s.KafkaBrokers, client: client, topics: topics}
}

func sanitizeTopic(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) > 100 {
		b = b[len(b)-100:]
	}
	return string(b)
}

func (k kafkaEnv) producer(t testing.TB) *Producer {
	t.Helper()
	p, err := NewProducer(ProducerConfig{Brokers: k.brokers, Topics: k.topics})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// readAll reads n records from every partition of topic, from the start,
// without a consumer group.
func (k kafkaEnv) readAll(t *testing.T, topic string, n int) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	md, err := k.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		t.Fatal(err)
	}
	var out []kafka.Message
	for _, p := range md.Topics[0].Partitions {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: k.brokers, Topic: topic, Partition: p.ID, MaxWait: 50 * time.Millisecond})
		last, err := k.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: {kafka.LastOffsetOf(p.ID)}}})
		if err != nil {
			t.Fatal(err)
		}
		end := last.Topics[topic][0].LastOffset
		for off := int64(0); off < end; off++ {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				t.Fatalf("reading %s/%d: %v", topic, p.ID, err)
			}
			out = append(out, m)
		}
		r.Close()
	}
	if len(out) != n {
		t.Fatalf("%s holds %d records, want %d", topic, len(out), n)
	}
	return out
}

func TestProvisionTwice(t *testing.T) {
	k := newKafkaEnv(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := Provision(ctx, k.client, k.topics.Specs(3, 1)...); err != nil {
		t.Fatalf("second Provision: %v", err)
	}
	err := Provision(ctx, k.client, TopicSpec{Name: k.topics.Events, Partitions: 6, ReplicationFactor: 1})
	if !errors.Is(err, ErrTopicMismatch) {
		t.Fatalf("Provision with more partitions than exist: %v, want ErrTopicMismatch", err)
	}
	md, err := k.client.Metadata(ctx, &kafka.MetadataRequest{Topics: k.topics.All()})
	if err != nil {
		t.Fatal(err)
	}
	for _, tp := range md.Topics {
		if len(tp.Partitions) != 3 {
			t.Errorf("%s has %d partitions, want 3", tp.Name, len(tp.Partitions))
		}
	}
}

// TestProducerRoundTrip publishes every sample and reads the records back
// with a plain reader: routing by type, one partition per key, and
// Decode(read) equal to what was published.
func TestProducerRoundTrip(t *testing.T) {
	k := newKafkaEnv(t, 4)
	p := k.producer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	evs := sampleEvents(t)
	if err := p.Publish(ctx, evs...); err != nil {
		t.Fatal(err)
	}
	reqs := k.readAll(t, k.topics.Requests, 1)
	outcomes := k.readAll(t, k.topics.Events, len(evs)-1)
	partitions := map[int]bool{}
	var ids []string
	for _, m := range append(reqs, outcomes...) {
		partitions[m.Partition] = true
		e, err := Decode(m)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, e.ID)
	}
	if reqs[0].Partition != outcomes[0].Partition {
		t.Errorf("request on partition %d, outcomes on %d: one key must map to one partition index on both topics",
			reqs[0].Partition, outcomes[0].Partition)
	}
	if len(partitions) != 1 {
		t.Errorf("one key spread over partitions %v", partitions)
	}
	for _, e := range evs {
		if !slices.Contains(ids, e.ID) {
			t.Errorf("event %s (%s) not read back", e.ID, e.Type())
		}
	}
	// A retry-topic publish goes where it is told.
	if err := p.PublishTo(ctx, k.topics.Retry, evs[0]); err != nil {
		t.Fatal(err)
	}
	k.readAll(t, k.topics.Retry, 1)
}

// TestProducerSurfacesErrors checks that a write to a topic that does not
// exist fails instead of being dropped (auto-creation is off).
func TestProducerSurfacesErrors(t *testing.T) {
	k := newKafkaEnv(t, 1)
	p, err := NewProducer(ProducerConfig{Brokers: k.brokers, Topics: k.topics, MaxAttempts: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = p.PublishTo(ctx, "certfleet.no-such-topic."+k.topics.Events[len(k.topics.Events)-8:], sampleEvents(t)[1])
	if err == nil {
		t.Fatal("write to a missing topic returned nil")
	}
	t.Logf("missing topic: %v", err)
}

// TestProducerLatency measures synchronous single writes; with kafka-go's
// default 1 s BatchTimeout each would take about a second.
func TestProducerLatency(t *testing.T) {
	k := newKafkaEnv(t, 1)
	p := k.producer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := sampleEvents(t)[1]
	const n = 50
	var total time.Duration
	for i := 0; i < n; i++ {
		start := time.Now()
		if err := p.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
		total += time.Since(start)
	}
	mean := total / n
	t.Logf("synchronous single publish: mean %v over %d", mean, n)
	if mean > 200*time.Millisecond {
		t.Errorf("mean synchronous publish %v: BatchTimeout default not applied?", mean)
	}
}
