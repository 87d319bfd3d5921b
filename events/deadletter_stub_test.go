package events

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

func TestRecordRefused(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{kafka.MessageSizeTooLarge, true},
		{kafka.MessageTooLargeError{}, true}, // kafka-go's own check above BatchBytes
		{fmt.Errorf("events: writing 1 messages, 1 failed: %w", errors.Join(kafka.MessageSizeTooLarge)), true},
		{fmt.Errorf("[10] Message Size Too Large: %w", kafka.RecordListTooLarge), true},
		{kafka.WriteErrors{kafka.InvalidRecord}, true},
		{kafka.WriteErrors{nil, kafka.UnknownTopicOrPartition}, false},
		{kafka.UnknownTopicOrPartition, false},
		{kafka.TopicAuthorizationFailed, false},
		{kafka.NotEnoughReplicas, false},
		{io.EOF, false},
		{context.DeadlineExceeded, false},
		{nil, false},
	} {
		if got := RecordRefused(tc.err); got != tc.want {
			t.Errorf("RecordRefused(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// A record the dead-letter topic refuses becomes a stub: its key and
// headers, the value's size, hash and first KiB, the DLQ's refusal; a stub
// the topic refuses too loses the key and headers; other errors are
// returned for the caller to retry.
func TestWriteDeadLetterStub(t *testing.T) {
	ctx := context.Background()
	big := encodeSample(t, 0)
	big.Value = append([]byte(`{"request_id":"x",`), bytes.Repeat([]byte("a"), 1<<20)...)
	big.Headers = append(big.Headers, kafka.Header{Key: "traceparent", Value: []byte("00-abc-def-01")})
	d := DeadLetter{Reason: "events: value: value larger than 64 KiB: 1048594 bytes", Topic: "src", Partition: 3, Offset: 9, Group: "g", Time: time.Unix(0, 0)}

	w := &fakeWriter{max: 64 << 10}
	rec, err := WriteDeadLetter(ctx, w, "dlq", big, d)
	if err != nil || len(w.msgs) != 1 {
		t.Fatalf("WriteDeadLetter: %v (%d written)", err, len(w.msgs))
	}
	got, ok := ReadDeadLetter(w.msgs[0])
	s, isStub := ReadStub(w.msgs[0])
	if !ok || !isStub || got.Stub != StubRefused || got.Reason != d.Reason || got.Topic != "src" || got.Offset != 9 {
		t.Fatalf("dead letter %+v (stub %v): want a refused stub with the original reason and origin", got, isStub)
	}
	if s.Cause != StubRefused || s.Size != len(big.Value) || s.SHA256 != sha(big.Value) || !bytes.Equal(s.Prefix, big.Value[:StubPrefixBytes]) ||
		s.KeySize != len(big.Key) || s.KeySHA256 != sha(big.Key) || s.Headers != len(big.Headers) || s.HeadersKept != len(big.Headers) ||
		!strings.Contains(s.Refusal, "Message Size Too Large") {
		t.Fatalf("stub %+v does not describe the record", s)
	}
	if !bytes.Equal(rec.Key, big.Key) || dlqTestHeader(rec, "traceparent") != "00-abc-def-01" || dlqTestHeader(rec, "ce_type") != dlqTestHeader(big, "ce_type") {
		t.Error("stub lost the record's key or headers")
	}
	if rec.Topic != "dlq" || !bytes.Equal(rec.Value, w.msgs[0].Value) {
		t.Error("WriteDeadLetter does not return what it wrote")
	}

	// Headers too large for the topic as well: the bare stub.
	w = &fakeWriter{max: 8 << 10}
	huge := big
	huge.Headers = nil
	for i := range 64 {
		huge.Headers = append(huge.Headers, kafka.Header{Key: fmt.Sprintf("h%d", i), Value: bytes.Repeat([]byte("v"), 2048)})
	}
	rec, err = WriteDeadLetter(ctx, w, "dlq", huge, d)
	s, _ = ReadStub(rec)
	if err != nil || len(w.msgs) != 1 || rec.Key != nil || s.Headers != 64 || s.HeadersKept != 0 || s.SHA256 != sha(big.Value) {
		t.Fatalf("bare stub: %v, %d written, stub %+v", err, len(w.msgs), s)
	}
	for _, h := range rec.Headers {
		if !strings.HasPrefix(h.Key, "certfleet_dlq_") {
			t.Errorf("bare stub keeps header %s", h.Key)
		}
	}

	// Headers are bounded even when the stub fits: at most 64, values cut to 1 KiB.
	w = &fakeWriter{max: 1 << 30}
	many := huge
	many.Headers = append(many.Headers, kafka.Header{Key: "h64", Value: []byte("x")})
	rec = stubRecord("dlq", many, d, "refused", true)
	if s, _ := ReadStub(rec); s.Headers != 65 || s.HeadersKept != 64 {
		t.Errorf("stub keeps %d of %d headers, want 64", s.HeadersKept, s.Headers)
	}
	for _, h := range rec.Headers {
		if len(h.Value) > 1024 {
			t.Errorf("stub header %s of %d bytes", h.Key, len(h.Value))
		}
	}

	// An error that holds every record is not the record's fault: returned.
	w = &fakeWriter{failures: 1}
	if _, err := WriteDeadLetter(ctx, w, "dlq", big, d); err == nil || RecordRefused(err) || len(w.msgs) != 0 {
		t.Fatalf("unreachable DLQ: %v, %d written; want the error, nothing written", err, len(w.msgs))
	}
	// A record that fits goes whole, without a stub header.
	small := encodeSample(t, 0)
	rec, err = WriteDeadLetter(ctx, w, "dlq", small, d)
	if got, _ := ReadDeadLetter(rec); err != nil || got.Stub != "" || !bytes.Equal(rec.Value, small.Value) {
		t.Fatalf("small record: %v, stub %q", err, got.Stub)
	}
}

// A record holding "PRIVATE KEY" anywhere is never copied into the DLQ: its
// stub has the headers without key material, the hashes and no prefix, and a
// reason quoting the key is cut before the quote.
func TestDeadLetterPrivateKey(t *testing.T) {
	const key = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBsecretsecretsecret\n-----END EC PRIVATE KEY-----\n"
	base := encodeSample(t, 0)
	for _, tc := range []struct {
		name string
		m    kafka.Message
	}{
		{"value", kafka.Message{Key: base.Key, Value: []byte(`{"chain_pem":"` + key + `"}`), Headers: base.Headers}},
		{"header", kafka.Message{Key: base.Key, Value: base.Value, Headers: append(setHeader(base, "ce_time", key).Headers, kafka.Header{Key: "x", Value: []byte("y")})}},
		{"key", kafka.Message{Key: []byte(key), Value: base.Value, Headers: base.Headers}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := DeadLetter{Reason: `events: ce_time: invalid header: "` + key[:40] + `..." is not an RFC 3339 time`, Topic: "src", Time: time.Unix(0, 0)}
			rec := DeadLetterRecord("dlq", tc.m, d)
			all := string(rec.Key) + string(rec.Value)
			for _, h := range rec.Headers {
				all += h.Key + string(h.Value)
			}
			if strings.Contains(all, "PRIVATE KEY") || strings.Contains(all, "secretsecret") {
				t.Fatalf("key material in the dead letter: %q", all)
			}
			s, ok := ReadStub(rec)
			got, _ := ReadDeadLetter(rec)
			if !ok || s.Cause != StubPrivateKey || got.Stub != StubPrivateKey || s.Prefix != nil || s.SHA256 != sha(tc.m.Value) || s.Size != len(tc.m.Value) || s.KeySHA256 != sha(tc.m.Key) {
				t.Fatalf("stub %+v", s)
			}
			if !strings.HasPrefix(got.Reason, "events: ce_time: invalid header:") || !strings.Contains(got.Reason, "withheld") {
				t.Errorf("reason %q: want the field named and the quote withheld", got.Reason)
			}
			if s.HeadersKept == 0 || dlqTestHeader(rec, "ce_type") != dlqTestHeader(base, "ce_type") {
				t.Errorf("headers not kept: %d", s.HeadersKept)
			}
		})
	}
}

// On the real broker: a gzip-compressed record whose value is 1 MiB is
// accepted on the source topic (compressed), refused by the dead-letter
// topic uncompressed, and dead-lettered by the subscriber as a stub; the
// next record on its partition is handled and the group's committed offset
// passes both.
func TestSubscriberStubsRefusedRecord(t *testing.T) {
	k := newKafkaEnv(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	hostile := &kafka.Writer{Addr: kafka.TCP(k.brokers...), Topic: k.topics.Requests, Compression: kafka.Gzip,
		RequiredAcks: kafka.RequireAll, BatchBytes: 4 << 20, BatchTimeout: 5 * time.Millisecond}
	defer hostile.Close()
	value := append([]byte(`{"request_id":"hostile",`), bytes.Repeat([]byte(" "), 1<<20)...)
	value = append(value, '}')
	ce := encodeSample(t, 0).Headers
	if err := hostile.WriteMessages(ctx, kafka.Message{Key: []byte("hostile"), Value: value, Headers: ce}); err != nil {
		t.Fatalf("the broker refused the compressed record: %v", err)
	}
	next := requestEvent(t, 2)
	if err := k.producer(t).Publish(ctx, next); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	s := k.subscriber(t, "g-stub", nil)
	stop := start(s, rec.handler("a", nil))
	waitFor(t, "the record after the refused one handled", func() bool { return rec.calls(next.ID) == 1 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.DeadLettered != 1 || st.DeadLetterStubs != 1 {
		t.Errorf("stats %+v, want one dead letter, a stub", st)
	}
	if got := k.committed(t, "g-stub", k.topics.Requests); got != 2 {
		t.Errorf("committed offset %d, want 2", got)
	}
	dl := k.readAll(t, k.topics.DLQ, 1)
	st, ok := ReadStub(dl[0])
	d, _ := ReadDeadLetter(dl[0])
	if !ok || st.Cause != StubRefused || st.Size != len(value) || st.SHA256 != sha(value) || len(st.Prefix) != StubPrefixBytes || d.Offset != 0 || d.Topic != k.topics.Requests {
		t.Fatalf("dead letter %+v, stub %+v", d, st)
	}
	t.Logf("stub: reason %q, refusal %q, %d bytes", d.Reason, st.Refusal, len(dl[0].Value))
}

func dlqTestHeader(m kafka.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
