package events

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/cloudevents/sdk-go/protocol/kafka_sarama/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/testenv"
)

// Interoperability with clients nobody here wrote: kcat (librdkafka) and the
// CloudEvents Go SDK's Kafka binding.

// requireKcat returns kcat's path. The stack switch comes first: with
// CERTFLEET_TESTENV=off the test skips like every integration test (so
// `make test-unit` passes on a machine without kcat); with the stack on, a
// missing kcat is a failure, never a skip (`testenv up` installs it).
func requireKcat(t *testing.T) string {
	t.Helper()
	testenv.Require(t)
	path, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatal("kcat is not installed: `make testenv-up` installs it (apt-get install kcat)")
	}
	return path
}

// kcatRecord is one line of `kcat -C -J`.
type kcatRecord struct {
	Topic     string   `json:"topic"`
	Partition int      `json:"partition"`
	Offset    int64    `json:"offset"`
	Headers   []string `json:"headers"` // name, value, name, value, ...
	Key       *string  `json:"key"`
	Payload   *string  `json:"payload"`
}

// TestInteropKcatConsumes: kcat reads certfleet events; their headers carry
// the CloudEvents attributes and their payloads validate against the
// published schemas, with nothing but the schema files and the record.
func TestInteropKcatConsumes(t *testing.T) {
	kcat := requireKcat(t)
	k := newKafkaEnv(t, 3)
	p := k.producer(t)
	evs := sampleEvents(t)[1:] // the outcome events
	if err := p.Publish(context.Background(), evs...); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, kcat, "-C", "-b", strings.Join(k.brokers, ","), "-t", k.topics.Events,
		"-o", "beginning", "-e", "-q", "-J").Output()
	if err != nil {
		t.Fatalf("kcat: %v", err)
	}
	schemas := compileSchemas(t)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(evs) {
		t.Fatalf("kcat printed %d records, want %d:\n%s", len(lines), len(evs), out)
	}
	for _, line := range lines {
		var r kcatRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("kcat output %q: %v", line, err)
		}
		h := map[string]string{}
		for i := 0; i+1 < len(r.Headers); i += 2 {
			h[r.Headers[i]] = r.Headers[i+1]
		}
		typ := Type(h["ce_type"])
		if h["ce_specversion"] != "1.0" || h["content-type"] != "application/json" || !typ.Valid() ||
			h["ce_dataschema"] != typ.SchemaURI() || h["ce_id"] == "" || h["ce_source"] == "" {
			t.Errorf("kcat saw headers %v", h)
			continue
		}
		if _, err := time.Parse(time.RFC3339, h["ce_time"]); err != nil {
			t.Errorf("ce_time %q: %v", h["ce_time"], err)
		}
		if r.Payload == nil || r.Key == nil {
			t.Fatalf("record without key or payload: %s", line)
		}
		if err := validateAgainst(t, schemas[typ], []byte(*r.Payload)); err != nil {
			t.Errorf("%s as read by kcat fails its schema: %v", typ, err)
		}
		var body struct {
			SANs []string `json:"sans"`
		}
		json.Unmarshal([]byte(*r.Payload), &body)
		if *r.Key != Identity(body.SANs) {
			t.Errorf("key %q is not the identity of %v", *r.Key, body.SANs)
		}
	}
}

