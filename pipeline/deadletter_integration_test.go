package pipeline_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
)

// issue 16: a producer's gzip-compressed record whose value is 1 MiB is
// accepted by the broker (compressed) but refused by the dead-letter topic
// uncompressed. The worker dead-letters it as a stub, and the valid request
// behind it on its partition is obtained and committed: the group's
// committed offset passes both.
func TestCompressedHugeRecordBecomesStub(t *testing.T) {
	st := newStack(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st.serveHTTP01(t)
	name := "www.stub-" + st.suffix + ".test"
	st.pointAt(t, ctx, name)
	valid := request("stub-next-"+st.suffix, name)
	key := []byte(events.Identity(valid.SANs))
	partition := (&kafka.Murmur2Balancer{Consistent: true}).Balance(kafka.Message{Key: key}, 0, 1, 2, 3)

	hostile := &kafka.Writer{Addr: kafka.TCP(st.s.KafkaBrokers...), Topic: st.topics.Requests, Compression: kafka.Gzip,
		Balancer: &kafka.Murmur2Balancer{Consistent: true}, RequiredAcks: kafka.RequireAll, BatchBytes: 4 << 20, BatchTimeout: 5 * time.Millisecond}
	defer hostile.Close()
	value := append([]byte(`{"request_id":"hostile-`+st.suffix+`","pad":"`), bytes.Repeat([]byte("a"), 1<<20)...)
	value = append(value, `"}`...)
	ev, err := events.New("//upstream/hostile", time.Now(), valid)
	if err != nil {
		t.Fatal(err)
	}
	ce, err := events.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	if err := hostile.WriteMessages(ctx, kafka.Message{Key: key, Value: value, Headers: ce.Headers}); err != nil {
		t.Fatalf("the broker refused the compressed record: %v", err)
	}
	st.publish(t, ctx, valid)

	group := "g-stub-" + st.suffix
	st.run(t, st.worker(t, "worker-stub"), group)

	client := &kafka.Client{Addr: kafka.TCP(st.s.KafkaBrokers...), Timeout: 10 * time.Second}
	var committed int64 = -1
	for ctx.Err() == nil {
		resp, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{st.topics.Requests: {partition}}})
		if err == nil && len(resp.Topics[st.topics.Requests]) == 1 {
			if committed = resp.Topics[st.topics.Requests][0].CommittedOffset; committed >= 2 {
				break
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if committed != 2 {
		t.Fatalf("partition %d committed offset %d, want 2: past the huge record and the request behind it", partition, committed)
	}
	evs := summarize(t, readAll(t, ctx, st.s.KafkaBrokers, st.topics.Events))
	if evs.obtained[valid.RequestID] == nil {
		t.Errorf("the request behind the huge record was not obtained")
	}
	dlq := readAll(t, ctx, st.s.KafkaBrokers, st.topics.DLQ)
	if len(dlq) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dlq))
	}
	d, _ := events.ReadDeadLetter(dlq[0])
	s, ok := events.ReadStub(dlq[0])
	if !ok || s.Cause != events.StubRefused || s.Size != len(value) || len(s.Prefix) != events.StubPrefixBytes ||
		d.Topic != st.topics.Requests || d.Partition != partition || d.Offset != 0 || !bytes.Equal(dlq[0].Key, key) {
		t.Fatalf("dead letter %+v, stub %+v: want a refused stub of the huge record", d, s)
	}
	t.Logf("stub: %q; refusal %q; %d bytes in the DLQ for a %d-byte value", d.Reason, s.Refusal, len(dlq[0].Value), s.Size)
}
