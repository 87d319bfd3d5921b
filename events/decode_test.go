package events

import (
	"bytes"
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
		{"unknown type", setHeader(req, "ce_type", "dev.certfleet.cert.revoked"), ErrUnknownType, "ce_type"},
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
		}(), ErrMalformedJSON, "request_id"},
		{"unknown field", replaceValue(req, `"tenant"`, `"extra":{"a":[1,2]},"tenant"`), ErrUnknownField, "value"},
		{"case-folded field", replaceValue(req, `"tenant"`, `"Tenant"`), ErrUnknownField, "value"},
		{"duplicate field", replaceValue(req, `"tenant":"tenant-a"`, `"tenant":"tenant-a","tenant":"tenant-b"`), ErrDuplicateField, "tenant"},
		{"null field", replaceValue(req, `"tenant":"tenant-a"`, `"tenant":null`), ErrInvalidField, "tenant"},
		{"missing field", replaceValue(req, `"priority":5,`, ``), ErrMissingField, "priority"},
		{"wrong JSON type", replaceValue(req, `"priority":5`, `"priority":"5"`), ErrInvalidField, "priority"},
		{"float priority", replaceValue(req, `"priority":5`, `"priority":5.5`), ErrInvalidField, "priority"},
		{"priority 10", replaceValue(req, `"priority":5`, `"priority":10`), ErrInvalidField, "priority"},
		{"negative attempt", replaceValue(req, `"attempt":0`, `"attempt":-1`), ErrInvalidField, "attempt"},
		{"bad time field", replaceValue(req, `"2026-01-02T04:00:00Z"`, `"2026-13-02T04:00:00Z"`), ErrInvalidField, "value"},
		{"unknown key type", replaceValue(req, `"ecdsa-p256"`, `"ed448"`), ErrInvalidField, "key_type"},
		{"unknown reason", replaceValue(req, `"renewal"`, `"whim"`), ErrInvalidField, "reason"},
		{"new replaces nothing", replaceValue(req, `"renewal"`, `"new"`), ErrInvalidField, "replaces"},
		{"http CA", replaceValue(req, `"letsencrypt"`, `"http://ca.example/directory"`), ErrInvalidField, "ca"},
		{"CA with user info", replaceValue(req, `"letsencrypt"`, `"https://u:p@ca.example/directory"`), ErrInvalidField, "ca"},
		{"tenant with control char", replaceValue(req, `"tenant-a"`, `"tenant\u0007a"`), ErrControlChar, "tenant"},
		{"tenant with bidi override", replaceValue(req, `"tenant-a"`, `"tenant\u202ea"`), ErrControlChar, "tenant"},
		{"request id with space", replaceValue(req, `"req-0001"`, `"req 0001"`), ErrInvalidField, "request_id"},
		{"too many SANs", replaceValue(req, `"sans":["example.com","www.example.com"]`, `"sans":[`+strings.Join(manySANs, ",")+`]`), ErrTooManySANs, "sans"},
		{"no SANs", replaceValue(req, `"sans":["example.com","www.example.com"]`, `"sans":[]`), ErrInvalidSAN, "sans"},
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
