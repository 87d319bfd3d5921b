package delivery

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
)

// DefaultTopic is the default name of the delivery topic.
const DefaultTopic = "certfleet.certificates.deliveries"

// The record's CloudEvents attributes (binary content mode, as every
// certfleet record). Package events does not decode this type: deliveries
// have their own topic and this package reads and writes them.
const (
	// Type is the ce_type of a delivery.
	Type = "dev.certfleet.key.delivered"
	// SchemaURI is the ce_dataschema of format version 1; the file is
	// schema/events/v1/key.delivered.json.
	SchemaURI = "https://certfleet.dev/schema/events/v1/key.delivered.json"
	// HeaderRecipientKeyID repeats the record's recipient_key_id, so a
	// reader skips records sealed to others without parsing them.
	HeaderRecipientKeyID = "certfleet_recipient_key_id"
	// Source is the ce_source the issuer-worker writes.
	Source = "//certfleet/issuer-worker"
)

// Why a delivery was made.
const (
	ReasonIssued         = "issued"          // the certificate was just obtained
	ReasonRecipientAdded = "recipient_added" // a current certificate, for a recipient added or rotated since
)

// Limits of a record, checked by Encode and Decode alike.
const (
	MaxValueSize   = 64 << 10
	maxChainLen    = 48 << 10
	maxCiphertext  = 16 << 10
	encLen         = 65 // DHKEM(P-256) encapsulated key: an uncompressed point
	maxSANs        = events.MaxSANs
	maxNameLen     = 253
	recipientNames = `^[a-z0-9][a-z0-9._-]{0,63}$`
)

