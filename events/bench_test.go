package events

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

func BenchmarkEncode(b *testing.B) {
	for _, e := range sampleEvents(b) {
		b.Run(e.Type().short(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Encode(e); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	for i, e := range sampleEvents(b) {
		m := encodeSample(b, i)
		b.Run(e.Type().short(), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(m.Value)))
			for b.Loop() {
				if _, err := Decode(m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPublishToHandler measures the latency from the start of a
// synchronous Publish to the subscriber's handler, against testenv Kafka.
// Two publishers each publish one event at a time; the subscriber commits
// every record. Run with -benchtime=10000x for the 10,000 events:
//
//	go test ./events -run '^$' -bench PublishToHandler -benchtime 10000x
func BenchmarkPublishToHandler(b *testing.B) {
	k := newKafkaEnv(b, 2)
	p := k.producer(b)
	evs := make([]Event, b.N)
	for i := range evs {
		evs[i] = requestEvent(b, i)
	}
	var mu sync.Mutex
	sent := make(map[string]time.Time, b.N)
	var lat []time.Duration
	got := make(chan struct{}, b.N)
	s := k.subscriber(b, "g-bench", nil)
	errc := make(chan error, 1)
	go func() {
		errc <- s.Run(context.Background(), func(ctx context.Context, e Event) error {
			now := time.Now()
			mu.Lock()
			lat = append(lat, now.Sub(sent[e.ID]))
			mu.Unlock()
			got <- struct{}{}
			return nil
		})
	}()
	// Warm up: the group join and first fetch are not part of the latency.
	warm := requestEvent(b, -1)
	mu.Lock()
	sent[warm.ID] = time.Now()
	mu.Unlock()
	if err := p.Publish(context.Background(), warm); err != nil {
		b.Fatal(err)
	}
	<-got
	mu.Lock()
	lat = lat[:0]
	mu.Unlock()

	b.ResetTimer()
	const publishers = 2
	var wg sync.WaitGroup
	for w := range publishers {
		wg.Go(func() {
			for i := w; i < len(evs); i += publishers {
				mu.Lock()
				sent[evs[i].ID] = time.Now()
				mu.Unlock()
				if err := p.Publish(context.Background(), evs[i]); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	for range evs {
		select {
		case <-got:
		case <-time.After(30 * time.Second):
			b.Fatal("events lost")
		}
	}
	b.StopTimer()
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	slices.Sort(lat)
	q := func(f float64) float64 { return float64(lat[int(f*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkSubscriberDrain measures how fast one subscriber drains a backlog
// of b.N records from one partition (no-op handler, default commits).
//
//	go test ./events -run '^$' -bench SubscriberDrain -benchtime 10000x
func BenchmarkSubscriberDrain(b *testing.B) {
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
	s := k.subscriber(b, "g-drain", nil)
	got := make(chan struct{}, b.N)
	b.ResetTimer()
	errc := make(chan error, 1)
	go func() {
		errc <- s.Run(context.Background(), func(ctx context.Context, e Event) error {
			got <- struct{}{}
			return nil
		})
	}()
	for range b.N {
		select {
		case <-got:
		case <-time.After(30 * time.Second):
			b.Fatal("records lost")
		}
	}
	b.StopTimer()
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}
