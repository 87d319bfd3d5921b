// Package events is certfleet's Kafka contract: the typed messages that flow
// through the pipeline (issuance requests and certificate events), their wire
// encoding, a producer, topic provisioning, and a subscriber library.
//
// It owns the wire format and everything that checks it. It does not decide
// what a message means for the pipeline (that is the worker's and the
// scheduler's job) and it never sees private keys: no message type has a
// field for one, and Encode and Decode reject any value containing PEM
// "PRIVATE KEY" text.
//
// # Topics
//
// Five topics, names configurable through Topics (defaults in
// docs/contracts.md, "Kafka topics and records"), created by Provision with
// explicit partition counts, never by auto-creation:
//
//	certfleet.issuance.requests    IssuanceRequest (dev.certfleet.issuance.requested)
//	certfleet.issuance.retry       IssuanceRequest re-queued after a deferral, later not_before, attempt+1
//	certfleet.issuance.dlq         records a subscriber gave up on, unchanged plus certfleet_dlq_* headers
//	certfleet.certificates.events  CertObtained, CertFailed, IssuanceDeferred, RenewalScheduled, CertRevoked
//	certfleet.ratelimit.changes    owned by package ratelimit, not encoded here
//
// # Records
//
// Every record follows the CloudEvents 1.0 Kafka protocol binding in binary
// content mode:
//
//	key             Identity(sans): lower-case hex SHA-256 of the SAN set, sorted and "\n"-joined
//	ce_specversion  "1.0"
//	ce_id           stable event id, EventID(request id, type, outcome): a UUIDv5
//	ce_source       URI-reference naming the producing component, e.g. "//certfleet/issuer-worker"
//	ce_type         one of the Type constants, e.g. "dev.certfleet.cert.obtained"
//	ce_time         RFC 3339 time of the fact
//	ce_dataschema   https://certfleet.dev/schema/events/v1/<type minus "dev.certfleet.">.json
//	content-type    "application/json"
//	value           JSON object, at most 64 KiB, valid against the schema named by ce_dataschema
//
// The key keeps every request and event about one certificate on one
// partition. The producer partitions with murmur2 (the Java client's default
// and librdkafka's "murmur2"), so producers in other languages agree with it.
// The schemas live in schema/events/v1/, with a field-by-field reference in
// schema/events/README.md.
//
// # Event ids and idempotency
//
// An event id depends only on the request id, the type and the outcome (the
// attempt number for failures, deferrals and request re-publications; the
// renewal time for schedules; nothing for cert.obtained and cert.revoked,
// one per certificate), never on the wall clock or the producing
// instance. A worker that crashes after publishing and re-publishes after
// redelivery emits the same id, and subscribers drop it as a duplicate.
//
// # Versioning
//
// The schema version is the "v1" in ce_dataschema. Decoders are strict: they
// reject unknown fields, unknown types, unknown schema versions and unknown
// spec versions. So any change to a message's fields is a new schema version,
// published as a new file beside the old one; consumers are upgraded to read
// both versions before producers start writing the new one. Golden files in
// testdata/golden pin the v1 wire bytes.
//
// # Decoding
//
// Decode checks, in order: value size, headers (present, unique, UTF-8, no
// control characters, known spec version, type and schema version, content
// type), the JSON shape (one object, known field names matched exactly,
// no duplicate or null fields, required fields present, bounded nesting),
// field values (patterns, enums, ranges, canonical SANs via package names,
// the certificate chain against serial, validity and SANs), and finally that
// the key is the identity of the SANs. Every failure is a *FieldError naming
// the header or field and wrapping a sentinel such as ErrUnknownField.
//
// # Publishing and subscribing
//
// Producer writes synchronously with RequiredAcks=RequireAll and a 5 ms
// batch timeout; a nil error means the records are on every in-sync replica.
// Subscriber consumes as a consumer group member with FetchMessage and
// CommitMessages, one goroutine fetching and decoding ahead of the one that
// calls a typed Handler in partition order, retries failures with backoff,
// dead-letters after MaxAttempts (or at once for records that do not decode),
// dedupes by event id within a window, and marks a record for commit only
// once it is handled, skipped as a duplicate, or safely in the dead-letter
// topic. Marked offsets are committed every CommitInterval (100 ms) and at
// Shutdown; committing each record synchronously is an option, at about a
// sixth of the throughput.
package events
