package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

// A line of the issuer's logger names each key once, also when acmez adds
// its own "ca" (the directory URL) to the line.
func TestCALoggerKeysOnce(t *testing.T) {
	var buf bytes.Buffer
	l := caLogger(newLogger(&buf, "info"), "pebble")
	l.Info("trying to solve challenge", slog.String("identifier", "a.test"), slog.String("ca", "https://127.0.0.1:14000/dir"))
	l.Info("order not resumable; placing a new one", "order", "https://127.0.0.1:14000/my-order/1")
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if k := repeatedKey(t, line); k != "" {
			t.Errorf("key %q twice in %s", k, line)
		}
		if !strings.Contains(line, `"ca_name":"pebble"`) {
			t.Errorf("no CA name in %s", line)
		}
	}
}

// repeatedKey returns a top-level key that occurs twice in a JSON object.
func repeatedKey(t *testing.T, line string) string {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(line))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not a JSON object: %s", line)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("%v in %s", err, line)
		}
		k := tok.(string)
		if seen[k] {
			return k
		}
		seen[k] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("%v in %s", err, line)
		}
	}
	return ""
}
