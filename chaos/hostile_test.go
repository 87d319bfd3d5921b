package chaos

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
)

// Names no worker may order: invalid by the DNS rules, or hostile to logs,
// SQL and terminals.
var hostileNames = []string{
	"-lead.%s.test", "a..b.%s.test", strings.Repeat("x", 64) + ".%s.test", "*.com", "127.0.0.1", "[::1]",
	"exa mple.%s.test", "xn--a.%s.test", "", "evil\u202e.%s.test", "nul\x00.%s.test",
	"x'; DROP TABLE issued_certificates;--.%s.test", "line\nbreak.%s.test", "zero\u200bwidth.%s.test",
	"*.*.%s.test", "a.*.%s.test", strings.Repeat("a.", 130) + "%s.test", "UPPER\u0130.%s.test",
}

// hostileMix returns the valid records interleaved with x hostile records
// per valid one, and how many of them must be dead-lettered (all but the
// exact duplicates of valid records, which the workers must absorb). Each
// hostile kind is checked to fail events.Decode here, so the expectation is
// the decoder's contract, not a guess.
func hostileMix(t *testing.T, suffix string, valid []kafka.Message, x int) (out []kafka.Message, dead int) {
	t.Helper()
	for i, v := range valid {
		out = append(out, v)
		for k := 0; k < x; k++ {
			kind := (i*x + k) % 10
			m := hostile(t, suffix, v, kind, i*x+k)
			_, err := events.Decode(m)
			switch {
			case kind == 9 && err != nil:
				t.Fatalf("duplicate record does not decode: %v", err)
			case kind != 9 && err == nil:
				t.Fatalf("hostile record of kind %d decodes: %q", kind, m.Value)
			}
			if kind != 9 {
				dead++
			}
			out = append(out, m)
		}
	}
	return out, dead
}

// hostile derives one hostile record of the given kind from a valid one.
func hostile(t *testing.T, suffix string, v kafka.Message, kind, n int) kafka.Message {
	m := kafka.Message{Key: v.Key, Value: bytes.Clone(v.Value), Headers: append([]kafka.Header(nil), v.Headers...)}
	var req struct {
		SANs []string `json:"sans"`
	}
	if err := json.Unmarshal(v.Value, &req); err != nil || len(req.SANs) != 1 {
		t.Fatalf("valid record has no single SAN: %v", err)
	}
	san, _ := json.Marshal(req.SANs[0])
	switch kind {
	case 0: // not JSON at all
		b := make([]byte, 1+n%300)
		_, _ = rand.Read(b)
		m.Value = append([]byte{0xff}, b...)
	case 1: // oversized: 96 KiB, above the 64 KiB decoder limit
		pad, _ := json.Marshal(strings.Repeat("A", 96<<10))
		m.Value = bytes.Replace(m.Value, []byte(`"tenant":"`+tenant+`"`), append([]byte(`"tenant":`), pad...), 1)
	case 2, 3: // an invalid or hostile name in place of the valid one
		name := hostileNames[n%len(hostileNames)]
		if strings.Contains(name, "%s") {
			name = fmt.Sprintf(name, suffix)
		}
		q, _ := json.Marshal(name)
		m.Value = bytes.Replace(m.Value, san, q, 1)
	case 4: // no ce_type header
		m.Headers = dropHeader(m.Headers, "ce_type")
	case 5: // an unknown CloudEvents version
		m.Headers = append(dropHeader(m.Headers, "ce_specversion"), kafka.Header{Key: "ce_specversion", Value: []byte("0.3")})
	case 6: // an unknown field
		m.Value = append([]byte(`{"admin":true,`), m.Value[1:]...)
	case 7: // a field of the wrong type
		m.Value = bytes.Replace(m.Value, san, []byte(`{"$ne":null}`), 1)
	case 8: // nesting far deeper than any message has
		m.Value = []byte(`{"request_id":` + strings.Repeat("[", 5000) + strings.Repeat("]", 5000) + `}`)
	case 9: // an exact duplicate of the valid record (same ce_id)
	}
	return m
}

func dropHeader(hs []kafka.Header, key string) []kafka.Header {
	out := hs[:0:0]
	for _, h := range hs {
		if h.Key != key {
			out = append(out, h)
		}
	}
	return out
}
