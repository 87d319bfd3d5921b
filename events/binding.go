package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/segmentio/kafka-go"
)

// Header names of the CloudEvents Kafka protocol binding, binary content mode.
const (
	hSpecVersion = "ce_specversion"
	hID          = "ce_id"
	hSource      = "ce_source"
	hType        = "ce_type"
	hTime        = "ce_time"
	hDataSchema  = "ce_dataschema"
	hContentType = "content-type"
)

// SpecVersion is the only CloudEvents version this package reads or writes.
const SpecVersion = "1.0"

// ContentType of every value.
const ContentType = "application/json"

// Encode renders e as a Kafka record in CloudEvents binary mode: the
// attributes as ce_* headers, the payload as the JSON value, the certificate
// identity as the key. Topic is left empty for the caller. It validates e
// first, so nothing invalid is ever written.
func Encode(e Event) (kafka.Message, error) {
	if err := e.Validate(); err != nil {
		return kafka.Message{}, err
	}
	value, err := marshal(e.Data)
	if err != nil {
		return kafka.Message{}, err
	}
	t := e.Type()
	schema := t.SchemaURI()
	// The key and every header value share one buffer, each its own
	// capacity-capped slice of it.
	// One allocation holds the headers and, when they fit, their values.
	rec := new(encodedRecord)
	buf := rec.values[:0]
	if n := 64 + len(SpecVersion) + len(e.ID) + len(e.Source) + len(t) + len(time.RFC3339Nano) + len(schema) + len(ContentType); n > cap(buf) {
		buf = make([]byte, 0, n)
	}
	part := func(start int) []byte { return buf[start:len(buf):len(buf)] }
	var id [64]byte
	identityHex(&id, e.Data.Names())
	buf = append(buf, id[:]...)
	key := part(0)
	n := len(buf)
	buf = append(buf, SpecVersion...)
	spec := part(n)
	n = len(buf)
	buf = append(buf, e.ID...)
	ceID := part(n)
	n = len(buf)
	buf = append(buf, e.Source...)
	source := part(n)
	n = len(buf)
	buf = append(buf, t...)
	typ := part(n)
	n = len(buf)
	buf = e.Time.UTC().AppendFormat(buf, time.RFC3339Nano)
	ceTime := part(n)
	n = len(buf)
	buf = append(buf, schema...)
	dataSchema := part(n)
	n = len(buf)
	buf = append(buf, ContentType...)
	contentType := part(n)
	rec.headers = [...]kafka.Header{
		{Key: hSpecVersion, Value: spec},
		{Key: hID, Value: ceID},
		{Key: hSource, Value: source},
		{Key: hType, Value: typ},
		{Key: hTime, Value: ceTime},
		{Key: hDataSchema, Value: dataSchema},
		{Key: hContentType, Value: contentType},
	}
	return kafka.Message{Key: key, Value: value, Headers: rec.headers[:]}, nil
}

// encodedRecord is the memory of one encoded record's headers: 288 bytes
// hold the key and header values of every record certfleet writes.
type encodedRecord struct {
	headers [7]kafka.Header
	values  [288]byte
}

// marshal writes p's JSON value (appendPayload), or takes encoding/json's
// path for what appendPayload leaves to it, then applies the size and
// private key rules.
func marshal(p Payload) ([]byte, error) {
	value, ok := appendPayload(make([]byte, 0, payloadSize(p)), p)
	if !ok {
		var err error
		if value, err = marshalJSON(p); err != nil {
			return nil, err
		}
	}
	if len(value) > MaxValueSize {
		return nil, fieldErrf("value", ErrTooLarge, "%d bytes", len(value))
	}
	if bytes.Contains(value, []byte("PRIVATE KEY")) {
		return nil, fieldErr("value", ErrPrivateKey)
	}
	return value, nil
}

