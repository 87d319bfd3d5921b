package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
)

// dlq list shows dead-lettered records; dlq replay sends them back to the
// topic they came from (after the cause was fixed, e.g. a CA was configured).
// Kafka topics are append-only: replayed records stay in the DLQ, and a
// record that is still bad is dead-lettered again with a new reason.
func dlq(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "replay") {
		return fmt.Errorf("%w: dlq: usage: certfleet dlq list [--max N] [--json] | certfleet dlq replay (--all | --record PARTITION:OFFSET ...)", errUsage)
	}
	sub := args[0]
	fs := flag.NewFlagSet("dlq "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	kf := addKafkaFlags(fs)
	max := fs.Int("max", 1000, "read at most this many records")
	asJSON := fs.Bool("json", false, "print JSON instead of a table (list)")
	all := fs.Bool("all", false, "replay every record (replay)")
	var records listFlag
	fs.Var(&records, "record", "replay the DLQ record PARTITION:OFFSET; repeat or comma-separate (replay)")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this long")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: dlq %s: %v", errUsage, sub, err)
	}
	brokers, err := kf.list("dlq " + sub)
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, r := range records {
		p, o, ok := strings.Cut(r, ":")
		if _, err1 := strconv.Atoi(p); !ok || err1 != nil {
			return fmt.Errorf("%w: dlq replay: --record %q: want PARTITION:OFFSET as listed by 'certfleet dlq list'", errUsage, r)
		}
		if _, err := strconv.ParseInt(o, 10, 64); err != nil {
			return fmt.Errorf("%w: dlq replay: --record %q: want PARTITION:OFFSET", errUsage, r)
		}
		want[r] = true
	}
	if sub == "replay" && !*all && len(want) == 0 {
		return fmt.Errorf("%w: dlq replay: say what to replay: --all or --record PARTITION:OFFSET", errUsage)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	msgs, err := events.ReadTopic(ctx, nil, brokers, kf.topics.DLQ, *max)
	if err != nil {
		return fmt.Errorf("dlq %s: %w", sub, err)
	}
	if sub == "list" {
		return dlqList(stdout, msgs, *asJSON)
	}
	var replay []kafka.Message
	for _, m := range msgs {
		d, ok := events.ReadDeadLetter(m)
		if !ok || (!*all && !want[fmt.Sprintf("%d:%d", m.Partition, m.Offset)]) {
			continue
		}
		replay = append(replay, kafka.Message{Topic: d.Topic, Key: m.Key, Value: m.Value, Headers: withoutDLQHeaders(m.Headers)})
	}
	if len(replay) == 0 {
		return fmt.Errorf("dlq replay: no matching records among %d read", len(msgs))
	}
	prod, err := events.NewProducer(events.ProducerConfig{Brokers: brokers, Topics: kf.topics})
	if err != nil {
		return fmt.Errorf("dlq replay: %w", err)
	}
	defer prod.Close()
	if err := prod.WriteMessages(ctx, replay...); err != nil {
		return fmt.Errorf("dlq replay: %w", err)
	}
	fmt.Fprintf(stdout, "replayed %d record(s) to their source topics\n", len(replay))
	return nil
}

func withoutDLQHeaders(hs []kafka.Header) []kafka.Header {
	var out []kafka.Header
	for _, h := range hs {
		if !strings.HasPrefix(h.Key, "certfleet_dlq_") {
			out = append(out, h)
		}
	}
	return out
}

type dlqRow struct {
	Record   string    `json:"record"` // PARTITION:OFFSET in the DLQ
	Source   string    `json:"source"` // topic/partition/offset it came from
	Reason   string    `json:"reason"`
	Attempts int       `json:"attempts"`
	Group    string    `json:"group"`
	Time     time.Time `json:"time"`
	Size     int       `json:"size"`
}

func dlqList(w io.Writer, msgs []kafka.Message, asJSON bool) error {
	rows := []dlqRow{}
	for _, m := range msgs {
		d, _ := events.ReadDeadLetter(m)
		rows = append(rows, dlqRow{Record: fmt.Sprintf("%d:%d", m.Partition, m.Offset), Source: fmt.Sprintf("%s/%d/%d", d.Topic, d.Partition, d.Offset),
			Reason: d.Reason, Attempts: d.Attempts, Group: d.Group, Time: d.Time, Size: len(m.Value)})
	}
	if asJSON {
		return writeJSON(w, rows)
	}
	out := [][]string{{"RECORD", "SOURCE", "TIME", "BYTES", "REASON"}}
	for _, r := range rows {
		reason := r.Reason
		if len(reason) > 100 {
			reason = reason[:100] + "..."
		}
		out = append(out, []string{r.Record, r.Source, fmtTime(r.Time), strconv.Itoa(r.Size), reason})
	}
	if err := table(w, out...); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d record(s)\n", len(rows))
	return nil
}
