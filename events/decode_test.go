package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/names"
)

func encodeSample(t testing.TB, i int) kafka.Message {
	t.Helper()
	m, err := Encode(sampleEvents(t)[i])
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func setHeader(m kafka.Message, key, value string) kafka.Message {
	hs := make([]kafka.Header, 0, len(m.Headers))
	found := false
	for _, h := range m.Headers {
		if h.Key == key {
			found = true
			h.Value = []byte(value)
		}
		hs = append(hs, h)
	}
	if !found {
		hs = append(hs, kafka.Header{Key: key, Value: []byte(value)})
	}
	m.Headers = hs
	return m
}

func dropHeader(m kafka.Message, key string) kafka.Message {
	var hs []kafka.Header
	for _, h := range m.Headers {
		if h.Key != key {
			hs = append(hs, h)
		}
	}
	m.Headers = hs
	return m
}

func replaceValue(m kafka.Message, old, new string) kafka.Message {
	if !bytes.Contains(m.Value, []byte(old)) {
		panic("sample value has no " + old)
	}
	m.Value = bytes.Replace(m.Value, []byte(old), []byte(new), 1)
	return m
}

func TestRoundTrip(t *testing.T) {
	for _, e := range sampleEvents(t) {
		m, err := Encode(e)
		if err != nil {
			t.Fatal(err)
		}
		m.Topic, m.Partition, m.Offset = "t", 3, 42
		got, err := Decode(m)
		if err != nil {
			t.Fatalf("%s: %v", e.Type(), err)
		}
		e.Record = Record{Topic: "t", Partition: 3, Offset: 42}
		if !reflect.DeepEqual(got, e) {
			t.Errorf("%s: round trip\n got %+v\nwant %+v", e.Type(), got, e)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	req := encodeSample(t, 0)    // issuance.requested
	obt := encodeSample(t, 1)    // cert.obtained
	failed := encodeSample(t, 2) // cert.failed
	manySANs := make([]string, MaxSANs+1)
	for i := range manySANs {
		manySANs[i] = fmt.Sprintf(`"h%d.example.com"`, i)
	}
	tests := []struct {
		name  string
		m     kafka.Message
		err   error
		field string
	}{
		{"value over 64 KiB", func() kafka.Message { m := req; m.Value = bytes.Repeat([]byte(" "), MaxValueSize+1); return m }(), ErrTooLarge, "value"},
		{"spec version 0.3", setHeader(req, "ce_specversion", "0.3"), ErrUnknownSpecVersion, "ce_specversion"},
		{"no spec version", dropHeader(req, "ce_specversion"), ErrMissingHeader, "ce_specversion"},
		{"unknown type", setHeader(req, "ce_type", "dev.certfleet.cert.suspended"), ErrUnknownType, "ce_type"},
		{"no type", dropHeader(req, "ce_type"), ErrMissingHeader, "ce_type"},
		{"schema v2", setHeader(req, "ce_dataschema", "https://certfleet.dev/schema/events/v2/issuance.requested.json"), ErrUnknownSchemaVersion, "ce_dataschema"},
		{"schema of another type", setHeader(req, "ce_dataschema", TypeCertFailed.SchemaURI()), ErrInvalidHeader, "ce_dataschema"},
		{"no schema", dropHeader(req, "ce_dataschema"), ErrMissingHeader, "ce_dataschema"},
		{"no id", dropHeader(req, "ce_id"), ErrMissingHeader, "ce_id"},
		{"empty id", setHeader(req, "ce_id", ""), ErrInvalidHeader, "ce_id"},
		{"id with newline", setHeader(req, "ce_id", "a\nb"), ErrControlChar, "ce_id"},
		{"id invalid UTF-8", setHeader(req, "ce_id", "a\xffb"), ErrInvalidUTF8, "ce_id"},
		{"huge id", setHeader(req, "ce_id", strings.Repeat("a", MaxHeaderSize+1)), ErrInvalidHeader, "ce_id"},
		{"no source", dropHeader(req, "ce_source"), ErrMissingHeader, "ce_source"},
		{"bad source", setHeader(req, "ce_source", "%zz"), ErrInvalidHeader, "ce_source"},
		{"no time", dropHeader(req, "ce_time"), ErrMissingHeader, "ce_time"},
		{"bad time", setHeader(req, "ce_time", "Tuesday"), ErrInvalidHeader, "ce_time"},
		{"duplicate type", func() kafka.Message {
			m := req
			m.Headers = append(append([]kafka.Header{}, m.Headers...), kafka.Header{Key: "ce_type", Value: []byte(TypeCertFailed)})
			return m
		}(), ErrDuplicateHeader, "ce_type"},
		{"too many headers", func() kafka.Message {
			m := req
			m.Headers = append([]kafka.Header{}, m.Headers...)
			for i := 0; i < MaxHeaders; i++ {
				m.Headers = append(m.Headers, kafka.Header{Key: fmt.Sprint("x", i)})
			}
			return m
		}(), ErrTooManyHeaders, "headers"},
		{"structured mode content type", setHeader(req, "content-type", "application/cloudevents+json"), ErrContentType, "content-type"},
		{"latin1 charset", setHeader(req, "content-type", "application/json; charset=latin1"), ErrContentType, "content-type"},
		{"no content type", dropHeader(req, "content-type"), ErrMissingHeader, "content-type"},
		{"wrong key", func() kafka.Message { m := req; m.Key = []byte("abc"); return m }(), ErrKeyMismatch, "key"},
		{"no key", func() kafka.Message { m := req; m.Key = nil; return m }(), ErrKeyMismatch, "key"},
		{"invalid UTF-8 value", replaceValue(req, "tenant-a", "tenant-\xff"), ErrInvalidUTF8, "value"},
		{"malformed JSON", func() kafka.Message { m := req; m.Value = []byte(`{"request_id":`); return m }(), ErrMalformedJSON, "request_id"},
		{"not an object", func() kafka.Message { m := req; m.Value = []byte(`["x"]`); return m }(), ErrMalformedJSON, "value"},
		{"trailing data", func() kafka.Message { m := req; m.Value = append(append([]byte{}, m.Value...), "{}"...); return m }(), ErrMalformedJSON, "value"},
		{"empty value", func() kafka.Message { m := req; m.Value = nil; return m }(), ErrMalformedJSON, "value"},
		{"nested junk", func() kafka.Message {
			m := req
			m.Value = []byte(`{"request_id":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}`)
			return m
		}(), ErrInvalidField, "request_id"}, // the wrong type, not walked
		{"unknown field", replaceValue(req, `"tenant"`, `"extra":{"a":[1,2]},"tenant"`), ErrUnknownField, "value"},
		{"case-folded field", replaceValue(req, `"tenant"`, `"Tenant"`), ErrUnknownField, "value"},
		{"duplicate field", replaceValue(req, `"tenant":"tenant-a"`, `"tenant":"tenant-a","tenant":"tenant-b"`), ErrDuplicateField, "tenant"},
		{"null field", replaceValue(req, `"tenant":"tenant-a"`, `"tenant":null`), ErrInvalidField, "tenant"},
		{"missing field", replaceValue(req, `"priority":5,`, ``), ErrMissingField, "priority"},
		{"wrong JSON type", replaceValue(req, `"priority":5`, `"priority":"5"`), ErrInvalidField, "priority"},
		{"float priority", replaceValue(req, `"priority":5`, `"priority":5.5`), ErrInvalidField, "priority"},
		{"priority 10", replaceValue(req, `"priority":5`, `"priority":10`), ErrInvalidField, "priority"},
		{"negative attempt", replaceValue(req, `"attempt":0`, `"attempt":-1`), ErrInvalidField, "attempt"},
		{"bad time field", replaceValue(req, `"2026-01-02T04:00:00Z"`, `"2026-13-02T04:00:00Z"`), ErrInvalidField, "not_before"},
		{"time a number", replaceValue(req, `"2026-01-02T04:00:00Z"`, `1767326400`), ErrInvalidField, "not_before"},
		{"SANs a number", replaceValue(req, `["example.com","www.example.com"]`, `5`), ErrInvalidField, "sans"},
		{"SANs a string", replaceValue(req, `["example.com","www.example.com"]`, `"example.com"`), ErrInvalidField, "sans"},
		{"SANs null", replaceValue(req, `["example.com","www.example.com"]`, `null`), ErrInvalidField, "sans"},
		{"attempt a string", replaceValue(req, `"attempt":0`, `"attempt":"0"`), ErrInvalidField, "attempt"},
		{"priority huge", replaceValue(req, `"priority":5`, `"priority":1e400`), ErrInvalidField, "priority"},
		{"retryable a string", replaceValue(failed, `"retryable":true`, `"retryable":"true"`), ErrInvalidField, "retryable"},
		{"required field empty", replaceValue(req, `"tenant":"tenant-a"`, `"tenant":""`), ErrInvalidField, "tenant"},
		{"required time zero", withField(obt, "not_before", `"0001-01-01T00:00:00Z"`), ErrInvalidField, "not_before"},
		{"optional field empty", replaceValue(req, `"profile":"tlsserver"`, `"profile":""`), ErrInvalidField, "profile"},
		{"SAN with trailing dot", replaceValue(req, `"www.example.com"`, `"www.example.com."`), names.ErrTrailingDot, "sans[1]"},
		{"SAN under .local", replaceValue(req, `"www.example.com"`, `"printer.local"`), names.ErrSpecialUse, "sans[1]"},
		{"SAN under .onion", replaceValue(req, `"www.example.com"`, `"x.onion"`), names.ErrSpecialUse, "sans[1]"},
		{"SAN under an undelegated TLD", replaceValue(req, `"www.example.com"`, `"nas.corp"`), names.ErrNotDelegated, "sans[1]"},
		{"SAN with an emoji A-label", replaceValue(req, `"www.example.com"`, `"xn--ls8h.example.com"`), names.ErrIDNA, "sans[1]"},
		{"SAN breaking the Bidi rule", replaceValue(req, `"www.example.com"`, `"xn--a-0hc.example.com"`), names.ErrIDNA, "sans[1]"},
		{"SAN wildcard over a public suffix", replaceValue(req, `"www.example.com"`, `"*.com"`), names.ErrPublicSuffix, "sans[1]"},
		{"SAN in Unicode form", replaceValue(req, `"www.example.com"`, `"faß.de"`), names.ErrNotCanonical, "sans[1]"},
		{"unknown key type", replaceValue(req, `"ecdsa-p256"`, `"ed448"`), ErrInvalidField, "key_type"},
		{"unknown reason", replaceValue(req, `"renewal"`, `"whim"`), ErrInvalidField, "reason"},
		{"new replaces nothing", replaceValue(req, `"renewal"`, `"new"`), ErrInvalidField, "replaces"},
		{"http CA", replaceValue(req, `"letsencrypt"`, `"http://ca.example/directory"`), ErrInvalidField, "ca"},
		{"CA with user info", replaceValue(req, `"letsencrypt"`, `"https://u:p@ca.example/directory"`), ErrInvalidField, "ca"},
		{"tenant with control char", replaceValue(req, `"tenant-a"`, `"tenant\u0007a"`), ErrControlChar, "tenant"},
		{"tenant with bidi override", replaceValue(req, `"tenant-a"`, `"tenant\u202ea"`), ErrControlChar, "tenant"},
		{"request id with space", replaceValue(req, `"req-0001"`, `"req 0001"`), ErrInvalidField, "request_id"},
		{"too many SANs", replaceValue(req, `"sans":["example.com","www.example.com"]`, `"sans":[`+strings.Join(manySANs, ",")+`]`), ErrTooManySANs, "sans"},
		{"no SANs", replaceValue(req, `"sans":["example.com","www.example.com"]`, `"sans":[]`), names.ErrNoNames, "sans"},
		{"SAN with control char", replaceValue(req, `"www.example.com"`, `"www\u0000.example.com"`), names.ErrControl, "sans[1]"},
		{"SAN not canonical", replaceValue(req, `"www.example.com"`, `"WWW.example.com"`), names.ErrNotCanonical, "sans[1]"},
		{"SAN is an IP", replaceValue(req, `"www.example.com"`, `"192.0.2.1"`), names.ErrIPAddress, "sans[1]"},
		{"SAN wildcard in the middle", replaceValue(req, `"www.example.com"`, `"www.*.example.com"`), names.ErrWildcard, "sans[1]"},
		{"SAN repeated", replaceValue(req, `"www.example.com"`, `"example.com"`), names.ErrDuplicate, "sans[1]"},
		{"SANs not strings", replaceValue(req, `["example.com","www.example.com"]`, `[{"a":1}]`), ErrInvalidField, "sans"},
		{"private key in chain", replaceValue(obt, `-----BEGIN CERTIFICATE-----`, `-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----`), ErrPrivateKey, "value"},
		{"private key in detail", replaceValue(failed, `too many`, `-----BEGIN PRIVATE KEY----- too many`), ErrPrivateKey, "value"},
		{"chain is not PEM", replaceValue(obt, `-----BEGIN CERTIFICATE-----`, `junk-----BEGIN CERTIFICATE-----`), ErrInvalidField, "chain_pem"},
		{"serial differs from leaf", replaceValue(obt, `"serial":"4a3f`, `"serial":"5a3f`), ErrInvalidField, "chain_pem"},
		{"retryable without next attempt", replaceValue(failed, `"retryable":true`, `"retryable":false`), ErrInvalidField, "next_attempt_at"},
		{"ACME problem type", replaceValue(failed, `urn:ietf:params:acme:error:rateLimited`, `about:blank`), ErrInvalidField, "problem_type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(tt.m)
			if !errors.Is(err, tt.err) {
				t.Fatalf("Decode: %v, want %v", err, tt.err)
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("Decode: %v, want a *FieldError for %q", err, tt.field)
			}
			if strings.ContainsAny(err.Error(), "\x00\x07\n") || !utf8.ValidString(err.Error()) {
				t.Fatalf("error message carries raw input: %q", err.Error())
			}
		})
	}
}

// withField returns m with the value's field set to the JSON raw (null
// included), or removed when raw is empty. Field order is not kept.
func withField(m kafka.Message, field, raw string) kafka.Message {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(m.Value, &obj); err != nil {
		panic(err)
	}
	if raw == "" {
		delete(obj, field)
	} else {
		obj[field] = json.RawMessage(raw)
	}
	v, err := json.Marshal(obj)
	if err != nil {
		panic(err)
	}
	m.Value = v
	return m
}

// The reasons say what was sent and what is wanted: a wrong JSON type is not
// a missing field, an empty SAN list says a SAN is required, names'
// reasons come through.
func TestDecodeReasons(t *testing.T) {
	req := encodeSample(t, 0)
	obt := encodeSample(t, 1)
	for _, tc := range []struct {
		m    kafka.Message
		want string
	}{
		{withField(req, "sans", `5`), "events: sans: invalid value: want an array of strings, got number"},
		{withField(req, "sans", `"example.com"`), "events: sans: invalid value: want an array of strings, got string"},
		{withField(req, "sans", `["example.com",1]`), "events: sans: invalid value: want an array of strings, got an array holding a number"},
		{withField(req, "sans", `[]`), "events: sans: invalid SAN: names: no SANs: at least one is required"},
		{withField(req, "sans", `["example.com."]`), `events: sans[0]: invalid SAN: names: name 0 "example.com.": trailing dot: write example.com, not example.com.`},
		{withField(req, "sans", `["Example.com"]`), "upper case; write example.com"},
		{withField(req, "sans", `["*.com"]`), "wildcard directly under the public suffix com"},
		{withField(req, "sans", `["printer.local"]`), ".local is reserved for multicast DNS (RFC 6762)"},
		{withField(req, "priority", `"5"`), "events: priority: invalid value: want an integer, got string"},
		{withField(req, "priority", `5.5`), `events: priority: invalid value: want an integer, got the number "5.5"`},
		{withField(req, "not_before", `1767326400`), "events: not_before: invalid value: want a string (RFC 3339 time), got number"},
		{withField(req, "not_before", `"yesterday"`), `events: not_before: invalid value: "yesterday" is not an RFC 3339 time`},
		{withField(req, "tenant", `""`), "events: tenant: invalid value: empty; a value is required"},
		{withField(req, "tenant", `null`), "events: tenant: invalid value: null; the field is required"},
		{withField(req, "tenant", ``), "events: tenant: missing required field"},
		{withField(req, "profile", `""`), "events: profile: invalid value: empty string; leave an optional field out, or null, for none"},
		{withField(obt, "not_after", `"0001-01-01T00:00:00Z"`), "events: not_after: invalid value: the zero time"},
	} {
		_, err := Decode(tc.m)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Decode(%s) = %v; want %q", tc.m.Value, err, tc.want)
		}
	}
}

// null for an optional field is the field's absence: what other-language
// producers write for "none" (Python's json.dumps(None)). The decoded event
// equals the one without the field, and re-encodes without it.
func TestDecodeNullIsAbsent(t *testing.T) {
	req := encodeSample(t, 0)
	without := req
	for _, f := range []string{"profile", "not_before", "idempotency_key"} {
		without = withField(without, f, "")
	}
	want, err := Decode(without)
	if err != nil {
		t.Fatal(err)
	}
	nulls := req
	for _, f := range []string{"profile", "not_before", "idempotency_key"} {
		nulls = withField(nulls, f, "null")
	}
	got, err := Decode(nulls)
	if err != nil {
		t.Fatalf("optional fields null: %v", err)
	}
	if !reflect.DeepEqual(got.Data, want.Data) {
		t.Fatalf("null decoded as %+v; want %+v", got.Data, want.Data)
	}
	again, err := Encode(got)
	if err != nil || bytes.Contains(again.Value, []byte("null")) || bytes.Contains(again.Value, []byte(`"profile"`)) {
		t.Fatalf("re-encoded %s, %v; want the fields left out", again.Value, err)
	}
	failed := withField(encodeSample(t, 2), "retryable", "false")
	failed = withField(failed, "next_attempt_at", "null")
	if _, err := Decode(failed); err != nil {
		t.Errorf("next_attempt_at null with retryable false: %v", err)
	}
	sched := withField(withField(encodeSample(t, 4), "basis", `"lifetime"`), "window_start", "null")
	sched = withField(sched, "window_end", "null")
	if _, err := Decode(sched); err != nil {
		t.Errorf("renewal.scheduled windows null with basis lifetime: %v", err)
	}
}

// UTS #46 non-transitional (IDNA2008) is the IDNA variant of the contract:
// ß stays, so "faß.de" is "xn--fa-hia.de", a different name from IDNA2003's
// "fass.de" (Python's built-in "idna" codec). Decode takes the A-label and
// refuses the Unicode form naming the A-label.
func TestDecodeIDNAVariant(t *testing.T) {
	req := encodeSample(t, 0)
	ok := withField(req, "sans", `["xn--fa-hia.de"]`)
	ok.Key = []byte(Identity([]string{"xn--fa-hia.de"}))
	if _, err := Decode(ok); err != nil {
		t.Fatalf("xn--fa-hia.de: %v", err)
	}
	if Identity([]string{"xn--fa-hia.de"}) == Identity([]string{"fass.de"}) {
		t.Fatal("faß and fass share an identity")
	}
	uni := withField(req, "sans", `["faß.de"]`)
	uni.Key = ok.Key
	if _, err := Decode(uni); !errors.Is(err, names.ErrNotCanonical) || !strings.Contains(err.Error(), "write the A-label form xn--fa-hia.de") {
		t.Fatalf("faß.de: %v; want the A-label named", err)
	}
	if got, err := names.Normalize("faß.de"); err != nil || got != "xn--fa-hia.de" {
		t.Fatalf("names.Normalize(faß.de) = %q, %v", got, err)
	}
}

func TestDecodeAcceptsCompatibleVariants(t *testing.T) {
	req := encodeSample(t, 0)
	for name, m := range map[string]kafka.Message{
		"charset utf-8":      setHeader(req, "content-type", "application/json; charset=UTF-8"),
		"foreign headers":    setHeader(setHeader(req, "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), "x-bin", "\xff\x00"),
		"offset time":        setHeader(req, "ce_time", "2026-01-02T05:04:06+02:00"),
		"optional omitted":   replaceValue(replaceValue(req, `"profile":"tlsserver",`, ``), `,"idempotency_key":"upstream-42"`, ``),
		"whitespace in JSON": func() kafka.Message { m := req; m.Value = append([]byte(" \n"), append(m.Value, '\n')...); return m }(),
	} {
		if _, err := Decode(m); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestEncodeRefusesInvalid(t *testing.T) {
	p := samplePayloads(t)[0].(*IssuanceRequest)
	p.SANs = []string{"Example.COM"}
	if _, err := New(testSource, testTime, p); !errors.Is(err, names.ErrNotCanonical) {
		t.Fatalf("New with non-canonical SAN: %v", err)
	}
	e := sampleEvents(t)[0]
	e.Source = ""
	if _, err := Encode(e); !errors.Is(err, ErrInvalidHeader) {
		t.Fatalf("Encode without source: %v", err)
	}
	if _, err := New(testSource, testTime, nil); !errors.Is(err, ErrMissingField) {
		t.Fatalf("New(nil): %v", err)
	}
}

func TestEncodeWritesUTC(t *testing.T) {
	p := samplePayloads(t)[3].(*IssuanceDeferred)
	p.RetryAt = p.RetryAt.In(time.FixedZone("X", 5*3600))
	e, err := New(testSource, testTime.In(time.FixedZone("Y", -3600)), p)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Encode(e)
	if err != nil {
		t.Fatal(err)
	}
	want := encodeSample(t, 3)
	if !bytes.Equal(m.Value, want.Value) || string(m.Headers[4].Value) != string(want.Headers[4].Value) {
		t.Fatalf("times not written in UTC:\n%s %s\n%s %s", m.Headers[4].Value, m.Value, want.Headers[4].Value, want.Value)
	}
	if p.RetryAt.Location().String() != "X" {
		t.Fatal("Encode modified the caller's payload")
	}
}

func TestIdentity(t *testing.T) {
	// The documented test vector: sha256("example.com\nwww.example.com").
	const want = "d0153bd58ceefd23eaf3c18ab3d2affc04f3a5fb6d6041c01b23284506a987e2"
	for _, sans := range [][]string{
		{"example.com", "www.example.com"},
		{"www.example.com", "example.com"},
		{"WWW.Example.com", "example.com", "www.example.com"},
	} {
		if got := Identity(sans); got != want {
			t.Errorf("Identity(%q) = %s, want %s", sans, got, want)
		}
	}
	if Identity([]string{"example.com"}) == want || Identity([]string{"example.com\nwww.example.com"}) != want {
		// The second equality documents why SANs must be validated before
		// hashing: a name containing "\n" could alias a set.
		t.Error("Identity distinguishes sets incorrectly")
	}
}

func TestEventIDsStableAndDistinct(t *testing.T) {
	evs := sampleEvents(t)
	again := sampleEvents(t)
	seen := map[string]Type{}
	for i, e := range evs {
		if e.ID != again[i].ID {
			t.Errorf("%s: id not stable: %s vs %s", e.Type(), e.ID, again[i].ID)
		}
		if other, dup := seen[e.ID]; dup {
			t.Errorf("%s and %s share id %s", e.Type(), other, e.ID)
		}
		seen[e.ID] = e.Type()
	}
	// A second failure of the same request is a new event; a later time for
	// the same event (re-publish after a crash) is not.
	f := *samplePayloads(t)[2].(*CertFailed)
	f.Attempt++
	e2, err := New(testSource, testTime.Add(time.Hour), &f)
	if err != nil {
		t.Fatal(err)
	}
	if e2.ID == evs[2].ID {
		t.Error("attempt 3 failure has the id of attempt 2")
	}
	e3, _ := New(testSource, testTime.Add(time.Hour), samplePayloads(t)[1])
	if e3.ID != evs[1].ID {
		t.Error("re-published cert.obtained changed id")
	}
}

func TestARICertID(t *testing.T) {
	_, leaf := testChain(t)
	// AKI 01020304; serial 04a3f9... has a clear high bit, so no zero pad.
	if got, want := ARICertID(leaf), "AQIDBA.BKP5wuGw2Of2pbTD0uHwqbjH"; got != want {
		t.Errorf("ARICertID = %s, want %s", got, want)
	}
}
