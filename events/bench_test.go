package events

import (
	"context"
	"encoding/json"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// Every benchmark here compares certfleet's code with a baseline measured in
// the same run (sub-benchmark "baseline_..."): the plain library doing the
// same work without the events contract. `make bench` prints the ratios.

// BenchmarkEncode: Encode (validation, JSON, CloudEvents headers) against
// encoding/json marshalling the same payload.
func BenchmarkEncode(b *testing.B) {
	for _, e := range sampleEvents(b) {
		b.Run(e.Type().short()+"/certfleet", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Encode(e); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(e.Type().short()+"/baseline_json", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := json.Marshal(e.Data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecode: Decode (header checks, strict JSON, validation) against
// encoding/json unmarshalling the same record value into the payload type.
func BenchmarkDecode(b *testing.B) {
	for i, e := range sampleEvents(b) {
		m := encodeSample(b, i)
		b.Run(e.Type().short()+"/certfleet", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(m.Value)))
			for b.Loop() {
				if _, err := Decode(m); err != nil {
					b.Fatal(err)
				}
			}
		})
		typ := reflect.TypeOf(e.Data).Elem()
		b.Run(e.Type().short()+"/baseline_json", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(m.Value)))
			for b.Loop() {
				if err := json.Unmarshal(m.Value, reflect.New(typ).Interface()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// plainWriter is a kafka-go writer with the Producer's settings
// (RequireAll, 5 ms batch timeout, 100 per batch, murmur2 keys).
func plainWriter(b *testing.B, k kafkaEnv) *kafka.Writer {
	w := &kafka.Writer{Addr: kafka.TCP(k.brokers...), Balancer: &kafka.Murmur2Balancer{Consistent: true},
		MaxAttempts: 10, BatchSize: 100, BatchTimeout: 5 * time.Millisecond, WriteTimeout: 10 * time.Second,
		RequiredAcks: kafka.RequireAll}
	b.Cleanup(func() { w.Close() })
	return w
}

// plainReader is a kafka-go group reader with the Subscriber's default
// settings (MinBytes 1, MaxWait 250 ms, offsets committed every 100 ms).
func plainReader(b *testing.B, k kafkaEnv, group string) *kafka.Reader {
	cfg := SubscriberConfig{Brokers: k.brokers, GroupID: group, Topics: []string{k.topics.Requests}}
	cfg.setDefaults()
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: cfg.Brokers, GroupID: cfg.GroupID, GroupTopics: cfg.Topics, MinBytes: 1, MaxBytes: 4 << 20,
		MaxWait: cfg.MaxWait, StartOffset: cfg.StartOffset, CommitInterval: cfg.CommitInterval,
		SessionTimeout: cfg.SessionTimeout, HeartbeatInterval: cfg.HeartbeatInterval, RebalanceTimeout: cfg.SessionTimeout,
		JoinGroupBackoff: 500 * time.Millisecond, ReadLagInterval: -1,
	})
	return r
}

// plainMessages is evs encoded once, ahead of the baseline's timing, with
// their topic set: the baseline carries the same records without Encode.
func plainMessages(b *testing.B, topic string, evs []Event) []kafka.Message {
	msgs := make([]kafka.Message, len(evs))
	for i, e := range evs {
		m, err := Encode(e)
		if err != nil {
			b.Fatal(err)
		}
		m.Topic = topic
		msgs[i] = m
	}
	return msgs
}

func headerValue(m kafka.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// latency times events from the start of their synchronous publish to their
// arrival at a consumer.
type latency struct {
	mu   sync.Mutex
	sent map[string]time.Time
	lat  []time.Duration
	got  chan struct{}
}

func newLatency(n int) *latency {
	return &latency{sent: make(map[string]time.Time, n+1), got: make(chan struct{}, n+1)}
}

func (l *latency) publishing(id string) {
	l.mu.Lock()
	l.sent[id] = time.Now()
	l.mu.Unlock()
}

func (l *latency) arrived(id string) {
	now := time.Now()
	l.mu.Lock()
	if t, ok := l.sent[id]; ok {
		l.lat = append(l.lat, now.Sub(t))
	}
	l.mu.Unlock()
	l.got <- struct{}{}
}

// run publishes the warm-up event (index -1: the group join and first fetch
// are not part of the latency), then b.N events from two publishers, each
// one at a time, and reports p50, p99, max and events/s.
func (l *latency) run(b *testing.B, evs []Event, warm Event, publish func(ctx context.Context, i int) error, publishWarm func(ctx context.Context) error) {
	l.publishing(warm.ID)
	if err := publishWarm(context.Background()); err != nil {
		b.Fatal(err)
	}
	<-l.got
	l.mu.Lock()
	l.lat = l.lat[:0]
	l.mu.Unlock()

	b.ResetTimer()
	const publishers = 2
	var wg sync.WaitGroup
	for w := range publishers {
		wg.Go(func() {
			for i := w; i < len(evs); i += publishers {
				l.publishing(evs[i].ID)
				if err := publish(context.Background(), i); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	for range evs {
		select {
		case <-l.got:
		case <-time.After(30 * time.Second):
			b.Fatal("events lost")
		}
	}
	b.StopTimer()
	slices.Sort(l.lat)
	q := func(f float64) float64 { return float64(l.lat[int(f*float64(len(l.lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(l.lat[len(l.lat)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkPublishToHandler measures the latency from the start of a
// synchronous publish to the consumer, against testenv Kafka: two
// publishers each publish one event at a time to a 2-partition topic.
// certfleet: Producer.Publish to a Subscriber's handler (decode, dedupe,
// commit every record). baseline_kafkago: the same records, encoded ahead,
// through a kafka-go Writer and group Reader with the same settings. Run
// with -benchtime=10000x for the 10,000 events:
//
//	go test ./events -run '^$' -bench PublishToHandler -benchtime 10000x
func BenchmarkPublishToHandler(b *testing.B) {
	b.Run("certfleet", func(b *testing.B) {
		k := newKafkaEnv(b, 2)
		p := k.producer(b)
		evs, warm := latencyEvents(b)
		l := newLatency(b.N)
		s := k.subscriber(b, "g-bench", nil)
		errc := make(chan error, 1)
		go func() {
			errc <- s.Run(context.Background(), func(ctx context.Context, e Event) error {
				l.arrived(e.ID)
				return nil
			})
		}()
		l.run(b, evs, warm,
			func(ctx context.Context, i int) error { return p.Publish(ctx, evs[i]) },
			func(ctx context.Context) error { return p.Publish(ctx, warm) })
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	})
	b.Run("baseline_kafkago", func(b *testing.B) {
		k := newKafkaEnv(b, 2)
		w := plainWriter(b, k)
		evs, warm := latencyEvents(b)
		msgs := plainMessages(b, k.topics.Requests, append(evs, warm))
		l := newLatency(b.N)
		r := plainReader(b, k, "g-bench-plain")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					return
				}
				l.arrived(headerValue(m, hID))
			}
		}()
		l.run(b, evs, warm,
			func(ctx context.Context, i int) error { return w.WriteMessages(ctx, msgs[i]) },
			func(ctx context.Context) error { return w.WriteMessages(ctx, msgs[len(msgs)-1]) })
		cancel()
		<-done
		if err := r.Close(); err != nil {
			b.Fatal(err)
		}
	})
}

func latencyEvents(b *testing.B) (evs []Event, warm Event) {
	evs = make([]Event, b.N)
	for i := range evs {
		evs[i] = requestEvent(b, i)
	}
	return evs, requestEvent(b, -1)
}

// BenchmarkSubscriberDrain measures how fast one consumer drains a backlog
// of b.N records from one partition: certfleet's Subscriber (no-op handler,
// default commits) against a kafka-go group Reader with the same settings.
//
//	go test ./events -run '^$' -bench SubscriberDrain -benchtime 10000x
func BenchmarkSubscriberDrain(b *testing.B) {
	backlog := func(b *testing.B) kafkaEnv {
		k := newKafkaEnv(b, 1)
		p := k.producer(b)
		var batch []Event
		for i := 0; i < b.N; i++ {
			batch = append(batch, requestEvent(b, i))
			if len(batch) == 500 || i == b.N-1 {
				if err := p.Publish(context.Background(), batch...); err != nil {
					b.Fatal(err)
				}
				batch = batch[:0]
			}
		}
		return k
	}
	b.Run("certfleet", func(b *testing.B) {
		k := backlog(b)
		s := k.subscriber(b, "g-drain", nil)
		// The handler counts, as the baseline's loop does, and wakes the
		// benchmark once at the end rather than once per record.
		var handled atomic.Int64
		all := make(chan struct{})
		b.ResetTimer()
		errc := make(chan error, 1)
		go func() {
			errc <- s.Run(context.Background(), func(ctx context.Context, e Event) error {
				if handled.Add(1) == int64(b.N) {
					close(all)
				}
				return nil
			})
		}()
		select {
		case <-all:
		case <-time.After(30*time.Second + time.Duration(b.N)*time.Millisecond):
			b.Fatalf("records lost: %d of %d handled", handled.Load(), b.N)
		}
		b.StopTimer()
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
	b.Run("baseline_kafkago", func(b *testing.B) {
		k := backlog(b)
		r := plainReader(b, k, "g-drain-plain")
		defer r.Close()
		b.ResetTimer()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second+time.Duration(b.N)*time.Millisecond)
		defer cancel()
		for range b.N {
			if _, err := r.ReadMessage(ctx); err != nil {
				b.Fatalf("records lost: %v", err)
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
}
