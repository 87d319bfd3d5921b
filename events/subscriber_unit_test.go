package events

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/internal/clock"
)

// fakeReader is an in-memory fetcher: it hands out queued records and records
// commits. Only for the subscriber's pure logic; Kafka behaviour is tested
// against testenv in subscriber_test.go.
type fakeReader struct {
	mu      sync.Mutex
	queue   chan kafka.Message
	commits []kafka.Message
	closed  bool
}

func newFakeReader(msgs ...kafka.Message) *fakeReader {
	f := &fakeReader{queue: make(chan kafka.Message, max(100, len(msgs)))}
	for i, m := range msgs {
		m.Topic, m.Offset = "src", int64(i)
		f.queue <- m
	}
	return f
}

func (f *fakeReader) FetchMessage(ctx context.Context) (kafka.Message, error) {
	select {
	case m := <-f.queue:
		return m, nil
	case <-ctx.Done():
		return kafka.Message{}, ctx.Err()
	}
}

func (f *fakeReader) CommitMessages(ctx context.Context, msgs ...kafka.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.commits = append(f.commits, msgs...)
	return nil
}

func (f *fakeReader) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

// committed lists the offsets the commits cover, as Kafka counts them:
// committing a record commits every earlier one of its partition (all
// records here are on one).
func (f *fakeReader) committed() []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []int64
	for _, m := range f.commits {
		for o := int64(len(out)); o <= m.Offset; o++ {
			out = append(out, o)
		}
	}
	return out
}

// fakeWriter records written messages; its first failures writes fail. With
// max set it refuses a record of more than max bytes (key, value and
// headers) as the broker does, with MessageSizeTooLarge.
type fakeWriter struct {
	mu       sync.Mutex
	failures int
	max      int
	msgs     []kafka.Message
}

func (w *fakeWriter) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failures > 0 {
		w.failures--
		return errors.New("broker unavailable")
	}
	for _, m := range msgs {
		n := len(m.Key) + len(m.Value)
		for _, h := range m.Headers {
			n += len(h.Key) + len(h.Value)
		}
		if w.max > 0 && n > w.max {
			return fmt.Errorf("events: writing 1 messages, 1 failed: %w", errors.Join(kafka.MessageSizeTooLarge))
		}
	}
	w.msgs = append(w.msgs, msgs...)
	return nil
}

func (w *fakeWriter) written() []kafka.Message {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]kafka.Message(nil), w.msgs...)
}

