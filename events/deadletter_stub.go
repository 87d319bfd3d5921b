package events

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/segmentio/kafka-go"
)

// A dead letter is the record itself whenever the dead-letter topic takes
// it. Two kinds of record are dead-lettered as a stub instead: a record the
// topic refuses for good (too large once uncompressed, RecordRefused), so its
// partition's commits never stop behind a write that can never succeed; and
// a record holding private key material, which must not be copied anywhere.
// A stub keeps the record's key and headers (bounded), carries the
// certfleet_dlq_* headers of every dead letter plus HeaderDLQStub, and its
// value is a Stub: the original size, its SHA-256 and, for a refused record,
// the first StubPrefixBytes bytes. schema/events/README.md documents the
// format.

// Causes of a stub, the values of HeaderDLQStub.
const (
	// StubRefused: the dead-letter topic refused the record (RecordRefused).
	StubRefused = "refused"
	// StubPrivateKey: the record holds "PRIVATE KEY" (in its value, key or a
	// header); only hashes and the headers without key material are kept.
	StubPrivateKey = "private_key"
)

// Bounds of a stub, so it always fits where the record did not.
const (
	StubPrefixBytes    = 1024 // bytes of the original value a refused record's stub keeps
	stubMaxHeaders     = 64   // original headers kept, in order
	stubMaxHeaderKey   = 256  // a header with a longer name is dropped
	stubMaxHeaderValue = 1024 // longer header values are cut to this many bytes
	stubMaxKey         = 256  // a longer record key is dropped (key_sha256 keeps its hash)
)

// Stub is the JSON value of a stub dead letter.
type Stub struct {
	// Cause is StubRefused or StubPrivateKey (also in HeaderDLQStub).
	Cause string `json:"stub"`
	// Size is the original value's length in bytes, SHA256 its lower-case
	// hex SHA-256.
	Size   int    `json:"size"`
	SHA256 string `json:"sha256"`
	// Prefix is the original value's first StubPrefixBytes bytes (base64 in
	// JSON); absent for StubPrivateKey.
	Prefix []byte `json:"prefix,omitempty"`
	// KeySize and KeySHA256 describe the original record key (the stub keeps
	// the key itself only when it is at most 256 bytes without key material).
	KeySize   int    `json:"key_size"`
	KeySHA256 string `json:"key_sha256"`
	// Headers is the number of original headers; HeadersKept how many of
	// them the stub carries.
	Headers     int `json:"headers"`
	HeadersKept int `json:"headers_kept"`
	// Refusal is the dead-letter topic's error for a refused record.
	Refusal string `json:"refusal,omitempty"`
}

// ReadStub returns the Stub of a dead letter that is one (HeaderDLQStub).
func ReadStub(m kafka.Message) (Stub, bool) {
	d, _ := ReadDeadLetter(m)
	if d.Stub == "" {
		return Stub{}, false
	}
	var s Stub
	if err := json.Unmarshal(m.Value, &s); err != nil {
		return Stub{Cause: d.Stub}, true
	}
	return s, true
}

// RecordRefused reports whether err, from writing one record, is the
// broker's or the client's permanent refusal of that record, so writing it
// again can never succeed: too large (kafka.MessageSizeTooLarge, also
// kafka-go's own MessageTooLargeError above the writer's BatchBytes, and
// RecordListTooLarge) or invalid (InvalidRecord). Errors of the connection,
// the topic or the principal are not: they pass, and every record waits.
func RecordRefused(err error) bool {
	for _, code := range []kafka.Error{kafka.MessageSizeTooLarge, kafka.RecordListTooLarge, kafka.InvalidRecord} {
		if errors.Is(err, code) {
			return true
		}
	}
	var werrs kafka.WriteErrors
	if errors.As(err, &werrs) {
		for _, e := range werrs {
			if e != nil && RecordRefused(e) {
				return true
			}
		}
	}
	return false
}