// TestInteropKcatProduces: a request written by kcat with librdkafka's
// murmur2 partitioner decodes, and lands on the same partition as the Go
// producer puts the same key; several keys make agreement by chance
// unlikely (1 in 8^5).
func TestInteropKcatProduces(t *testing.T) {
	kcat := requireKcat(t)
	k := newKafkaEnv(t, 8)
	p := k.producer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 5
	var want []Event
	for i := 0; i < n; i++ {
		e := requestEvent(t, 100+i)
		want = append(want, e)
		m, err := Encode(e)
		if err != nil {
			t.Fatal(err)
		}
		args := []string{"-P", "-b", strings.Join(k.brokers, ","), "-t", k.topics.Requests, "-K", "\t",
			"-X", "partitioner=murmur2", "-X", "acks=all"}
		for _, h := range m.Headers {
			args = append(args, "-H", h.Key+"="+string(h.Value))
		}
		cmd := exec.CommandContext(ctx, kcat, args...)
		cmd.Stdin = bytes.NewReader(append(append(append(m.Key, '\t'), m.Value...), '\n'))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("kcat -P: %v\n%s", err, out)
		}
		if err := p.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	recs := k.readAll(t, k.topics.Requests, 2*n)
	parts := map[string][]int{} // event id -> partitions of its two copies
	for _, m := range recs {
		e, err := Decode(m)
		if err != nil {
			t.Fatalf("record from kcat or Go does not decode: %v", err)
		}
		parts[e.ID] = append(parts[e.ID], m.Partition)
	}
	for _, e := range want {
		ps := parts[e.ID]
		if len(ps) != 2 || ps[0] != ps[1] {
			t.Errorf("key %s: kcat and the Go producer used partitions %v", e.Key()[:12], ps)
		}
	}
}

// TestInteropCloudEventsSDK: the CloudEvents Go SDK's Kafka (sarama) binding
// reads a certfleet record as a valid binary-mode CloudEvent with the same
// attributes and data; and a record the SDK writes decodes here.
func TestInteropCloudEventsSDK(t *testing.T) {
	for _, e := range sampleEvents(t) {
		m, err := Encode(e)
		if err != nil {
			t.Fatal(err)
		}
		cm := &sarama.ConsumerMessage{Key: m.Key, Value: m.Value, Topic: "t"}
		for _, h := range m.Headers {
			cm.Headers = append(cm.Headers, &sarama.RecordHeader{Key: []byte(h.Key), Value: h.Value})
		}
		msg := kafka_sarama.NewMessageFromConsumerMessage(cm)
		if enc := msg.ReadEncoding(); enc != binding.EncodingBinary {
			t.Fatalf("%s: SDK sees encoding %v, want binary", e.Type(), enc)
		}
		ce, err := binding.ToEvent(context.Background(), msg)
		if err != nil {
			t.Fatalf("%s: SDK cannot read the record: %v", e.Type(), err)
		}
		if err := ce.Validate(); err != nil {
			t.Errorf("%s: SDK says invalid: %v", e.Type(), err)
		}
		if ce.SpecVersion() != "1.0" || ce.ID() != e.ID || ce.Type() != string(e.Type()) || ce.Source() != e.Source ||
			!ce.Time().Equal(e.Time) || ce.DataSchema() != e.Type().SchemaURI() || ce.DataContentType() != ContentType ||
			!bytes.Equal(ce.Data(), m.Value) {
			t.Errorf("%s: SDK read %s", e.Type(), ce.String())
		}

		// The other way: the SDK writes a binary-mode record from the event
		// it read; certfleet decodes it to the original.
		pm := &sarama.ProducerMessage{Topic: "t", Key: sarama.ByteEncoder(m.Key)}
		if err := kafka_sarama.WriteProducerMessage(context.Background(), binding.ToMessage(ce), pm); err != nil {
			t.Fatal(err)
		}
		back := kafka.Message{Key: m.Key}
		back.Value, _ = pm.Value.Encode()
		for _, h := range pm.Headers {
			back.Headers = append(back.Headers, kafka.Header{Key: string(h.Key), Value: h.Value})
		}
		got, err := Decode(back)
		if err != nil {
			t.Fatalf("%s: record written by the SDK does not decode: %v", e.Type(), err)
		}
		if got.ID != e.ID || !got.Time.Equal(e.Time) || got.Type() != e.Type() {
			t.Errorf("%s: SDK round trip gave %+v", e.Type(), got)
		}
	}
}
