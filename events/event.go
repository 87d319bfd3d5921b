package events

import (
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Event is one message: the CloudEvents context attributes plus a typed
// payload. Handlers switch on Data's concrete type.
type Event struct {
	// ID is the ce_id: stable for one outcome of one request, so a
	// redelivered job re-publishes the same id and subscribers can dedupe.
	ID string
	// Source is the ce_source, a URI-reference naming the producer, e.g.
	// "//certfleet/issuer-worker".
	Source string
	// Time is the ce_time: when the fact happened (for a re-published
	// outcome, the time stored with it, not the time of re-publishing).
	Time time.Time
	// Data is the payload; never nil in an Event returned by New or Decode.
	Data Payload
	// Record says where a decoded event was read from; zero otherwise.
	Record Record
}

// Record locates a Kafka record.
type Record struct {
	Topic     string
	Partition int
	Offset    int64
}

// Type is the event's ce_type.
func (e Event) Type() Type { return e.Data.EventType() }

// Key is the record key: the certificate identity of the payload's SANs.
func (e Event) Key() string { return Identity(e.Data.Names()) }

// New builds a validated event with the stable id of its payload. source is
// the ce_source; at is the time of the fact and is stored in UTC.
func New(source string, at time.Time, data Payload) (Event, error) {
	if data == nil {
		return Event{}, fieldErrf("value", ErrMissingField, "nil payload")
	}
	e := Event{
		ID:     EventID(requestID(data), data.EventType(), data.idName()),
		Source: source,
		Time:   at.UTC(),
		Data:   data,
	}
	if err := e.Validate(); err != nil {
		return Event{}, err
	}
	return e, nil
}

// Validate checks the context attributes and the payload.
func (e Event) Validate() error {
	if e.Data == nil {
		return fieldErrf("value", ErrMissingField, "nil payload")
	}
	if err := checkHeaderText(hID, e.ID); err != nil {
		return err
	}
	if err := checkSource(e.Source); err != nil {
		return err
	}
	if e.Time.IsZero() {
		return fieldErr(hTime, ErrMissingHeader)
	}
	return e.Data.Validate()
}

// Identity is a certificate's identity and the Kafka record key of every
// message about it: the lower-case hex SHA-256 of the SAN set, ASCII
// lower-cased, de-duplicated, sorted by byte value and joined with "\n".
// SANs on the wire are canonical already (package names), so the lower-casing
// only matters for callers that pass raw input.
//
// Test vector: Identity(["www.example.com", "example.com"]) is
// sha256("example.com\nwww.example.com").
func Identity(sans []string) string {
	var id [64]byte
	identityHex(&id, sans)
	return string(id[:])
}

// asciiLower lower-cases ASCII letters; s itself when it has none.
func asciiLower(s string) string {
	i := strings.IndexFunc(s, func(r rune) bool { return r >= 'A' && r <= 'Z' })
	if i < 0 {
		return s
	}
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// idNamespace is the UUIDv5 namespace of certfleet event ids.
var idNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("https://certfleet.dev/events"))

// EventID derives a stable event id: the UUIDv5 (RFC 9562) in the namespace
// UUIDv5(URL, "https://certfleet.dev/events") of
// requestID + "\n" + type + "\n" + outcome. The outcome part is "" for
// cert.obtained and cert.revoked, "attempt=N" for issuance.requested, cert.failed and
// issuance.deferred, and "renew_at=<RFC 3339 UTC>" for renewal.scheduled.
// Request ids cannot contain "\n", so distinct inputs never collide by
// concatenation.
func EventID(requestID string, t Type, outcome string) string {
	return uuid.NewSHA1(idNamespace, []byte(fmt.Sprintf("%s\n%s\n%s", requestID, t, outcome))).String()
}