func testConfig(w MessageWriter) SubscriberConfig {
	cfg := SubscriberConfig{
		Brokers: []string{"unused:1"}, GroupID: "g", Topics: []string{"src"},
		DeadLetter: w, DeadLetterTopic: "dlq", MaxAttempts: 3,
		Backoff: func() backoff.BackOff { return backoff.NewConstantBackOff(time.Millisecond) },
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	cfg.setDefaults()
	return cfg
}

// runUntil runs s until cond holds (or 10 s pass), then shuts it down.
func runUntil(t *testing.T, s *Subscriber, h Handler, cond func() bool) {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- s.Run(context.Background(), h) }()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10 s")
		}
		time.Sleep(time.Millisecond)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestSubscriberLogic(t *testing.T) {
	good := encodeSample(t, 1)
	other := encodeSample(t, 2)
	bad := good
	bad.Value = []byte(`{"request_id":"x"`)

	tests := []struct {
		name         string
		msgs         []kafka.Message
		handler      func(calls int) error
		wantCalls    int
		wantCommits  int
		wantDLQ      int
		wantAttempts string
		wantReason   string
		wantStats    Stats
	}{
		{"success commits", []kafka.Message{good}, func(int) error { return nil }, 1, 1, 0, "", "", Stats{Handled: 1}},
		{"retry then success", []kafka.Message{good}, func(n int) error {
			if n < 3 {
				return errors.New("flaky")
			}
			return nil
		}, 3, 1, 0, "", "", Stats{Handled: 1, Retries: 2}},
		{"exhausted goes to DLQ", []kafka.Message{good}, func(int) error { return errors.New("db down") }, 3, 1, 1, "3", "db down", Stats{Retries: 2, DeadLettered: 1}},
		{"permanent skips retries", []kafka.Message{good}, func(int) error { return Permanent(errors.New("bad input")) }, 1, 1, 1, "1", "bad input", Stats{DeadLettered: 1}},
		{"panic is an error", []kafka.Message{good}, func(int) error { panic("boom") }, 3, 1, 1, "3", "handler panicked: boom", Stats{Retries: 2, DeadLettered: 1}},
		{"undecodable goes to DLQ untouched", []kafka.Message{bad}, func(int) error { return nil }, 0, 1, 1, "0", "malformed JSON", Stats{DeadLettered: 1}},
		{"duplicate id skipped", []kafka.Message{good, other, good}, func(int) error { return nil }, 2, 3, 0, "", "", Stats{Handled: 2, Duplicates: 1}},
		{"dead-lettered id not dead-lettered twice", []kafka.Message{good, good}, func(int) error { return Permanent(errors.New("no")) }, 1, 2, 1, "1", "no", Stats{DeadLettered: 1, Duplicates: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newFakeReader(tt.msgs...)
			w := &fakeWriter{}
			s := newSubscriber(testConfig(w), r)
			var mu sync.Mutex
			calls := 0
			h := func(ctx context.Context, e Event) error {
				mu.Lock()
				calls++
				n := calls
				mu.Unlock()
				return tt.handler(n)
			}
			runUntil(t, s, h, func() bool { return len(r.committed()) == len(tt.msgs) })
			if calls != tt.wantCalls {
				t.Errorf("handler calls %d, want %d", calls, tt.wantCalls)
			}
			if got := len(r.committed()); got != tt.wantCommits {
				t.Errorf("commits %d, want %d", got, tt.wantCommits)
			}
			dl := w.written()
			if len(dl) != tt.wantDLQ {
				t.Fatalf("dead letters %d, want %d", len(dl), tt.wantDLQ)
			}
			if s.Stats() != tt.wantStats {
				t.Errorf("stats %+v, want %+v", s.Stats(), tt.wantStats)
			}
			if tt.wantDLQ == 0 {
				return
			}
			d, ok := ReadDeadLetter(dl[0])
			if !ok || dl[0].Topic != "dlq" || d.Topic != "src" || d.Offset != 0 || d.Group != "g" ||
				fmt.Sprint(d.Attempts) != tt.wantAttempts || !strings.Contains(d.Reason, tt.wantReason) {
				t.Errorf("dead letter %+v on %q, want attempts %s reason containing %q", d, dl[0].Topic, tt.wantAttempts, tt.wantReason)
			}
			if string(dl[0].Value) != string(tt.msgs[0].Value) || string(dl[0].Key) != string(tt.msgs[0].Key) {
				t.Error("dead letter does not carry the original key and value")
			}
		})
	}
}

// TestSubscriberDLQWriteRetried: a failing dead-letter write is retried and
// the offset is committed only after it succeeded.
func TestSubscriberDLQWriteRetried(t *testing.T) {
	bad := encodeSample(t, 1)
	bad.Value = []byte("{}")
	r := newFakeReader(bad)
	w := &fakeWriter{failures: 2}
	s := newSubscriber(testConfig(w), r)
	runUntil(t, s, func(context.Context, Event) error { return nil }, func() bool { return len(r.committed()) == 1 })
	if len(w.written()) != 1 {
		t.Fatalf("dead letters %d, want 1", len(w.written()))
	}
}

