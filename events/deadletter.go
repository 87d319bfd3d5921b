package events

import (
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
)

// Headers the subscriber adds to a dead-lettered record. The record keeps
// its key, value and original headers, so it can be inspected with any Kafka
// tool and replayed to its source topic unchanged.
const (
	HeaderDLQReason    = "certfleet_dlq_reason"    // why: the decode error or the handler's last error
	HeaderDLQTopic     = "certfleet_dlq_topic"     // source topic
	HeaderDLQPartition = "certfleet_dlq_partition" // source partition, decimal
	HeaderDLQOffset    = "certfleet_dlq_offset"    // source offset, decimal
	HeaderDLQAttempts  = "certfleet_dlq_attempts"  // handler attempts, decimal; 0 when it never decoded
	HeaderDLQGroup     = "certfleet_dlq_group"     // consumer group that gave up
	HeaderDLQTime      = "certfleet_dlq_time"      // RFC 3339
	// HeaderDLQStub marks a stub: the record itself was not kept, its value
	// is a Stub (JSON) and the header's value is the cause, StubRefused or
	// StubPrivateKey (deadletter_stub.go).
	HeaderDLQStub = "certfleet_dlq_stub"
)

const maxReasonLen = 1024

// DeadLetter is the metadata of a dead-lettered record.
type DeadLetter struct {
	Reason    string
	Topic     string
	Partition int
	Offset    int64
	Attempts  int
	Group     string
	Time      time.Time
	// Stub is the cause when the record is a stub (HeaderDLQStub), else "".
	Stub string
}

// ReadDeadLetter extracts the dead-letter metadata from a record read from a
// DLQ topic. ok is false when the record carries no reason header.
func ReadDeadLetter(m kafka.Message) (d DeadLetter, ok bool) {
	for _, h := range m.Headers {
		v := string(h.Value)
		switch h.Key {
		case HeaderDLQReason:
			d.Reason, ok = v, true
		case HeaderDLQTopic:
			d.Topic = v
		case HeaderDLQPartition:
			d.Partition, _ = strconv.Atoi(v)
		case HeaderDLQOffset:
			d.Offset, _ = strconv.ParseInt(v, 10, 64)
		case HeaderDLQAttempts:
			d.Attempts, _ = strconv.Atoi(v)
		case HeaderDLQGroup:
			d.Group = v
		case HeaderDLQTime:
			d.Time, _ = time.Parse(time.RFC3339Nano, v)
		case HeaderDLQStub:
			d.Stub = v
		}
	}
	return d, ok
}

// deadLetterRecord copies m for topic, replacing any earlier dead-letter
// headers with d's. A record holding private key material is never copied:
// it becomes a stub (StubPrivateKey) with its headers and hashes only.
func deadLetterRecord(topic string, m kafka.Message, d DeadLetter) kafka.Message {
	if holdsPrivateKey(m) {
		return stubRecord(topic, m, d, "", true)
	}
	hs := make([]kafka.Header, 0, len(m.Headers)+7)
	for _, h := range m.Headers {
		if !strings.HasPrefix(h.Key, "certfleet_dlq_") {
			hs = append(hs, h)
		}
	}
	return kafka.Message{Topic: topic, Key: m.Key, Value: m.Value, Headers: append(hs, dlqHeaders(d)...)}
}

// dlqHeaders are the certfleet_dlq_* headers describing d.
func dlqHeaders(d DeadLetter) []kafka.Header {
	return []kafka.Header{
		{Key: HeaderDLQReason, Value: []byte(sanitizeReason(d.Reason))},
		{Key: HeaderDLQTopic, Value: []byte(d.Topic)},
		{Key: HeaderDLQPartition, Value: []byte(strconv.Itoa(d.Partition))},
		{Key: HeaderDLQOffset, Value: []byte(strconv.FormatInt(d.Offset, 10))},
		{Key: HeaderDLQAttempts, Value: []byte(strconv.Itoa(d.Attempts))},
		{Key: HeaderDLQGroup, Value: []byte(d.Group)},
		{Key: HeaderDLQTime, Value: []byte(d.Time.UTC().Format(time.RFC3339Nano))},
	}
}

// sanitizeReason makes an error text safe for a header and for whoever
// prints it (Sanitize, at most maxReasonLen bytes); an empty reason reads
// "unknown".
func sanitizeReason(s string) string {
	if s = Sanitize(s, maxReasonLen); s == "" {
		return "unknown"
	}
	return s
}
