package events

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/segmentio/kafka-go"

	eventschema "github.com/certfleet/certfleet/schema/events"
)

// compileSchemas loads every embedded schema, with format assertions on.
func compileSchemas(t testing.TB) map[Type]*jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	for _, typ := range Types() {
		b, err := eventschema.FS.ReadFile("v1/" + typ.short() + ".json")
		if err != nil {
			t.Fatalf("schema of %s: %v", typ, err)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("schema of %s: %v", typ, err)
		}
		if err := c.AddResource(typ.SchemaURI(), doc); err != nil {
			t.Fatal(err)
		}
	}
	out := map[Type]*jsonschema.Schema{}
	for _, typ := range Types() {
		s, err := c.Compile(typ.SchemaURI())
		if err != nil {
			t.Fatalf("compile %s: %v", typ, err)
		}
		out[typ] = s
	}
	return out
}

func validateAgainst(t testing.TB, s *jsonschema.Schema, value []byte) error {
	t.Helper()
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(value))
	if err != nil {
		t.Fatalf("value is not JSON: %v", err)
	}
	return s.Validate(inst)
}

// TestSchemasAcceptEncodedSamples validates what Encode writes against the
// published schemas, and checks every schema's $id against SchemaURI.
func TestSchemasAcceptEncodedSamples(t *testing.T) {
	schemas := compileSchemas(t)
	for _, e := range sampleEvents(t) {
		m, err := Encode(e)
		if err != nil {
			t.Fatal(err)
		}
		if err := validateAgainst(t, schemas[e.Type()], m.Value); err != nil {
			t.Errorf("%s: encoded sample fails its schema: %v", e.Type(), err)
		}
	}
}

// TestSchemaFieldsMatchGo pins the schema's property and required lists to
// the Go struct tags, so neither can drift without the other.
func TestSchemaFieldsMatchGo(t *testing.T) {
	for _, typ := range Types() {
		b, _ := eventschema.FS.ReadFile("v1/" + typ.short() + ".json")
		var doc struct {
			ID                   string                     `json:"$id"`
			Required             []string                   `json:"required"`
			Properties           map[string]json.RawMessage `json:"properties"`
			AdditionalProperties *bool                      `json:"additionalProperties"`
		}
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatal(err)
		}
		if doc.ID != typ.SchemaURI() {
			t.Errorf("%s: $id %q, want %q", typ, doc.ID, typ.SchemaURI())
		}
		if doc.AdditionalProperties == nil || *doc.AdditionalProperties {
			t.Errorf("%s: additionalProperties must be false", typ)
		}
		fs := fieldCache[typ]
		var props []string
		for k := range doc.Properties {
			props = append(props, k)
		}
		var known []string
		for k := range fs.known {
			known = append(known, k)
		}
		slices.Sort(props)
		slices.Sort(known)
		if !slices.Equal(props, known) {
			t.Errorf("%s: schema properties %v, Go fields %v", typ, props, known)
		}
		req := slices.Clone(doc.Required)
		goReq := slices.Clone(fs.required)
		slices.Sort(req)
		slices.Sort(goReq)
		if !slices.Equal(req, goReq) {
			t.Errorf("%s: schema required %v, Go required %v", typ, req, goReq)
		}
	}
}

// TestSchemasRejectWhatDecodeRejects checks a few hostile values against both
// the schema and Decode: whatever the schema can express, both must refuse.
func TestSchemasRejectWhatDecodeRejects(t *testing.T) {
	schemas := compileSchemas(t)
	req := sampleEvents(t)[0]
	good, err := Encode(req)
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(good.Value, &m); err != nil {
			t.Fatal(err)
		}
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	cases := map[string][]byte{
		"unknown field":     mutate(func(m map[string]any) { m["extra"] = 1 }),
		"missing tenant":    mutate(func(m map[string]any) { delete(m, "tenant") }),
		"upper-case SAN":    mutate(func(m map[string]any) { m["sans"] = []string{"Example.com"} }),
		"IP-like bad SAN":   mutate(func(m map[string]any) { m["sans"] = []string{"a..b"} }),
		"duplicate SANs":    mutate(func(m map[string]any) { m["sans"] = []string{"a.example", "a.example"} }),
		"priority 10":       mutate(func(m map[string]any) { m["priority"] = 10 }),
		"bad reason":        mutate(func(m map[string]any) { m["reason"] = "because" }),
		"new with replaces": mutate(func(m map[string]any) { m["reason"] = "new" }),
		"bad time":          mutate(func(m map[string]any) { m["not_before"] = "yesterday" }),
		"http CA":           mutate(func(m map[string]any) { m["ca"] = "http://ca.example/dir" }),
		"tenant with NUL":   mutate(func(m map[string]any) { m["tenant"] = "a\x00b" }),
	}
	for name, value := range cases {
		if err := validateAgainst(t, schemas[TypeIssuanceRequested], value); err == nil {
			t.Errorf("%s: schema accepted %s", name, value)
		}
		m := good
		m.Value = value
		if _, err := Decode(m); err == nil {
			t.Errorf("%s: Decode accepted %s", name, value)
		}
	}
}