// marshalJSON is encoding/json's rendering of p, the reference appendPayload
// follows byte for byte.
func marshalJSON(p Payload) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(inUTC(p)); err != nil {
		return nil, fieldErr("value", fmt.Errorf("encoding %s: %w", p.EventType(), err))
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// inUTC returns a copy of p with every time in UTC, so the wire never
// depends on the producer's time zone.
func inUTC(p Payload) Payload {
	switch v := p.(type) {
	case *IssuanceRequest:
		c := *v
		c.NotBefore = c.NotBefore.UTC()
		return &c
	case *CertObtained:
		c := *v
		c.NotBefore, c.NotAfter = c.NotBefore.UTC(), c.NotAfter.UTC()
		return &c
	case *CertFailed:
		c := *v
		c.NextAttemptAt = c.NextAttemptAt.UTC()
		return &c
	case *IssuanceDeferred:
		c := *v
		c.RetryAt = c.RetryAt.UTC()
		return &c
	case *RenewalScheduled:
		c := *v
		c.RenewAt, c.WindowStart, c.WindowEnd = c.RenewAt.UTC(), c.WindowStart.UTC(), c.WindowEnd.UTC()
		return &c
	case *CertRevoked:
		c := *v
		c.RevokedAt = c.RevokedAt.UTC()
		return &c
	}
	return p
}

// Decode parses and validates one record. It is strict: every rule that
// Encode applies is checked again, plus the wire-level ones (sizes, headers,
// JSON shape and types). Every error is a *FieldError wrapping one sentinel,
// e.g. ErrUnknownSpecVersion, ErrUnknownSchemaVersion, ErrUnknownField,
// ErrTooLarge. Every ce_* header it reads and content-type are required;
// other headers (tracing, DLQ metadata) are ignored. An optional field that
// is null is absent; a required one that is null, or present but empty, is
// invalid (not missing); a value of the wrong JSON type is reported with the
// type wanted and the type found.
func Decode(m kafka.Message) (Event, error) {
	if len(m.Value) > MaxValueSize {
		return Event{}, fieldErrf("value", ErrTooLarge, "%d bytes", len(m.Value))
	}
	var h headerSet
	if err := h.read(m.Headers); err != nil {
		return Event{}, err
	}
	if v, ok := h.get(hSpecVersion); !ok {
		return Event{}, fieldErr(hSpecVersion, ErrMissingHeader)
	} else if v != SpecVersion {
		return Event{}, fieldErrf(hSpecVersion, ErrUnknownSpecVersion, "%s", quote(v))
	}
	t, err := headerType(&h)
	if err != nil {
		return Event{}, err
	}
	if err := checkDataSchema(&h, t); err != nil {
		return Event{}, err
	}
	if err := checkContentType(&h); err != nil {
		return Event{}, err
	}
	id, ok := h.get(hID)
	if !ok {
		return Event{}, fieldErr(hID, ErrMissingHeader)
	}
	source, ok := h.get(hSource)
	if !ok {
		return Event{}, fieldErr(hSource, ErrMissingHeader)
	}
	ts, ok := h.get(hTime)
	if !ok {
		return Event{}, fieldErr(hTime, ErrMissingHeader)
	}
	at, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return Event{}, fieldErrf(hTime, ErrInvalidHeader, "%s is not an RFC 3339 time", quote(ts))
	}
	// One copy holds the id, the source and the value, whose strings the
	// payload's fields slice (decodeDirect).
	buf := make([]byte, 0, len(id)+len(source)+len(m.Value))
	buf = append(append(append(buf, id...), source...), m.Value...)
	all := unsafe.String(unsafe.SliceData(buf), len(buf))
	e := Event{
		ID:     all[:len(id)],
		Source: all[len(id) : len(id)+len(source)],
		Time:   at,
		Record: Record{Topic: m.Topic, Partition: m.Partition, Offset: m.Offset},
	}
	data, present, err := unmarshal(t, m.Value, all[len(id)+len(source):])
	if err != nil {
		return Event{}, err
	}
	e.Data = data
	if err := e.Validate(); err != nil {
		return Event{}, emptyNotMissing(err, present, wireTypes[t])
	}
	var key [64]byte
	identityHex(&key, data.Names())
	if string(m.Key) != string(key[:]) {
		return Event{}, fieldErrf("key", ErrKeyMismatch, "got %s, want %s", quote(string(m.Key)), key[:])
	}
	return e, nil
}

// The headers Decode reads, in the order of headerSet's arrays.
var readHeaderNames = [...]string{hSpecVersion, hID, hSource, hType, hTime, hDataSchema, hContentType}

