package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/events"
)

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// runPartition runs w over msgs (partition 0, in offset order) until it is
// idle, checks that the partition is committed up to the last record (none
// holds it), and returns the dead letters, of which it wants dead.
func runPartition(t *testing.T, h *harness, w *Worker, msgs []kafka.Message, dead int) []kafka.Message {
	t.Helper()
	r := h.run(w, 5*time.Second, msgs...)
	r.waitIdle()
	r.stop()
	last := msgs[len(msgs)-1].Offset
	if got := r.f.committed(0); len(got) == 0 || got[len(got)-1] != last {
		t.Fatalf("commits %v, want up to offset %d", got, last)
	}
	dl := h.writer.on(h.topics.DLQ)
	if len(dl) != dead {
		t.Fatalf("%d dead letters, want %d", len(dl), dead)
	}
	return dl
}

// A panic while handling one record is recovered: that record is
// dead-lettered with the panic's reason and its claim handed back, the
// metric counts it, and the worker goes on (the next record of the
// partition is obtained and both are committed).
func TestPanicIsDeadLettered(t *testing.T) {
	h := newHarness(t)
	h.issuer.obtain = func(_ context.Context, req acmeissuer.Request, _ int64) (*acmeissuer.Result, error) {
		if req.SANs[0] == "boom.example.com" {
			var m map[string]int
			m["x"]++ // a nil map write: a runtime panic, as a bug would raise
		}
		return issueTest(req.SANs)
	}
	w := h.worker(nil)
	msgs := []kafka.Message{
		record(t, h.topics.Requests, 0, 0, newRequest("req-boom", "boom.example.com")),
		record(t, h.topics.Requests, 0, 1, newRequest("req-ok", "ok.example.com")),
	}
	dl := runPartition(t, h, w, msgs, 1)
	d, _ := events.ReadDeadLetter(dl[0])
	if d.Offset != 0 || !strings.Contains(d.Reason, "panic while handling the record") || !strings.Contains(d.Reason, "nil map") {
		t.Errorf("dead letter %+v: want offset 0 and the panic's reason", d)
	}
	if !bytes.Equal(dl[0].Value, msgs[0].Value) {
		t.Error("the panicking record was not dead-lettered unchanged")
	}
	if evs := decoded(t, h.writer.on(h.topics.Events)); len(evs) != 1 || evs[0].Type() != events.TypeCertObtained {
		t.Errorf("events %v, want the next record's cert_obtained", evs)
	}
	if row := h.claims.rows["req-boom"]; row == nil || row.owner != "" {
		t.Errorf("the panicking job's claim was not handed back: %+v", row)
	}
	if got := counterValue(t, w.cfg.Metrics.JobPanics); got != 1 {
		t.Errorf("job panics %v, want 1", got)
	}
	if got := counterValue(t, w.cfg.Metrics.Jobs.WithLabelValues(OutcomeDeadLettered)); got != 1 {
		t.Errorf("dead-lettered jobs %v, want 1", got)
	}
}

// A record the DLQ refuses (here: larger than the broker takes) is
// dead-lettered as a stub, not retried for ever: the partition's commits go
// past it and the next record is handled. A record holding private key
// material is a stub too, without its value.
func TestRefusedDeadLetterIsStubbed(t *testing.T) {
	h := newHarness(t)
	h.writer.refuse = func(m kafka.Message) error {
		if len(m.Value) > 64<<10 {
			return fmt.Errorf("events: writing 1 messages to %s: %w", m.Topic, kafka.MessageSizeTooLarge)
		}
		return nil
	}
	huge := record(t, h.topics.Requests, 0, 0, newRequest("req-huge", "huge.example.com"))
	huge.Value = append(bytes.Clone(huge.Value[:len(huge.Value)-1]), []byte(`,"pad":"`+strings.Repeat("a", 1<<20)+`"}`)...)
	keyed := record(t, h.topics.Requests, 0, 1, newRequest("req-key", "key.example.com"))
	keyed.Value = []byte(`{"request_id":"-----BEGIN PRIVATE KEY-----MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg"}`)
	msgs := []kafka.Message{huge, keyed, record(t, h.topics.Requests, 0, 2, newRequest("req-ok", "ok.example.com"))}
	w := h.worker(nil)
	dl := runPartition(t, h, w, msgs, 2)
	byOffset := map[int64]kafka.Message{}
	for _, m := range dl {
		d, _ := events.ReadDeadLetter(m)
		byOffset[d.Offset] = m
		if bytes.Contains(m.Value, []byte("PRIVATE KEY")) || bytes.Contains(m.Value, []byte("MIGHAgEAMBMG")) {
			t.Errorf("key material in the DLQ")
		}
	}
	s, ok := events.ReadStub(byOffset[0])
	if !ok || s.Cause != events.StubRefused || s.Size != len(huge.Value) || len(s.Prefix) != events.StubPrefixBytes {
		t.Errorf("huge record's dead letter: stub %+v, %v", s, ok)
	}
	if s, ok := events.ReadStub(byOffset[1]); !ok || s.Cause != events.StubPrivateKey || s.Prefix != nil || s.Size != len(keyed.Value) {
		t.Errorf("private key record's dead letter: stub %+v, %v", s, ok)
	}
	for cause, want := range map[string]float64{events.StubRefused: 1, events.StubPrivateKey: 1} {
		if got := counterValue(t, w.cfg.Metrics.DLQStubs.WithLabelValues(cause)); got != want {
			t.Errorf("stubs{cause=%s} = %v, want %v", cause, got, want)
		}
	}
	if evs := h.writer.on(h.topics.Events); len(evs) != 1 {
		t.Errorf("%d events, want the last record's cert_obtained", len(evs))
	}
}
