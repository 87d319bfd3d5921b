package events

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/segmentio/kafka-go"
)

// hostileValues are seed values that attack the JSON layer: invalid UTF-8,
// huge SAN lists, control characters, nested junk, duplicate and case-folded
// keys, numbers out of range, and an embedded private key.
func hostileValues() [][]byte {
	many := make([]string, 5000)
	for i := range many {
		many[i] = fmt.Sprintf(`"h%d.example.com"`, i)
	}
	return [][]byte{
		nil,
		[]byte(`null`),
		[]byte(`{}`),
		[]byte("{\"request_id\":\"r\xff\xfe\"}"),
		[]byte(`{"sans":[` + strings.Join(many, ",") + `]}`),
		[]byte(`{"tenant":"a\u0000b","sans":["a\u0007.example.com"]}`),
		[]byte(`{"sans":` + strings.Repeat("[", 5000) + strings.Repeat("]", 5000) + `}`),
		[]byte(`{"a":{"b":{"c":[{"d":[null,true,1e999]}]}}}`),
		[]byte(`{"tenant":"a","tenant":"b","TENANT":"c"}`),
		[]byte(`{"priority":1e400,"attempt":-0,"sans":["*.*.example.com"]}`),
		[]byte(`{"chain_pem":"-----BEGIN RSA PRIVATE KEY-----\nAA==\n-----END RSA PRIVATE KEY-----\n"}`),
		[]byte(`{"sans":["xn--zz.example","ex\u202eample.com","1.2.3.4","[::1]"]}`),
		[]byte("\xef\xbb\xbf{}"), // UTF-8 BOM
		[]byte(`{"request_id":"a"}{"request_id":"b"}`),
		// What producers in other languages send: nulls, wrong types, empty
		// strings, and names no public CA issues for.
		[]byte(`{"profile":null,"not_before":null,"replaces":null,"idempotency_key":null,"next_attempt_at":null,"window_start":null}`),
		[]byte(`{"sans":5,"priority":"5","attempt":1.0,"retryable":"true","not_before":1767326400}`),
		[]byte(`{"sans":[],"tenant":"","profile":""}`),
		[]byte(`{"sans":["a.example.com.","Example.com","*.com","*.co.uk","faß.de","xn--fa-hia.de"]}`),
		[]byte(`{"sans":["printer.local","x.onion","a.invalid","a.localhost","a.internal","a.alt","a.test","a.example","h.home.arpa","nas.corp"]}`),
		[]byte(`{"sans":["xn--ls8h.example.com","xn--a-0hc.example.com","xn--ab-m1t.example.com","xn--ab-0ea.example.com","xn--kja.example.com"]}`),
	}
}

// contractVariants returns m's value with each optional field null, and
// with fields of the wrong type, empty or naming special-use names: seeds
// that keep the rest of the record valid, so the fuzzer starts next to the
// contract's edges.
func contractVariants(m kafka.Message) [][]byte {
	var obj map[string]json.RawMessage
	if json.Unmarshal(m.Value, &obj) != nil {
		return nil
	}
	var out [][]byte
	for _, field := range slices.Sorted(maps.Keys(obj)) {
		for _, raw := range []string{"null", `""`, "5", `["x"]`, "true"} {
			out = append(out, withField(m, field, raw).Value)
		}
	}
	for _, sans := range []string{`["example.com."]`, `["printer.local"]`, `["xn--ls8h.example.com"]`, `["*.com"]`, `["faß.de"]`, `[]`} {
		out = append(out, withField(m, "sans", sans).Value)
	}
	return out
}

func checkDecoded(t *testing.T, m kafka.Message, e Event) {
	t.Helper()
	if len(m.Value) > MaxValueSize {
		t.Fatalf("accepted a %d-byte value", len(m.Value))
	}
	if string(m.Key) != Identity(e.Data.Names()) {
		t.Fatal("accepted a record whose key is not the identity")
	}
	again, err := Encode(e)
	if err != nil {
		t.Fatalf("decoded event does not re-encode: %v", err)
	}
	back, err := Decode(again)
	if err != nil {
		t.Fatalf("re-encoded event does not decode: %v", err)
	}
	if !reflect.DeepEqual(back.Data, e.Data) || back.ID != e.ID || back.Source != e.Source || !back.Time.Equal(e.Time) {
		t.Fatalf("round trip changed the event:\n%+v\n%+v", e, back)
	}
}

// FuzzDecode fuzzes every part of a record Decode reads: key, the ce_*
// headers and the value.
func FuzzDecode(f *testing.F) {
	for _, e := range sampleEvents(f) {
		m, err := Encode(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(m.Key, string(e.Type()), e.Type().SchemaURI(), "2026-01-02T03:04:06Z", e.ID, "application/json", m.Value)
		for _, v := range hostileValues() {
			f.Add(m.Key, string(e.Type()), e.Type().SchemaURI(), "2026-01-02T03:04:06Z", "id\x00", "application/json;charset=\xff", v)
		}
	}
	f.Fuzz(func(t *testing.T, key []byte, typ, schema, ts, id, ct string, value []byte) {
		m := kafka.Message{Key: key, Value: value, Headers: []kafka.Header{
			{Key: "ce_specversion", Value: []byte("1.0")},
			{Key: "ce_id", Value: []byte(id)},
			{Key: "ce_source", Value: []byte("//fuzz")},
			{Key: "ce_type", Value: []byte(typ)},
			{Key: "ce_time", Value: []byte(ts)},
			{Key: "ce_dataschema", Value: []byte(schema)},
			{Key: "content-type", Value: []byte(ct)},
		}}
		e, err := Decode(m)
		if err != nil {
			if _, ok := err.(*FieldError); !ok {
				t.Fatalf("error %T is not a *FieldError: %v", err, err)
			}
			return
		}
		checkDecoded(t, m, e)
	})
}

// FuzzDecodeValue fuzzes only the JSON value under valid headers, for each
// message type, so the fuzzer spends its time past the header checks. The
// key is derived from whatever "sans" the value holds. What Decode accepts
// must validate against the type's JSON Schema.
func FuzzDecodeValue(f *testing.F) {
	for i, e := range sampleEvents(f) {
		m, err := Encode(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), m.Value)
		for _, v := range hostileValues() {
			f.Add(uint8(i), v)
		}
		for _, v := range contractVariants(m) {
			f.Add(uint8(i), v)
		}
	}
	samples := sampleEvents(f)
	schemas := compileSchemas(f)
	f.Fuzz(func(t *testing.T, which uint8, value []byte) {
		e := samples[int(which)%len(samples)]
		m, err := Encode(e)
		if err != nil {
			t.Fatal(err)
		}
		var loose struct {
			SANs []string `json:"sans"`
		}
		_ = json.Unmarshal(value, &loose)
		m.Key = []byte(Identity(loose.SANs))
		m.Value = value
		got, err := Decode(m)
		if err != nil {
			if _, ok := err.(*FieldError); !ok {
				t.Fatalf("error %T is not a *FieldError: %v", err, err)
			}
			if len(value) <= MaxValueSize && bytes.Contains(value, []byte("PRIVATE KEY")) && !strings.Contains(err.Error(), "private key") {
				t.Fatalf("value with a private key rejected for another reason first: %v", err)
			}
			return
		}
		// The published schema is the contract: it accepts whatever Decode
		// accepts (Decode checks more than a schema can express).
		if err := validateAgainst(t, schemas[e.Type()], value); err != nil {
			t.Fatalf("Decode accepted a value its schema refuses: %v\n%s", err, value)
		}
		checkDecoded(t, m, got)
	})
}