// WriteDeadLetter writes the dead letter of m (DeadLetterRecord) to topic
// through w. When the topic refuses it for good (RecordRefused) it writes
// m's stub instead, and when the stub too is refused, a stub without m's key
// and headers. It returns the record it wrote (ReadDeadLetter's Stub names a
// stub's cause) and any other write error (an unreachable broker, a missing
// topic or ACL), which the caller retries: those hold every record alike.
func WriteDeadLetter(ctx context.Context, w MessageWriter, topic string, m kafka.Message, d DeadLetter) (kafka.Message, error) {
	rec := deadLetterRecord(topic, m, d)
	err := w.WriteMessages(ctx, rec)
	if err == nil || !RecordRefused(err) {
		return rec, err
	}
	refusal := Sanitize(err.Error(), 300)
	rec = stubRecord(topic, m, d, refusal, true)
	if err = w.WriteMessages(ctx, rec); err == nil || !RecordRefused(err) {
		return rec, err
	}
	rec = stubRecord(topic, m, d, refusal, false)
	if err = w.WriteMessages(ctx, rec); err != nil {
		return rec, fmt.Errorf("writing the stub of a refused record: %w", err)
	}
	return rec, nil
}

var privateKeyMarker = []byte("PRIVATE KEY")

// holdsPrivateKey reports whether "PRIVATE KEY" appears anywhere in m.
func holdsPrivateKey(m kafka.Message) bool {
	if bytes.Contains(m.Value, privateKeyMarker) || bytes.Contains(m.Key, privateKeyMarker) {
		return true
	}
	for _, h := range m.Headers {
		if strings.Contains(h.Key, "PRIVATE KEY") || bytes.Contains(h.Value, privateKeyMarker) {
			return true
		}
	}
	return false
}

// stubRecord is m's stub for topic: StubPrivateKey when m holds key
// material, else StubRefused with refusal. keep carries m's key and headers
// (bounded); without it the stub is the dead-letter headers and the value
// only.
func stubRecord(topic string, m kafka.Message, d DeadLetter, refusal string, keep bool) kafka.Message {
	s := Stub{Cause: StubRefused, Size: len(m.Value), SHA256: hexSHA256(m.Value), KeySize: len(m.Key),
		KeySHA256: hexSHA256(m.Key), Headers: len(m.Headers), Refusal: refusal}
	if holdsPrivateKey(m) {
		s.Cause, s.Refusal = StubPrivateKey, ""
		d.Reason = withholdQuotedKey(d.Reason)
	} else {
		s.Prefix = m.Value[:min(len(m.Value), StubPrefixBytes)]
	}
	var key []byte
	var hs []kafka.Header
	if keep {
		if len(m.Key) <= stubMaxKey && !bytes.Contains(m.Key, privateKeyMarker) {
			key = m.Key
		}
		for _, h := range m.Headers {
			if len(hs) == stubMaxHeaders {
				break
			}
			if strings.HasPrefix(h.Key, "certfleet_dlq_") || len(h.Key) > stubMaxHeaderKey || strings.Contains(h.Key, "PRIVATE KEY") {
				continue
			}
			v := h.Value
			if bytes.Contains(v, privateKeyMarker) {
				v = []byte("sha256:" + hexSHA256(v))
			}
			hs = append(hs, kafka.Header{Key: h.Key, Value: v[:min(len(v), stubMaxHeaderValue)]})
		}
	}
	s.HeadersKept = len(hs)
	value, err := json.Marshal(s)
	if err != nil {
		panic(err) // a struct of strings, ints and bytes always marshals
	}
	hs = append(hs, dlqHeaders(d)...)
	hs = append(hs, kafka.Header{Key: HeaderDLQStub, Value: []byte(s.Cause)})
	return kafka.Message{Topic: topic, Key: key, Value: value, Headers: hs}
}

// withholdQuotedKey cuts a reason that quotes key material (a decode error
// quotes up to 64 bytes of a bad header) before the quote.
func withholdQuotedKey(reason string) string {
	i := strings.Index(reason, "PRIVATE KEY")
	if i < 0 {
		return reason
	}
	if q := strings.LastIndexByte(reason[:i], '"'); q >= 0 {
		i = q
	}
	return strings.TrimSpace(reason[:i]) + " [quoted text withheld: it holds private key material]"
}

func hexSHA256(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
