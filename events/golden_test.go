package events

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/segmentio/kafka-go"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// renderRecord writes a record as text: "key: <key>", one "<header>: <value>"
// line per header in order, a blank line, then the value bytes as written.
func renderRecord(m kafka.Message) []byte {
	var b bytes.Buffer
	b.WriteString("key: " + string(m.Key) + "\n")
	for _, h := range m.Headers {
		b.WriteString(h.Key + ": " + string(h.Value) + "\n")
	}
	b.WriteString("\n")
	b.Write(m.Value)
	b.WriteString("\n")
	return b.Bytes()
}

// parseRecord is the inverse of renderRecord.
func parseRecord(t *testing.T, b []byte) kafka.Message {
	t.Helper()
	head, value, ok := bytes.Cut(b, []byte("\n\n"))
	if !ok {
		t.Fatal("golden file has no blank line")
	}
	var m kafka.Message
	for i, line := range strings.Split(string(head), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			t.Fatalf("golden line %q", line)
		}
		if i == 0 {
			m.Key = []byte(v)
			continue
		}
		m.Headers = append(m.Headers, kafka.Header{Key: k, Value: []byte(v)})
	}
	m.Value = bytes.TrimSuffix(value, []byte("\n"))
	return m
}

// TestGolden pins the wire format: headers, key and value bytes of every
// message type. Run with -update after a deliberate change, and bump
// SchemaVersion if the change is not backwards compatible.
func TestGolden(t *testing.T) {
	for _, e := range sampleEvents(t) {
		m, err := Encode(e)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join("testdata", "golden", e.Type().short()+".txt")
		got := renderRecord(m)
		if *update {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -run TestGolden -update)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: wire format changed\n got: %s\nwant: %s", e.Type(), got, want)
		}
		// The golden bytes must decode to the sample: old records stay readable.
		back, err := Decode(parseRecord(t, want))
		if err != nil {
			t.Fatalf("%s: decoding golden file: %v", e.Type(), err)
		}
		if !reflect.DeepEqual(back.Data, e.Data) || back.ID != e.ID || !back.Time.Equal(e.Time) || back.Source != e.Source {
			t.Errorf("%s: golden file decodes to %+v, want %+v", e.Type(), back, e)
		}
	}
}