// TestSchemasAndDecodeAgree holds the contract decisions that a producer in
// another language meets first: null for an optional field is absent, for a
// required one invalid; an optional string is not written empty; a field of
// the wrong JSON type is invalid. The schema and Decode answer alike.
func TestSchemasAndDecodeAgree(t *testing.T) {
	schemas := compileSchemas(t)
	req, obt, failed, sched := encodeSample(t, 0), encodeSample(t, 1), encodeSample(t, 2), encodeSample(t, 4)
	retryLater := withField(withField(failed, "retryable", "false"), "next_attempt_at", "")
	lifetime := withField(withField(withField(sched, "basis", `"lifetime"`), "window_start", ""), "window_end", "")
	newReq := withField(withField(req, "reason", `"new"`), "replaces", "")
	for _, tc := range []struct {
		name string
		m    kafka.Message
		ok   bool
	}{
		{"optional profile null", withField(req, "profile", "null"), true},
		{"optional not_before null", withField(req, "not_before", "null"), true},
		{"optional idempotency_key null", withField(req, "idempotency_key", "null"), true},
		{"new request, replaces null", withField(newReq, "replaces", "null"), true},
		{"new request, replaces set", withField(newReq, "replaces", `"AQIDBA.AEo_nC4bDY5_altMPS4fCpuMxw"`), false},
		{"optional replaces null", withField(obt, "replaces", "null"), true},
		{"not retryable, next_attempt_at null", withField(retryLater, "next_attempt_at", "null"), true},
		{"not retryable, next_attempt_at set", withField(retryLater, "next_attempt_at", `"2026-01-02T05:00:00Z"`), false},
		{"retryable, next_attempt_at null", withField(failed, "next_attempt_at", "null"), false},
		{"lifetime basis, windows null", withField(withField(lifetime, "window_start", "null"), "window_end", "null"), true},
		{"lifetime basis, one window end", withField(lifetime, "window_end", `"2026-01-09T00:00:00Z"`), false},
		{"window end without start", withField(withField(lifetime, "window_start", "null"), "window_end", `"2026-01-09T00:00:00Z"`), false},
		{"ari basis, window null", withField(sched, "window_start", "null"), false},
		{"required tenant null", withField(req, "tenant", "null"), false},
		{"required sans null", withField(req, "sans", "null"), false},
		{"optional profile empty", withField(req, "profile", `""`), false},
		{"optional idempotency_key empty", withField(req, "idempotency_key", `""`), false},
		{"sans a number", withField(req, "sans", "5"), false},
		{"sans holding a number", withField(req, "sans", `["example.com",1]`), false},
		{"priority a string", withField(req, "priority", `"5"`), false},
		{"not_before a number", withField(req, "not_before", "1767326400"), false},
		{"retryable a string", withField(failed, "retryable", `"true"`), false},
		{"no SANs", withField(req, "sans", "[]"), false},
		{"SAN with trailing dot", withField(req, "sans", `["example.com."]`), false},
	} {
		ev, err := Decode(tc.m)
		var typ Type
		if h := headerValue(tc.m, "ce_type"); h != "" {
			typ = Type(h)
		}
		schemaErr := validateAgainst(t, schemas[typ], tc.m.Value)
		if tc.ok && (err != nil || schemaErr != nil) {
			t.Errorf("%s: Decode %v, schema %v; want both to accept %s", tc.name, err, schemaErr, tc.m.Value)
		}
		if !tc.ok && (err == nil || schemaErr == nil) {
			t.Errorf("%s: Decode %v (%v), schema %v; want both to refuse %s", tc.name, err, ev.Data, schemaErr, tc.m.Value)
		}
	}
}