var (
	recipientPattern = regexp.MustCompile(recipientNames)
	hex64Pattern     = regexp.MustCompile(`^[0-9a-f]{64}$`)
	idPattern        = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}$`)
	serialPattern    = regexp.MustCompile(`^(0|[1-9a-f][0-9a-f]{0,63})$`)
	sanPattern       = regexp.MustCompile(`^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$`)
)

// Certificate is a certificate with its private key, to be sealed to its
// recipients. Its String and LogValue leave the key out.
type Certificate struct {
	Identity  string // events.Identity(SANs)
	RequestID string
	Tenant    string // empty when unknown (a certificate stored before tenants were)
	SANs      []string
	Serial    string // lower-case hex, no leading zeros
	NotBefore time.Time
	NotAfter  time.Time
	ChainPEM  string // leaf first
	Key       crypto.Signer
}

func (c Certificate) String() string {
	return fmt.Sprintf("delivery.Certificate{identity: %s, serial: %s, tenant: %s}", c.Identity, c.Serial, c.Tenant)
}

// LogValue leaves the key out of structured logs.
func (c Certificate) LogValue() slog.Value {
	return slog.GroupValue(slog.String("identity", c.Identity), slog.String("serial", c.Serial), slog.String("tenant", c.Tenant))
}

// Record is one delivery (format version 1): a certificate's public chain
// and its private key sealed with HPKE to one recipient. Nothing in it is
// secret but to its recipient; schema/events/README.md describes every field.
type Record struct {
	DeliveryID     string    `json:"delivery_id"`
	Recipient      string    `json:"recipient"`
	RecipientKeyID string    `json:"recipient_key_id"`
	Reason         string    `json:"reason"`
	Identity       string    `json:"identity"`
	RequestID      string    `json:"request_id"`
	Tenant         string    `json:"tenant"`
	SANs           []string  `json:"sans"`
	Serial         string    `json:"serial"`
	NotBefore      time.Time `json:"not_before"`
	NotAfter       time.Time `json:"not_after"`
	ChainPEM       string    `json:"chain_pem"`
	KEMID          int       `json:"kem_id"`
	KDFID          int       `json:"kdf_id"`
	AEADID         int       `json:"aead_id"`
	// Enc is HPKE's encapsulated key, Ciphertext the sealed PKCS#8 DER of the
	// certificate's private key (base64 in JSON).
	Enc        []byte `json:"enc"`
	Ciphertext []byte `json:"ciphertext"`
}

// idNamespace is the UUIDv5 namespace of delivery ids.
var idNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("https://certfleet.dev/deliveries"))

// DeliveryID is the stable id of the delivery of one certificate to one
// recipient key: UUIDv5 of identity "\n" serial "\n" recipient key id. A
// delivery made again (a redelivered request, a second backfill) has the
// same id.
func DeliveryID(identity, serial, keyID string) string {
	return uuid.NewSHA1(idNamespace, []byte(identity+"\n"+serial+"\n"+keyID)).String()
}

// Seal seals c's key to the recipient named name whose public key is p.
func Seal(name string, p PublicKey, c Certificate, reason string) (Record, error) {
	if c.Key == nil {
		return Record{}, errors.New("delivery: the certificate has no key to deliver")
	}
	r := Record{
		DeliveryID: DeliveryID(c.Identity, c.Serial, p.KeyID()), Recipient: name, RecipientKeyID: p.KeyID(), Reason: reason,
		Identity: c.Identity, RequestID: c.RequestID, Tenant: c.Tenant, SANs: slices.Clone(c.SANs), Serial: c.Serial,
		NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(), ChainPEM: c.ChainPEM, KEMID: KEMID, KDFID: KDFID, AEADID: AEADID,
	}
	if err := r.validate(); err != nil { // before sealing: nothing invalid is ever written
		return Record{}, err
	}
	var err error
	if r.Enc, r.Ciphertext, err = sealKey(p, c.Key, AAD(r.Identity, r.Serial, r.ChainPEM)); err != nil {
		return Record{}, err
	}
	return r, nil
}

// Open opens r's key with k. It returns ErrNotOpened when r is sealed to
// another key or was altered. The key matches the chain's leaf: Decode and
// Open together are what a reader needs.
func Open(k *PrivateKey, r Record) (crypto.Signer, error) {
	if r.RecipientKeyID != k.Public().KeyID() {
		return nil, ErrNotOpened
	}
	key, err := openKey(k, r.Enc, r.Ciphertext, AAD(r.Identity, r.Serial, r.ChainPEM))
	if err != nil {
		return nil, err
	}
	leaf, err := leafOf(r.ChainPEM)
	if err != nil {
		return nil, err
	}
	if !publicKeysEqual(leaf.PublicKey, key.Public()) {
		return nil, errors.New("delivery: the opened key is not the leaf's")
	}
	return key, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

// RecordKey is a delivery's Kafka key: the certificate identity and the
// recipient key id, "identity/recipient_key_id". The delivery topic is
// compacted on it, so it keeps the latest delivery of each certificate
// identity to each recipient key: what an agent starting from scratch needs.
func RecordKey(identity, keyID string) string { return identity + "/" + keyID }

// Retention of the delivery topic: compacted (the latest delivery per
// RecordKey stays) and deleted after this long, longer than a public CA's
// longest certificate lifetime (Let's Encrypt: 90 days), so a current
// certificate's delivery is always there for a new agent.
const Retention = 100 * 24 * time.Hour

// TopicSpec is how the delivery topic is created: o's partitions,
// replication and min.insync.replicas, cleanup.policy compact,delete with
// retention.ms Retention.
func TopicSpec(name string, o events.ProvisionOptions) events.TopicSpec {
	s := events.TopicSpec{Name: name, Partitions: o.Partitions, ReplicationFactor: o.ReplicationFactor, Configs: map[string]string{
		"cleanup.policy": "compact,delete",
		"retention.ms":   strconv.FormatInt(Retention.Milliseconds(), 10),
	}}
	if o.MinInsyncReplicas > 0 {
		s.Configs["min.insync.replicas"] = strconv.Itoa(o.MinInsyncReplicas)
	}
	return s
}

// Encode renders r as a Kafka record: CloudEvents headers, the JSON value,
// RecordKey as the key. Topic is left to the caller.
func Encode(r Record, source string, at time.Time) (kafka.Message, error) {
	if err := r.validate(); err != nil {
		return kafka.Message{}, err
	}
	if len(r.Enc) != encLen || len(r.Ciphertext) == 0 || len(r.Ciphertext) > maxCiphertext {
		return kafka.Message{}, errors.New("delivery: record has no sealed key")
	}
	v, err := json.Marshal(r)
	if err != nil {
		return kafka.Message{}, fmt.Errorf("delivery: encoding: %w", err)
	}
	if len(v) > MaxValueSize {
		return kafka.Message{}, fmt.Errorf("delivery: record of %d bytes, at most %d", len(v), MaxValueSize)
	}
	if bytes.Contains(v, []byte("PRIVATE KEY")) {
		return kafka.Message{}, errors.New("delivery: refusing a record that contains PRIVATE KEY")
	}
	return kafka.Message{Key: []byte(RecordKey(r.Identity, r.RecipientKeyID)), Value: v, Headers: []kafka.Header{
		{Key: "ce_specversion", Value: []byte(events.SpecVersion)},
		{Key: "ce_id", Value: []byte(r.DeliveryID)},
		{Key: "ce_source", Value: []byte(source)},
		{Key: "ce_type", Value: []byte(Type)},
		{Key: "ce_time", Value: []byte(at.UTC().Format(time.RFC3339Nano))},
		{Key: "ce_dataschema", Value: []byte(SchemaURI)},
		{Key: "content-type", Value: []byte(events.ContentType)},
		{Key: HeaderRecipientKeyID, Value: []byte(r.RecipientKeyID)},
	}}, nil
}

// Errors of Decode, for errors.Is.
var (
	ErrNotDelivery    = errors.New("delivery: not a key delivery record")
	ErrUnknownVersion = errors.New("delivery: unknown format version")
	ErrInvalid        = errors.New("delivery: invalid record")
)

// Header returns the value of header key, or "".
func Header(m kafka.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// Decode reads a delivery record strictly: the CloudEvents headers of
// format version 1, a value with exactly the documented fields, a key that is
// the identity of the SANs, a chain whose leaf has the record's serial,
// validity and names, and the suite this package seals with.
func Decode(m kafka.Message) (Record, error) {
	var r Record
	if Header(m, "ce_type") != Type {
		return r, fmt.Errorf("%w: ce_type %q", ErrNotDelivery, events.Sanitize(Header(m, "ce_type"), 100))
	}
	if s := Header(m, "ce_specversion"); s != events.SpecVersion {
		return r, fmt.Errorf("%w: ce_specversion %q", ErrUnknownVersion, events.Sanitize(s, 100))
	}
	if s := Header(m, "ce_dataschema"); s != SchemaURI {
		return r, fmt.Errorf("%w: ce_dataschema %q (this reader knows %s)", ErrUnknownVersion, events.Sanitize(s, 200), SchemaURI)
	}
	if len(m.Value) > MaxValueSize {
		return r, fmt.Errorf("%w: value of %d bytes, at most %d", ErrInvalid, len(m.Value), MaxValueSize)
	}
	dec := json.NewDecoder(bytes.NewReader(m.Value))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return Record{}, fmt.Errorf("%w: %s", ErrInvalid, events.Sanitize(err.Error(), 300))
	}
	if _, err := dec.Token(); err != io.EOF {
		return Record{}, fmt.Errorf("%w: data after the JSON object", ErrInvalid)
	}
	if err := r.validate(); err != nil {
		return Record{}, err
	}
	if r.KEMID != KEMID || r.KDFID != KDFID || r.AEADID != AEADID {
		return Record{}, fmt.Errorf("%w: HPKE suite kem %#04x, kdf %#04x, aead %#04x; this reader knows kem %#04x, kdf %#04x, aead %#04x",
			ErrUnknownVersion, r.KEMID, r.KDFID, r.AEADID, KEMID, KDFID, AEADID)
	}
	if len(r.Enc) != encLen || len(r.Ciphertext) == 0 || len(r.Ciphertext) > maxCiphertext {
		return Record{}, fmt.Errorf("%w: enc of %d bytes (want %d), ciphertext of %d (1 to %d)", ErrInvalid, len(r.Enc), encLen, len(r.Ciphertext), maxCiphertext)
	}
	if string(m.Key) != RecordKey(r.Identity, r.RecipientKeyID) {
		return Record{}, fmt.Errorf("%w: the record key is not identity/recipient_key_id", ErrInvalid)
	}
	if h := Header(m, HeaderRecipientKeyID); h != "" && h != r.RecipientKeyID {
		return Record{}, fmt.Errorf("%w: header %s differs from recipient_key_id", ErrInvalid, HeaderRecipientKeyID)
	}
	return r, nil
}

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalid, field, fmt.Sprintf(format, args...))
}

// validate checks every field but the sealed key.
func (r Record) validate() error {
	if _, err := uuid.Parse(r.DeliveryID); err != nil {
		return invalid("delivery_id", "not a UUID")
	}
	if !recipientPattern.MatchString(r.Recipient) {
		return invalid("recipient", "%q does not match %s", events.Sanitize(r.Recipient, 80), recipientNames)
	}
	if !hex64Pattern.MatchString(r.RecipientKeyID) {
		return invalid("recipient_key_id", "want 64 lower-case hex digits")
	}
	if r.Reason != ReasonIssued && r.Reason != ReasonRecipientAdded {
		return invalid("reason", "%q: want %s or %s", events.Sanitize(r.Reason, 40), ReasonIssued, ReasonRecipientAdded)
	}
	if !idPattern.MatchString(r.RequestID) {
		return invalid("request_id", "%q does not match %s", events.Sanitize(r.RequestID, 140), idPattern)
	}
	if r.Tenant != "" && !idPattern.MatchString(r.Tenant) {
		return invalid("tenant", "%q does not match %s", events.Sanitize(r.Tenant, 140), idPattern)
	}
	if len(r.SANs) == 0 || len(r.SANs) > maxSANs {
		return invalid("sans", "%d names: want 1 to %d", len(r.SANs), maxSANs)
	}
	seen := map[string]bool{}
	for _, s := range r.SANs {
		if len(s) > maxNameLen || !sanPattern.MatchString(s) {
			return invalid("sans", "%q is not a canonical DNS name", events.Sanitize(s, 80))
		}
		if seen[s] {
			return invalid("sans", "%q twice", s)
		}
		seen[s] = true
	}
	if !hex64Pattern.MatchString(r.Identity) || r.Identity != events.Identity(r.SANs) {
		return invalid("identity", "not the identity of sans")
	}
	if !serialPattern.MatchString(r.Serial) {
		return invalid("serial", "want lower-case hex without leading zeros")
	}
	if r.NotBefore.IsZero() || !r.NotAfter.After(r.NotBefore) {
		return invalid("not_after", "must be after not_before")
	}
	if len(r.ChainPEM) > maxChainLen {
		return invalid("chain_pem", "%d bytes, at most %d", len(r.ChainPEM), maxChainLen)
	}
	leaf, err := leafOf(r.ChainPEM)
	if err != nil {
		return invalid("chain_pem", "%v", err)
	}
	if leaf.SerialNumber.Text(16) != r.Serial {
		return invalid("serial", "not the leaf's")
	}
	if !leaf.NotAfter.Equal(r.NotAfter) || !leaf.NotBefore.Equal(r.NotBefore) {
		return invalid("not_after", "not_before and not_after are not the leaf's")
	}
	names := slices.Clone(leaf.DNSNames)
	want := slices.Clone(r.SANs)
	for i := range names {
		names[i] = strings.ToLower(names[i])
	}
	slices.Sort(names)
	slices.Sort(want)
	if !slices.Equal(slices.Compact(names), want) {
		return invalid("sans", "not the leaf's DNS names")
	}
	return nil
}

// leafOf parses the first certificate of a chain that holds only CERTIFICATE
// blocks.
func leafOf(chain string) (*x509.Certificate, error) {
	rest := []byte(chain)
	var leaf *x509.Certificate
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("a %q block; only CERTIFICATE blocks belong in a chain", events.Sanitize(b.Type, 40))
		}
		if leaf == nil {
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("the leaf does not parse: %v", err)
			}
			leaf = c
		}
	}
	if leaf == nil {
		return nil, errors.New("no certificate")
	}
	if len(strings.TrimFunc(string(rest), unicode.IsSpace)) > 0 {
		return nil, errors.New("text after the last certificate")
	}
	return leaf, nil
}
