package changefeed_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/ratelimit/changefeed"
	"github.com/certfleet/certfleet/schema"
	"github.com/certfleet/certfleet/testenv"
)

type recordingWriter struct{ msgs []kafka.Message }

func (w *recordingWriter) WriteMessages(_ context.Context, msgs ...kafka.Message) error {
	w.msgs = append(w.msgs, msgs...)
	return nil
}

func TestPublisherRoutesChangesTopic(t *testing.T) {
	var w recordingWriter
	p := changefeed.NewPublisher(&w, "site.changes")
	ctx := context.Background()
	if err := p.Publish(ctx, ratelimit.ChangesTopic, "id-1", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(ctx, "other", "id-2", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if len(w.msgs) != 2 || w.msgs[0].Topic != "site.changes" || string(w.msgs[0].Key) != "id-1" || w.msgs[1].Topic != "other" {
		t.Fatalf("messages %+v", w.msgs)
	}
	w.msgs = nil
	_ = changefeed.NewPublisher(&w, "").Publish(ctx, ratelimit.ChangesTopic, "k", nil)
	if w.msgs[0].Topic != ratelimit.ChangesTopic {
		t.Fatalf("empty topic routed to %q", w.msgs[0].Topic)
	}
}

func TestNewConsumerValidates(t *testing.T) {
	cache := ratelimit.NewOverrideCache(nil, 0, nil)
	for _, cfg := range []changefeed.ConsumerConfig{
		{},
		{Brokers: []string{"x:1"}, MaxWait: -1},
		{Brokers: []string{"x:1"}, RetryMin: time.Second, RetryMax: time.Millisecond},
	} {
		if _, err := changefeed.NewConsumer(cfg, cache); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}

// env is a migrated fresh database, a unique changes topic and a producer
// publishing to it.
type env struct {
	brokers []string
	topic   string
	db      *db.DB
	pub     *changefeed.Publisher
}

func setup(t *testing.T, ctx context.Context, createTopic bool) env {
	t.Helper()
	s := testenv.Require(t)
	url := testenv.FreshDatabase(t)
	d, err := db.Open(ctx, db.Config{URL: url, MaxConns: 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	if _, err := schema.Migrate(ctx, d, schema.Options{}); err != nil {
		t.Fatal(err)
	}
	topic := fmt.Sprintf("test.ratelimit.changes.%s.%d", t.Name(), time.Now().UnixNano())
	if createTopic {
		if err := testenv.CreateTopic(ctx, s.KafkaBrokers, topic, 3); err != nil {
			t.Fatal(err)
		}
	}
	prod, err := events.NewProducer(events.ProducerConfig{Brokers: s.KafkaBrokers, Topics: events.Topics{RateLimitChanges: topic}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = prod.Close() })
	return env{brokers: s.KafkaBrokers, topic: topic, db: d, pub: changefeed.NewPublisher(prod, prod.Topics().RateLimitChanges)}
}

// startConsumer runs a consumer feeding cache until the test ends.
func startConsumer(t *testing.T, ctx context.Context, e env, cache *ratelimit.OverrideCache, onErr func(error)) *changefeed.Consumer {
	t.Helper()
	c, err := changefeed.NewConsumer(changefeed.ConsumerConfig{Brokers: e.brokers, Topic: e.topic, OnError: onErr,
		RetryMin: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond}, cache)
	if err != nil {
		t.Fatal(err)
	}
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(cctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	})
	return c
}

func startRelay(t *testing.T, ctx context.Context, e env, interval time.Duration) {
	t.Helper()
	relay := ratelimit.NewRelay(e.db, e.pub)
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = relay.Run(rctx, interval, func(err error) { t.Errorf("relay: %v", err) }) })
	t.Cleanup(func() { stop(); wg.Wait() })
}

func waitReady(t *testing.T, cs ...*changefeed.Consumer) {
	t.Helper()
	for i, c := range cs {
		select {
		case <-c.Ready():
		case <-time.After(30 * time.Second):
			t.Fatalf("consumer %d not ready after 30s", i)
		}
	}
}

// waitFor polls every cache until check accepts its answer for txn,
// returning when the last one did.
func waitFor(t *testing.T, ctx context.Context, caches []*ratelimit.OverrideCache, txn ratelimit.Transaction, limit time.Duration, check func(*ratelimit.Override) bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(limit)
	for i, c := range caches {
		for {
			got, err := c.Find(ctx, time.Now(), []ratelimit.Transaction{txn})
			if err != nil {
				t.Fatal(err)
			}
			if check(got[0]) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cache %d still answers %+v after %s", i, got[0], limit)
			}
			time.Sleep(time.Millisecond)
		}
	}
	return time.Now()
}

// TestPropagationOverKafka measures the time from an override commit to
// every worker's cache answering with the new value, end to end: outbox,
// relay (polling every 50 ms), the events producer (acks=all), Kafka, and
// four consumers, one per cache. Caches use a one-hour TTL, so only the
// Kafka message can make them see a change.
func TestPropagationOverKafka(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := setup(t, ctx, true)
	store := ratelimit.NewOverrideStore(e.db, nil)
	cat, err := ratelimit.NewCatalogue(ratelimit.CA{ID: "le", Directory: ratelimit.LetsEncryptDirectory, Limits: ratelimit.LetsEncryptLimits()})
	if err != nil {
		t.Fatal(err)
	}
	txn, err := cat.Transaction(ratelimit.LetsEncryptDirectory, ratelimit.NewOrdersPerAccount, "acct-k")
	if err != nil {
		t.Fatal(err)
	}
	txn.Account = "acct-k"

	caches := make([]*ratelimit.OverrideCache, 4)
	consumers := make([]*changefeed.Consumer, 4)
	for i := range caches {
		caches[i] = ratelimit.NewOverrideCache(store, time.Hour, nil)
		// Right after the topic is created its partitions may have no
		// leader yet; the consumer reports that and retries.
		consumers[i] = startConsumer(t, ctx, e, caches[i], func(err error) { t.Logf("consumer %d (recovering): %v", i, err) })
	}
	waitReady(t, consumers...)
	// Every cache remembers "no override" before the first change.
	waitFor(t, ctx, caches, txn, time.Second, func(o *ratelimit.Override) bool { return o == nil })
	startRelay(t, ctx, e, 50*time.Millisecond)

	o, err := store.Create(ctx, ratelimit.Override{Name: ratelimit.NewOrdersPerAccount, Key: "acct-k",
		Limit: ratelimit.Limit{Count: 1000, Period: time.Hour, Burst: 1000}, ValidFrom: time.Now().Add(-time.Minute), CreatedBy: "test"})
	if err != nil {
		t.Fatal(err)
	}
	committed := time.Now()
	first := waitFor(t, ctx, caches, txn, 10*time.Second, func(o *ratelimit.Override) bool { return o != nil }).Sub(committed)

	const changes = 100
	lat := make([]time.Duration, 0, changes)
	for i := range changes {
		next := *o
		next.Limit.Count = int64(1001 + i)
		next.Limit.Burst = next.Limit.Count
		// Commit at a random point of the relay's 50 ms poll cycle rather
		// than always just after a pass.
		time.Sleep(time.Duration(rand.Int64N(int64(50 * time.Millisecond))))
		if o, err = store.Update(ctx, next, "test"); err != nil {
			t.Fatal(err)
		}
		committed := time.Now()
		seen := waitFor(t, ctx, caches, txn, 10*time.Second, func(o *ratelimit.Override) bool { return o != nil && o.Limit.Count == next.Limit.Count })
		lat = append(lat, seen.Sub(committed))
	}

	// Disabling the last override makes every cache fall back to the default.
	if _, err := store.Disable(ctx, o.ID, o.Version, "test"); err != nil {
		t.Fatal(err)
	}
	committed = time.Now()
	disabled := waitFor(t, ctx, caches, txn, 10*time.Second, func(o *ratelimit.Override) bool { return o == nil }).Sub(committed)

	slices.Sort(lat)
	p50, p99, worst := lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
	t.Logf("propagation over Kafka, %d updates, 4 caches each with its own consumer, relay poll 50ms: p50 %s, p99 %s, max %s; create %s, disable %s",
		changes, p50.Round(time.Microsecond), p99.Round(time.Microsecond), worst.Round(time.Microsecond),
		first.Round(time.Microsecond), disabled.Round(time.Microsecond))
	if worst > 5*time.Second || disabled > 5*time.Second {
		t.Errorf("max propagation %s, disable %s: target is at most 5s", worst, disabled)
	}
}

// TestConsumerRetriesUntilTopicExists: a consumer started before its topic
// reports the error, retries, and delivers once the topic is there.
func TestConsumerRetriesUntilTopicExists(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := setup(t, ctx, false)
	store := ratelimit.NewOverrideStore(e.db, nil)
	cache := ratelimit.NewOverrideCache(store, time.Hour, nil)
	errs := make(chan error, 100)
	c := startConsumer(t, ctx, e, cache, func(err error) {
		select {
		case errs <- err:
		default:
		}
	})
	select {
	case err := <-errs:
		t.Logf("reported while the topic is missing: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no error reported for a missing topic")
	}
	select {
	case <-c.Ready():
		t.Fatal("ready without a topic")
	default:
	}
	if err := testenv.CreateTopic(ctx, e.brokers, e.topic, 1); err != nil {
		t.Fatal(err)
	}
	waitReady(t, c)

	cat := ratelimit.DefaultCatalogue()
	txn, err := cat.Transaction(ratelimit.LetsEncryptDirectory, ratelimit.NewOrdersPerAccount, "acct-r")
	if err != nil {
		t.Fatal(err)
	}
	txn.Account = "acct-r"
	waitFor(t, ctx, []*ratelimit.OverrideCache{cache}, txn, time.Second, func(o *ratelimit.Override) bool { return o == nil })
	startRelay(t, ctx, e, 20*time.Millisecond)
	if _, err := store.Create(ctx, ratelimit.Override{Name: ratelimit.NewOrdersPerAccount, Key: "acct-r",
		Limit: ratelimit.Limit{Count: 7, Period: time.Hour, Burst: 7}, ValidFrom: time.Now().Add(-time.Minute), CreatedBy: "test"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, []*ratelimit.OverrideCache{cache}, txn, 10*time.Second, func(o *ratelimit.Override) bool { return o != nil && o.Limit.Count == 7 })
}
