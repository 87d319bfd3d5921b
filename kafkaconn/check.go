package kafkaconn

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/segmentio/kafka-go"
)

// Check asks every bootstrap broker at once for the metadata of topics
// (none: the cluster only) and returns nil as soon as one answers with
// every topic described. Otherwise it returns the causes, each naming its
// broker: an untrusted certificate, a failed SASL authentication, a missing
// ACL on a topic, a broker that does not answer within Timeout. It takes at
// most Timeout (or ctx's deadline, when sooner). Binaries call it at start,
// so a wrong password or CA ends the process with a clear error instead of
// an endless retry loop inside kafka-go.
func (c *Connector) Check(ctx context.Context, topics ...string) error {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout())
	defer cancel()
	// A Transport of its own: a failed check leaves nothing in the pool the
	// clients use.
	tr := c.newTransport(topics)
	defer tr.CloseIdleConnections()
	errs := make([]error, len(c.cfg.Brokers))
	var wg sync.WaitGroup
	ok := make(chan struct{}, len(c.cfg.Brokers))
	for i, b := range c.cfg.Brokers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &kafka.Client{Addr: kafka.TCP(b), Timeout: c.Timeout(), Transport: tr}
			if errs[i] = c.checkBroker(ctx, client, b, topics); errs[i] == nil {
				ok <- struct{}{}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-ok:
		return nil
	case <-done:
	}
	select {
	case <-ok:
		return nil
	default:
	}
	if err := ctx.Err(); errors.Is(err, context.Canceled) {
		return err
	}
	// Topic and ACL errors come back alike from every broker: say them once.
	var first *Error
	same := true
	for _, err := range errs {
		var e *Error
		if !errors.As(err, &e) || (first != nil && (e.Kind != first.Kind || e.Msg != first.Msg)) {
			same = false
			break
		}
		if first == nil {
			first = e
		}
	}
	if same && first != nil && len(errs) > 1 {
		return &Error{Broker: first.Broker, Kind: first.Kind, Msg: fmt.Sprintf("%s (every bootstrap broker says so)", first.Msg), Err: first.Err}
	}
	return errors.Join(errs...)
}

func (c *Connector) checkBroker(ctx context.Context, client *kafka.Client, broker string, topics []string) error {
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
	if err != nil {
		return c.explain(broker, err, "describe the cluster")
	}
	var errs []error
	for _, t := range md.Topics {
		if t.Error != nil {
			errs = append(errs, c.explain(broker, t.Error, "describe topic "+t.Name))
		}
	}
	return errors.Join(errs...)
}

// Partitions returns the partitions of topic, sorted by id, from a metadata
// request bounded by Timeout and ctx: unlike kafka.Conn.ReadPartitions it
// cannot block for ever, and unlike kafka.Dialer.LookupPartitions it gives
// up when the broker does not answer instead of retrying until ctx ends.
func (c *Connector) Partitions(ctx context.Context, topic string) ([]kafka.Partition, error) {
	md, err := c.Client(topic).Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, c.Explain(err, "describe topic "+topic)
	}
	for _, t := range md.Topics {
		if t.Name != topic {
			continue
		}
		if t.Error != nil {
			return nil, c.Explain(t.Error, "describe topic "+topic)
		}
		parts := append([]kafka.Partition(nil), t.Partitions...)
		sort.Slice(parts, func(i, j int) bool { return parts[i].ID < parts[j].ID })
		return parts, nil
	}
	return nil, c.Explain(kafka.UnknownTopicOrPartition, "describe topic "+topic)
}

// Offsets is one partition's first offset and the offset the next record
// will get (its end).
type Offsets struct{ First, End int64 }

// Offsets returns the first and end offsets of every partition of topic,
// by partition id, bounded by Timeout and ctx.
func (c *Connector) Offsets(ctx context.Context, topic string) (map[int]Offsets, error) {
	parts, err := c.Partitions(ctx, topic)
	if err != nil {
		return nil, err
	}
	var reqs []kafka.OffsetRequest
	for _, p := range parts {
		reqs = append(reqs, kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
	}
	resp, err := c.Client(topic).ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, c.Explain(err, "read the offsets of topic "+topic)
	}
	out := map[int]Offsets{}
	for _, po := range resp.Topics[topic] {
		if po.Error != nil {
			return nil, c.Explain(po.Error, fmt.Sprintf("read the offsets of %s/%d", topic, po.Partition))
		}
		o := out[po.Partition]
		if po.FirstOffset >= 0 {
			o.First = po.FirstOffset
		}
		if po.LastOffset >= 0 {
			o.End = po.LastOffset
		}
		out[po.Partition] = o
	}
	if len(out) != len(parts) {
		return nil, c.Explain(fmt.Errorf("offsets of %d of %d partitions returned", len(out), len(parts)), "read the offsets of topic "+topic)
	}
	return out, nil
}