// headerSet holds the headers Decode reads. Its values alias the record's
// bytes: they are read during Decode and copied before they are kept
// (Event.ID, Event.Source; errors quote a copy).
type headerSet struct {
	v   [len(readHeaderNames)]string
	has [len(readHeaderNames)]bool
}

func headerIndex(key string) int {
	for i, n := range readHeaderNames {
		if key == n {
			return i
		}
	}
	return -1
}

func (h *headerSet) get(name string) (string, bool) {
	i := headerIndex(name)
	return h.v[i], h.has[i]
}

// read collects the headers Decode reads, rejecting duplicates, and
// checks every header it reads for size, UTF-8 and control characters.
func (out *headerSet) read(hs []kafka.Header) error {
	if len(hs) > MaxHeaders {
		return fieldErrf("headers", ErrTooManyHeaders, "%d, at most %d", len(hs), MaxHeaders)
	}
	for _, h := range hs {
		i := headerIndex(h.Key)
		if i < 0 {
			continue
		}
		if out.has[i] {
			return fieldErr(h.Key, ErrDuplicateHeader)
		}
		v := unsafe.String(unsafe.SliceData(h.Value), len(h.Value))
		if err := checkHeaderText(h.Key, v); err != nil {
			return err
		}
		out.v[i], out.has[i] = v, true
	}
	return nil
}

func checkHeaderText(name, v string) error {
	if v == "" {
		return fieldErrf(name, ErrInvalidHeader, "empty")
	}
	if len(v) > MaxHeaderSize {
		return fieldErrf(name, ErrInvalidHeader, "%d bytes, at most %d", len(v), MaxHeaderSize)
	}
	if !utf8.ValidString(v) {
		return fieldErr(name, ErrInvalidUTF8)
	}
	if err := checkText(v, MaxHeaderSize); err != nil {
		return fieldErr(name, err)
	}
	return nil
}

func checkSource(s string) error {
	if err := checkHeaderText(hSource, s); err != nil {
		return err
	}
	if isURIPlain(s) {
		return nil
	}
	if _, err := url.Parse(s); err != nil || strings.ContainsAny(s, " ") {
		return fieldErrf(hSource, ErrInvalidHeader, "%s is not a URI-reference", quote(s))
	}
	return nil
}

func headerType(h *headerSet) (Type, error) {
	v, ok := h.get(hType)
	if !ok {
		return "", fieldErr(hType, ErrMissingHeader)
	}
	for _, t := range Types() {
		if v == string(t) {
			return t, nil // the constant, not the record's bytes
		}
	}
	return "", fieldErrf(hType, ErrUnknownType, "%s", quote(v))
}

// checkDataSchema requires ce_dataschema to be the schema URI of t in a
// version this package knows. A URI of the same family with another version
// is ErrUnknownSchemaVersion; anything else is ErrInvalidHeader.
func checkDataSchema(h *headerSet, t Type) error {
	v, ok := h.get(hDataSchema)
	if !ok {
		return fieldErr(hDataSchema, ErrMissingHeader)
	}
	if v == t.SchemaURI() {
		return nil
	}
	if rest, ok := strings.CutPrefix(v, schemaBase); ok {
		if version, file, ok := strings.Cut(rest, "/"); ok && file == t.short()+".json" {
			return fieldErrf(hDataSchema, ErrUnknownSchemaVersion, "%s, this reader knows %s", quote(version), SchemaVersion)
		}
	}
	return fieldErrf(hDataSchema, ErrInvalidHeader, "%s is not the schema of %s", quote(v), t)
}

func checkContentType(h *headerSet) error {
	v, ok := h.get(hContentType)
	if !ok {
		return fieldErr(hContentType, ErrMissingHeader)
	}
	if v == ContentType {
		return nil
	}
	mt, params, err := mime.ParseMediaType(v)
	if err != nil || mt != ContentType {
		return fieldErrf(hContentType, ErrContentType, "%s", quote(v))
	}
	for k, pv := range params {
		if k != "charset" || !strings.EqualFold(pv, "utf-8") {
			return fieldErrf(hContentType, ErrContentType, "parameter %s", quote(k+"="+pv))
		}
	}
	return nil
}

