package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
)

const dlqUsage = `usage: certfleet dlq <command> [flags]

commands:
  list     list dead-lettered records, oldest first  certfleet dlq list [--max N] [--json | --quiet]
  replay   send records back to their source topic   certfleet dlq replay (--all | --record PARTITION:OFFSET ...)

Kafka topics are append-only: replayed records stay in the DLQ, and a record
that is still bad is dead-lettered again with a new reason. Run
'certfleet dlq <command> -h' for its flags.
`

// dlq list shows dead-lettered records; dlq replay sends them back to the
// topic they came from (after the cause was fixed, e.g. a CA was configured).
func dlq(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, dlqUsage)
		return fmt.Errorf("%w: dlq: missing command (list, replay)", errUsage)
	}
	sub := args[0]
	if isHelp(sub) {
		fmt.Fprint(stdout, dlqUsage)
		return nil
	}
	if sub != "list" && sub != "replay" {
		fmt.Fprint(stderr, dlqUsage)
		return fmt.Errorf("%w: dlq: unknown command %q", errUsage, sub)
	}
	var fs *flag.FlagSet
	if sub == "list" {
		fs = newFlagSet("dlq list", "[--max N] [--json | --quiet] [flags]",
			"Lists dead-lettered records, oldest first: RECORD (PARTITION:OFFSET in the DLQ, for\n'certfleet dlq replay --record'), the source topic/partition/offset, the reason.")
	} else {
		fs = newFlagSet("dlq replay", "(--all | --record PARTITION:OFFSET ...) [flags]",
			"Sends dead-lettered records back to the topic they came from, unchanged but for\nthe certfleet_dlq_* headers. Fix the cause first: a record that is still bad\nis dead-lettered again.")
	}
	kf := addKafkaFlags(fs)
	max := fs.Int("max", 1000, "read at most this many records")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this long")
	var asJSON, quiet, all *bool
	var records listFlag
	if sub == "list" {
		asJSON = fs.Bool("json", false, "print JSON instead of a table")
		quiet = fs.Bool("quiet", false, "print only the RECORD column (PARTITION:OFFSET), one per line")
	} else {
		all = fs.Bool("all", false, "replay every record")
		fs.Var(&records, "record", "replay the DLQ record PARTITION:OFFSET; repeat or comma-separate")
	}
	if err := parseEnvFlags(fs, kf.env, args[1:], stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: dlq %s: unexpected argument %q", errUsage, sub, fs.Arg(0))
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
	if sub == "list" && *asJSON && *quiet {
		return fmt.Errorf("%w: dlq list: --json and --quiet exclude each other", errUsage)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	conn, err := kf.connect(ctx, "dlq "+sub, kf.topics.DLQ)
	if err != nil {
		return err
	}
	defer conn.Close()
	// The dialer's connections close when ctx ends (SIGINT, --timeout), and
	// each of their calls has -kafka-timeout.
	msgs, err := events.ReadTopic(ctx, conn.DialerContext(ctx), conn.Brokers(), kf.topics.DLQ, *max)
	if err != nil {
		return fmt.Errorf("dlq %s: %w", sub, conn.Explain(err, "read topic "+kf.topics.DLQ))
	}
	if sub == "list" {
		return dlqList(stdout, msgs, *asJSON, *quiet)
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
	var sources []string
	for _, m := range replay {
		sources = append(sources, m.Topic)
	}
	prod, err := events.NewProducer(events.ProducerConfig{Brokers: conn.Brokers(), Topics: kf.topics,
		Transport: conn.Transport(sources...), WriteTimeout: conn.Timeout()})
	if err != nil {
		return fmt.Errorf("dlq replay: %w", err)
	}
	defer prod.Close()
	if err := prod.WriteMessages(ctx, replay...); err != nil {
		return fmt.Errorf("dlq replay: %w", conn.Explain(err, "write to topic "+strings.Join(sortedSet(sources), ", ")))
	}
	fmt.Fprintf(stdout, "replayed %d record(s) to their source topics\n", len(replay))
	return nil
}

// sortedSet returns the distinct strings of in, sorted.
func sortedSet(in []string) []string {
	out := slices.Clone(in)
	slices.Sort(out)
	return slices.Compact(out)
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
	Record   string `json:"record"` // PARTITION:OFFSET in the DLQ
	Source   string `json:"source"` // topic/partition/offset it came from
	Reason   string `json:"reason"`
	Attempts int    `json:"attempts"`
	// Owner is who gave up, from the certfleet_dlq_group header: the
	// issuer-worker's -owner, or the consumer group of an events.Subscriber.
	Owner string    `json:"owner"`
	Time  time.Time `json:"time"`
	Size  int       `json:"size"`
}

func dlqList(w io.Writer, msgs []kafka.Message, asJSON, quiet bool) error {
	rows := []dlqRow{}
	for _, m := range msgs {
		d, _ := events.ReadDeadLetter(m)
		rows = append(rows, dlqRow{Record: fmt.Sprintf("%d:%d", m.Partition, m.Offset), Source: fmt.Sprintf("%s/%d/%d", d.Topic, d.Partition, d.Offset),
			Reason: d.Reason, Attempts: d.Attempts, Owner: d.Group, Time: d.Time, Size: len(m.Value)})
	}
	// Partitions are read one after the other; oldest first reads better.
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].Time.Before(rows[j].Time) })
	switch {
	case asJSON:
		return writeJSON(w, rows)
	case quiet:
		for _, r := range rows {
			fmt.Fprintln(w, r.Record)
		}
		return nil
	}
	out := [][]string{{"RECORD", "SOURCE", "TIME", "BYTES", "REASON"}}
	for _, r := range rows {
		out = append(out, []string{r.Record, r.Source, fmtTime(r.Time), strconv.Itoa(r.Size), events.Sanitize(r.Reason, 100)})
	}
	if err := table(w, out...); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d record(s)\n", len(rows))
	return nil
}