// TestSubscriberNoCommitWithoutDLQ: if the dead-letter topic stays
// unwritable until the subscriber is stopped, the record is not committed.
func TestSubscriberNoCommitWithoutDLQ(t *testing.T) {
	bad := encodeSample(t, 1)
	bad.Value = []byte("{}")
	r := newFakeReader(bad)
	w := &fakeWriter{failures: 1 << 30}
	s := newSubscriber(testConfig(w), r)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := s.Run(ctx, func(context.Context, Event) error { return nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run: %v, want deadline exceeded", err)
	}
	if c := r.committed(); len(c) != 0 {
		t.Fatalf("committed %v without a dead letter", c)
	}
}

// TestSubscriberShutdownFinishesInFlight: Shutdown waits for the handler in
// progress and commits it; with an expired deadline it cancels the handler
// and commits nothing.
func TestSubscriberShutdownFinishesInFlight(t *testing.T) {
	for _, graceful := range []bool{true, false} {
		t.Run(fmt.Sprint("graceful=", graceful), func(t *testing.T) {
			r := newFakeReader(encodeSample(t, 1))
			s := newSubscriber(testConfig(&fakeWriter{}), r)
			started := make(chan struct{})
			h := func(ctx context.Context, e Event) error {
				close(started)
				select {
				case <-time.After(200 * time.Millisecond):
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			errc := make(chan error, 1)
			go func() { errc <- s.Run(context.Background(), h) }()
			<-started
			ctx := context.Background()
			if !graceful {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 10*time.Millisecond)
				defer cancel()
			}
			if err := s.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatalf("Run: %v", err)
			}
			want := 0
			if graceful {
				want = 1
			}
			if got := len(r.committed()); got != want {
				t.Fatalf("commits %d, want %d", got, want)
			}
			if !r.closed {
				t.Fatal("reader not closed")
			}
		})
	}
}

func TestSubscriberConfigValidation(t *testing.T) {
	_, err := NewSubscriber(SubscriberConfig{Topics: []string{"a"}, DeadLetterTopic: "a"})
	if err == nil {
		t.Fatal("empty config accepted")
	}
	for _, want := range []string{"Brokers", "GroupID", "nil DeadLetter", "would loop"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestWindow(t *testing.T) {
	w := newWindow(2)
	w.Add("a")
	w.Add("b")
	if !w.Seen("a") { // refreshes a
		t.Fatal("a not seen")
	}
	w.Add("c") // evicts b, the least recently seen
	if w.Seen("b") || !w.Seen("a") || !w.Seen("c") {
		t.Fatal("wrong eviction")
	}
	off := newWindow(-1)
	off.Add("a")
	if off.Seen("a") {
		t.Fatal("disabled window remembers")
	}
}

func TestSanitizeReason(t *testing.T) {
	got := sanitizeReason("a\nb\x00c\xff" + strings.Repeat("x", 2000))
	if strings.ContainsAny(got, "\n\x00") || len(got) > maxReasonLen+3 || !strings.HasPrefix(got, "a b c\uFFFD") {
		t.Fatalf("sanitizeReason = %q", got[:20])
	}
}

func TestDeadLetterRecordRoundTrip(t *testing.T) {
	m := encodeSample(t, 0)
	m.Headers = append(m.Headers, kafka.Header{Key: HeaderDLQReason, Value: []byte("an older reason")})
	d := DeadLetter{Reason: "bad\nthing", Topic: "src", Partition: 2, Offset: 7, Attempts: 4, Group: "g",
		Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	rec := DeadLetterRecord("dlq", m, d)
	got, ok := ReadDeadLetter(rec)
	d.Reason = "bad thing" // sanitized
	if !ok || got != d || rec.Topic != "dlq" {
		t.Fatalf("ReadDeadLetter = %+v, %v; want %+v", got, ok, d)
	}
	n := 0
	for _, h := range rec.Headers {
		if h.Key == HeaderDLQReason {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d reason headers, want the earlier one replaced", n)
	}
	if _, err := Decode(rec); err != nil {
		t.Fatalf("dead letter of a valid event no longer decodes: %v", err)
	}
}

// TestSubscriberDLQTimeFromClock: the dead-letter time is the configured
// clock's, not the wall clock's.
func TestSubscriberDLQTimeFromClock(t *testing.T) {
	bad := encodeSample(t, 1)
	bad.Value = []byte("{}")
	r := newFakeReader(bad)
	w := &fakeWriter{}
	at := time.Date(2031, 2, 3, 4, 5, 6, 0, time.UTC)
	cfg := testConfig(w)
	cfg.Clock = clock.NewFake(at)
	s := newSubscriber(cfg, r)
	runUntil(t, s, func(context.Context, Event) error { return nil }, func() bool { return len(r.committed()) == 1 })
	d, ok := ReadDeadLetter(w.written()[0])
	if !ok || !d.Time.Equal(at) {
		t.Fatalf("dead letter time %v, want the clock's %v", d.Time, at)
	}
}

// TestSubscriberCommitsOnlyHandled: records fetched ahead are not committed
// when Shutdown stops the subscriber in the middle of a handler; offsets
// committed never go backwards and end at the record in hand.
func TestSubscriberCommitsOnlyHandled(t *testing.T) {
	var msgs []kafka.Message
	for i := range 50 {
		m, err := Encode(requestEvent(t, i))
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	r := newFakeReader(msgs...)
	s := newSubscriber(testConfig(&fakeWriter{}), r)
	var calls atomic.Int64
	tenth := make(chan struct{})
	h := func(ctx context.Context, e Event) error {
		if calls.Add(1) == 10 {
			close(tenth)
			time.Sleep(50 * time.Millisecond)
		}
		return nil
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Run(context.Background(), h) }()
	<-tenth
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("Run: %v", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	last := int64(-1)
	for _, m := range r.commits {
		if m.Offset < last {
			t.Fatalf("commit of offset %d after %d", m.Offset, last)
		}
		last = m.Offset
	}
	// The ten handled records, the tenth in hand at Shutdown, are all that
	// may be committed: the forty fetched ahead or not yet fetched are not.
	if last != 9 || calls.Load() != 10 || s.Stats().Handled != 10 {
		t.Fatalf("last committed offset %d after %d handler calls (stats %+v); want 9 after 10", last, calls.Load(), s.Stats())
	}
}

// TestWindowMatchesLRU drives the window and a plain LRU list with the same
// random sightings: they remember the same ids in the same recency order,
// and every remembered id is where its hash leads. The window's own hash,
// and one that sends every id to a few slots, so that probes run long and
// evictions move other slots back.
func TestWindowMatchesLRU(t *testing.T) {
	weak := func(_ maphash.Seed, s string) uint64 { return uint64(0xfffffffe+uint32(len(s)%3)) << 32 } // homes at the table's end and start
	for _, hash := range []string{"maphash", "weak"} {
		rng := rand.New(rand.NewPCG(1, 2))
		for _, size := range []int{1, 3, 50} {
			w := newWindow(size)
			if hash == "weak" {
				w.hash = weak
			}
			var lru []string // most recent last
			touch := func(id string) {
				lru = slices.DeleteFunc(lru, func(s string) bool { return s == id })
				lru = append(lru, id)
			}
			for i := range 20000 {
				id := fmt.Sprint(rng.IntN(3 * size))
				want := slices.Contains(lru, id)
				if i%3 == 0 {
					if got := w.Seen(id); got != want {
						t.Fatalf("%s, size %d, op %d: Seen(%s) = %v, want %v", hash, size, i, id, got, want)
					}
					if want {
						touch(id)
					}
				} else {
					w.Add(id)
					touch(id)
					if len(lru) > size {
						lru = lru[1:]
					}
				}
				checkWindow(t, w, lru, fmt.Sprintf("%s, size %d, op %d", hash, size, i))
			}
		}
	}
}

// checkWindow: w holds exactly the ids of lru, in its order, each found
// from its hash, and no other slot is taken.
func checkWindow(t *testing.T, w *window, lru []string, at string) {
	t.Helper()
	var got []string
	for i := w.head; i >= 0; i = w.ents[i].next {
		got = append(got, w.ents[i].id)
	}
	if !slices.Equal(got, lru) || len(w.ents) != len(lru) {
		t.Fatalf("%s: window holds %q (%d entries), want %q", at, got, len(w.ents), lru)
	}
	taken := 0
	for _, v := range w.slots {
		if v != 0 {
			taken++
		}
	}
	for _, id := range lru {
		if _, i := w.find(id, w.tagOf(id)); i < 0 || w.ents[i].id != id {
			t.Fatalf("%s: %s not found from its hash", at, id)
		}
	}
	if taken != len(lru) || len(w.ents) > w.max || 2*w.max > len(w.slots) {
		t.Fatalf("%s: %d slots taken of %d for %d ids (max %d)", at, taken, len(w.slots), len(lru), w.max)
	}
}