// unmarshal decodes the JSON value strictly into the payload type of t. It
// also returns the fields the value holds (null ones included), as a bit set
// over t's wireType fields. valueString holds the same bytes as value, and
// the payload's strings may be slices of it.
func unmarshal(t Type, value []byte, valueString string) (Payload, uint64, error) {
	if bytes.Contains(value, []byte("PRIVATE KEY")) {
		return nil, 0, fieldErr("value", ErrPrivateKey)
	}
	if !utf8.Valid(value) {
		// encoding/json would silently turn bad bytes into U+FFFD.
		return nil, 0, fieldErr("value", ErrInvalidUTF8)
	}
	p := registry[t]()
	if present, ok := decodeDirect(p, value, valueString); ok {
		return p, present, nil
	}
	return unmarshalSlow(t, value)
}

// unmarshalSlow is the encoding/json path: a token pass for the shape
// (checkShape), then json.Decoder into the payload. It decides every value
// decodeDirect does not take, and words every refusal.
func unmarshalSlow(t Type, value []byte) (Payload, uint64, error) {
	p := registry[t]()
	seen, err := checkShape(value, fieldsOf(p))
	if err != nil {
		return nil, 0, err
	}
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.DisallowUnknownFields()
	if err := dec.Decode(p); err != nil {
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) && ute.Field != "" {
			return nil, 0, fieldErrf(ute.Field, ErrInvalidField, "want JSON %s, got %s", jsonKind(ute.Type), ute.Value)
		}
		var pe *time.ParseError
		if errors.As(err, &pe) {
			return nil, 0, fieldErrf("value", ErrInvalidField, "time %s is not RFC 3339", quote(pe.Value))
		}
		return nil, 0, fieldErrf("value", ErrMalformedJSON, "%v", err)
	}
	var present uint64
	wt := wireTypes[t]
	for name := range seen {
		present |= 1 << wt.byName[name]
	}
	return p, present, nil
}

// emptyNotMissing turns Validate's "missing required field" for a field the
// value does hold (an empty string, the zero time) into an invalid value, so
// the reason says what was sent.
func emptyNotMissing(err error, present uint64, wt *wireType) error {
	var fe *FieldError
	if !errors.As(err, &fe) || !errors.Is(err, ErrMissingField) {
		return err
	}
	i, ok := wt.byName[fe.Field]
	if !ok || present&(1<<i) == 0 {
		return err
	}
	if wt.fields[i].kind == kindTime {
		return fieldErrf(fe.Field, ErrInvalidField, "the zero time 0001-01-01T00:00:00Z; a real time is required")
	}
	return fieldErrf(fe.Field, ErrInvalidField, "empty; a value is required")
}

func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Int, reflect.Int64:
		return "integer"
	case reflect.Bool:
		return "boolean"
	case reflect.Slice:
		return "array"
	case reflect.Struct:
		return "string (RFC 3339 time)"
	}
	return t.String()
}

// valueKind is the JSON type a payload field takes.
type valueKind int

const (
	kindString valueKind = iota
	kindInteger
	kindBoolean
	kindStrings // an array of strings
	kindTime    // a string holding an RFC 3339 time
)

func (k valueKind) want() string {
	return [...]string{"a string", "an integer", "a boolean", "an array of strings", "a string (RFC 3339 time)"}[k]
}

func kindOf(rt reflect.Type) valueKind {
	switch {
	case rt == reflect.TypeFor[time.Time]():
		return kindTime
	case rt.Kind() == reflect.Int:
		return kindInteger
	case rt.Kind() == reflect.Bool:
		return kindBoolean
	case rt.Kind() == reflect.Slice:
		return kindStrings
	}
	return kindString
}

// tokenKind names the JSON type of a token as a reason reads it.
func tokenKind(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		if v == '{' {
			return "object"
		}
		return "array"
	case string:
		return "string"
	case json.Number:
		return "number"
	case bool:
		return "boolean"
	}
	return "null"
}

// fieldSpec is what a payload field's JSON must be.
type fieldSpec struct {
	required bool // no omitempty/omitzero option
	kind     valueKind
}

// fieldSet is a payload's JSON fields by name, and the required ones.
type fieldSet struct {
	known    map[string]fieldSpec
	required []string
}

var fieldCache = map[Type]fieldSet{}

func init() {
	for t, mk := range registry {
		fieldCache[t] = buildFieldSet(reflect.TypeOf(mk()).Elem())
	}
}

