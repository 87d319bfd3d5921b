package events

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/segmentio/kafka-go"
)

// requestEvent builds a distinct, valid issuance request; i picks the SANs
// and the request id, so different i land on different keys.
func requestEvent(t testing.TB, i int) Event {
	t.Helper()
	e, err := New(testSource, testTime, &IssuanceRequest{
		RequestID: fmt.Sprintf("req-%d", i),
		SANs:      []string{fmt.Sprintf("h%d.example.com", i)},
		Tenant:    "tenant-a",
		KeyType:   KeyECDSAP256,
		CA:        "letsencrypt",
		Reason:    ReasonNew,
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// recorder is a handler that records event ids by member.
type recorder struct {
	mu   sync.Mutex
	seen map[string]int // event id -> calls
	by   map[string]int // member -> events
}

func newRecorder() *recorder { return &recorder{seen: map[string]int{}, by: map[string]int{}} }

func (r *recorder) handler(member string, fail func(Event) error) Handler {
	return func(ctx context.Context, e Event) error {
		if fail != nil {
			if err := fail(e); err != nil {
				return err
			}
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		r.seen[e.ID]++
		r.by[member]++
		return nil
	}
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

func (r *recorder) calls(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[id]
}

func (k kafkaEnv) subscriber(t testing.TB, group string, mod func(*SubscriberConfig)) *Subscriber {
	t.Helper()
	cfg := SubscriberConfig{
		Brokers:         k.brokers,
		GroupID:         group,
		Topics:          []string{k.topics.Requests},
		DeadLetter:      k.producer(t),
		DeadLetterTopic: k.topics.DLQ,
		MaxAttempts:     3,
		Backoff:         func() backoff.BackOff { return backoff.NewConstantBackOff(10 * time.Millisecond) },
		Logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := NewSubscriber(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// start runs s in the background; the returned func shuts it down and
// returns Run's error.
func start(s *Subscriber, h Handler) (stop func() error) {
	errc := make(chan error, 1)
	go func() { errc <- s.Run(context.Background(), h) }()
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			return err
		}
		return <-errc
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// committed returns the group's committed offset of partition 0 of topic.
func (k kafkaEnv) committed(t *testing.T, group, topic string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := k.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: {0}}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Error != nil {
		t.Fatal(resp.Error)
	}
	return resp.Topics[topic][0].CommittedOffset
}

// TestSubscriberCommitsAfterSuccess: handled records are committed, so a new
// member of the group starts after them; the group's offset is the count.
func TestSubscriberCommitsAfterSuccess(t *testing.T) {
	for _, interval := range []time.Duration{0, -1} {
		t.Run(fmt.Sprint("CommitInterval=", interval), func(t *testing.T) {
			testCommitsAfterSuccess(t, interval)
		})
	}
}

func testCommitsAfterSuccess(t *testing.T, interval time.Duration) {
	withInterval := func(c *SubscriberConfig) { c.CommitInterval = interval }
	k := newKafkaEnv(t, 1)
	p := k.producer(t)
	ctx := context.Background()
	const n = 20
	for i := 0; i < n; i++ {
		if err := p.Publish(ctx, requestEvent(t, i)); err != nil {
			t.Fatal(err)
		}
	}
	rec := newRecorder()
	s := k.subscriber(t, "g-commit", withInterval)
	stop := start(s, rec.handler("a", nil))
	waitFor(t, "all handled", func() bool { return rec.count() == n })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := k.committed(t, "g-commit", k.topics.Requests); got != n {
		t.Fatalf("committed offset %d, want %d", got, n)
	}
	// A second member of the same group sees only what comes after.
	if err := p.Publish(ctx, requestEvent(t, n)); err != nil {
		t.Fatal(err)
	}
	rec2 := newRecorder()
	stop2 := start(k.subscriber(t, "g-commit", withInterval), rec2.handler("b", nil))
	waitFor(t, "the new event", func() bool { return rec2.count() == 1 })
	time.Sleep(300 * time.Millisecond) // nothing else may arrive
	if err := stop2(); err != nil {
		t.Fatal(err)
	}
	if rec2.count() != 1 || rec2.calls(requestEvent(t, n).ID) != 1 {
		t.Fatalf("second member handled %d events, want only the new one", rec2.count())
	}
}

// TestSubscriberRetryThenDLQ: a handler that keeps failing is called
// MaxAttempts times, the record lands in the DLQ with its metadata, the
// offset is committed and the next record is handled. A record that does not
// decode goes to the DLQ without reaching the handler.
func TestSubscriberRetryThenDLQ(t *testing.T) {
	k := newKafkaEnv(t, 1)
	p := k.producer(t)
	ctx := context.Background()
	poison, next := requestEvent(t, 1), requestEvent(t, 2)
	junk := kafka.Message{Topic: k.topics.Requests, Key: []byte("junk"), Value: []byte("\xff not json"),
		Headers: []kafka.Header{{Key: "ce_specversion", Value: []byte("1.0")}}}
	if err := p.WriteMessages(ctx, junk); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(ctx, poison, next); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	poisonCalls := 0
	rec := newRecorder()
	s := k.subscriber(t, "g-dlq", nil)
	stop := start(s, rec.handler("a", func(e Event) error {
		if e.ID == poison.ID {
			mu.Lock()
			poisonCalls++
			mu.Unlock()
			return errors.New("downstream says no")
		}
		return nil
	}))
	waitFor(t, "next handled", func() bool { return rec.calls(next.ID) == 1 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if poisonCalls != 3 {
		t.Errorf("poison handled %d times, want 3", poisonCalls)
	}
	if got := k.committed(t, "g-dlq", k.topics.Requests); got != 3 {
		t.Errorf("committed offset %d, want 3", got)
	}
	dl := k.readAll(t, k.topics.DLQ, 2)
	d0, ok0 := ReadDeadLetter(dl[0])
	d1, ok1 := ReadDeadLetter(dl[1])
	if !ok0 || !ok1 {
		t.Fatal("dead letters lack metadata")
	}
	if d0.Offset != 0 || d0.Attempts != 0 || d0.Topic != k.topics.Requests || string(dl[0].Value) != string(junk.Value) {
		t.Errorf("junk dead letter %+v", d0)
	}
	t.Logf("junk reason: %s", d0.Reason)
	if d1.Offset != 1 || d1.Attempts != 3 || d1.Reason != "downstream says no" || d1.Group != "g-dlq" {
		t.Errorf("poison dead letter %+v", d1)
	}
	if e, err := Decode(dl[1]); err != nil || e.ID != poison.ID {
		t.Errorf("poison dead letter no longer decodes to the event: %v", err)
	}
}

// TestSubscriberDedupe: the same event published twice (a producer retry, a
// worker re-publishing after a crash) reaches the handler once.
func TestSubscriberDedupe(t *testing.T) {
	k := newKafkaEnv(t, 1)
	p := k.producer(t)
	e, marker := requestEvent(t, 1), requestEvent(t, 2)
	if err := p.Publish(context.Background(), e, e, marker); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	s := k.subscriber(t, "g-dedupe", nil)
	stop := start(s, rec.handler("a", nil))
	waitFor(t, "marker", func() bool { return rec.calls(marker.ID) == 1 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if rec.calls(e.ID) != 1 || s.Stats().Duplicates != 1 {
		t.Fatalf("duplicate handled %d times, stats %+v", rec.calls(e.ID), s.Stats())
	}
	if got := k.committed(t, "g-dedupe", k.topics.Requests); got != 3 {
		t.Fatalf("committed offset %d, want 3 (duplicates are committed too)", got)
	}
}

// TestSubscriberRedeliversUncommitted: a member stopped while its handler is
// still working commits nothing, and the next member gets the record again.
func TestSubscriberRedeliversUncommitted(t *testing.T) {
	k := newKafkaEnv(t, 1)
	p := k.producer(t)
	e := requestEvent(t, 1)
	if err := p.Publish(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	s1 := k.subscriber(t, "g-redeliver", nil)
	inHandler := make(chan struct{})
	runErr := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		runErr <- s1.Run(ctx, func(ctx context.Context, _ Event) error {
			close(inHandler)
			<-ctx.Done() // a crash: the work never finishes
			return ctx.Err()
		})
	}()
	<-inHandler
	cancel()
	if err := <-runErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	stop := start(k.subscriber(t, "g-redeliver", nil), rec.handler("b", nil))
	waitFor(t, "redelivery", func() bool { return rec.calls(e.ID) == 1 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestSubscriberTwoMemberGroup: two members split the partitions; together
// they handle every event, each gets some.
func TestSubscriberTwoMemberGroup(t *testing.T) {
	k := newKafkaEnv(t, 4)
	p := k.producer(t)
	rec := newRecorder()
	stopA := start(k.subscriber(t, "g-two", nil), rec.handler("a", nil))
	stopB := start(k.subscriber(t, "g-two", nil), rec.handler("b", nil))
	published := 0
	deadline := time.Now().Add(30 * time.Second)
	for {
		var batch []Event
		for i := 0; i < 20; i++ {
			batch = append(batch, requestEvent(t, published))
			published++
		}
		if err := p.Publish(context.Background(), batch...); err != nil {
			t.Fatal(err)
		}
		rec.mu.Lock()
		both := rec.by["a"] > 0 && rec.by["b"] > 0
		rec.mu.Unlock()
		if both && published >= 100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d events, members handled %v", published, rec.by)
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitFor(t, "every event", func() bool { return rec.count() == published })
	if err := stopA(); err != nil {
		t.Fatal(err)
	}
	if err := stopB(); err != nil {
		t.Fatal(err)
	}
	t.Logf("published %d; member a handled %d, b %d (duplicates from rebalancing count twice)", published, rec.by["a"], rec.by["b"])
}