func fieldsOf(p Payload) fieldSet { return fieldCache[p.EventType()] }

func buildFieldSet(rt reflect.Type) fieldSet {
	fs := fieldSet{known: map[string]fieldSpec{}}
	for f := range rt.Fields() {
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		required := !strings.Contains(opts, "omitempty") && !strings.Contains(opts, "omitzero")
		fs.known[name] = fieldSpec{required: required, kind: kindOf(f.Type)}
		if required {
			fs.required = append(fs.required, name)
		}
	}
	return fs
}

// checkShape walks the value's tokens once: it must be exactly one JSON
// object whose keys are known field names, matched case-sensitively (Go's
// decoder alone folds case), each present at most once with a value of its
// JSON type (checkValue), and every required field present. It returns the
// fields present.
func checkShape(value []byte, fs fieldSet) (map[string]bool, error) {
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, fieldErrf("value", ErrMalformedJSON, "%v", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fieldErrf("value", ErrMalformedJSON, "not a JSON object")
	}
	seen := make(map[string]bool, len(fs.known))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fieldErrf("value", ErrMalformedJSON, "%v", err)
		}
		key := tok.(string) // object keys are always strings
		spec, ok := fs.known[key]
		if !ok {
			return nil, fieldErrf("value", ErrUnknownField, "%s", quote(key))
		}
		if seen[key] {
			return nil, fieldErr(key, ErrDuplicateField)
		}
		seen[key] = true
		if err := checkValue(dec, key, spec); err != nil {
			return nil, err
		}
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, fieldErrf("value", ErrMalformedJSON, "%v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fieldErrf("value", ErrMalformedJSON, "data after the top-level object")
	}
	for _, name := range fs.required {
		if !seen[name] {
			return nil, fieldErr(name, ErrMissingField)
		}
	}
	return seen, nil
}

// checkValue consumes one field's value and checks its JSON type. null is
// the field's absence when it is optional, and invalid when it is required.
// An optional string may not be empty: absent is written by leaving it out
// (or null). It never descends into a value of the wrong type, so nesting
// is bounded by the payload types (an array of strings at most).
func checkValue(dec *json.Decoder, key string, spec fieldSpec) error {
	tok, err := dec.Token()
	if err != nil {
		return fieldErrf(key, ErrMalformedJSON, "%v", err)
	}
	wrong := func(got string) error {
		return fieldErrf(key, ErrInvalidField, "want %s, got %s", spec.kind.want(), got)
	}
	if tok == nil {
		if spec.required {
			return fieldErrf(key, ErrInvalidField, "null; the field is required (only optional fields may be null)")
		}
		return nil
	}
	switch spec.kind {
	case kindString, kindTime:
		s, ok := tok.(string)
		if !ok {
			return wrong(tokenKind(tok))
		}
		if s == "" && !spec.required {
			return fieldErrf(key, ErrInvalidField, "empty string; leave an optional field out, or null, for none")
		}
		if spec.kind == kindTime {
			if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
				return fieldErrf(key, ErrInvalidField, "%s is not an RFC 3339 time", quote(s))
			}
		}
	case kindInteger:
		n, ok := tok.(json.Number)
		if !ok {
			return wrong(tokenKind(tok))
		}
		if _, err := strconv.ParseInt(n.String(), 10, 64); err != nil {
			return wrong("the number " + quote(n.String()))
		}
	case kindBoolean:
		if _, ok := tok.(bool); !ok {
			return wrong(tokenKind(tok))
		}
	case kindStrings:
		if d, ok := tok.(json.Delim); !ok || d != '[' {
			return wrong(tokenKind(tok))
		}
		for dec.More() {
			el, err := dec.Token()
			if err != nil {
				return fieldErrf(key, ErrMalformedJSON, "%v", err)
			}
			if _, ok := el.(string); !ok {
				return wrong("an array holding " + article(tokenKind(el)))
			}
		}
		if _, err := dec.Token(); err != nil { // the closing ']'
			return fieldErrf(key, ErrMalformedJSON, "%v", err)
		}
	}
	return nil
}

func article(kind string) string {
	switch kind {
	case "null":
		return "null"
	case "array", "object":
		return "an " + kind
	}
	return "a " + kind
}
