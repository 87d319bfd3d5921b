package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/audit"
	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/dlqreplay"
	"github.com/certfleet/certfleet/kafkaconn"
)

const dlqUsage = `usage: certfleet dlq <command> [flags]

commands:
  list     list dead-lettered records with their cause, by partition and offset
           certfleet dlq list [--max N] [--json | --quiet]
  replay   send issuance requests back to the requests or retry topic they came from
           certfleet dlq replay (--all | --record PARTITION:OFFSET ...)

Replay sends a record only when it still decodes as an issuance request, only to
the requests or retry topic (never to whatever topic its headers name), with its
key, value and ce_* and content-type headers, and each DLQ record at most once:
what was replayed is remembered in the database (table dlq_replays), so --all
run again sends nothing new. Stubs (records the DLQ could not keep whole) are
never replayed. Kafka topics are append-only: replayed records stay in the DLQ,
and a record that is still bad is dead-lettered again, as a new DLQ record.
Run 'certfleet dlq <command> -h' for its flags.
`

const dlqReplayAbout = `Sends dead-lettered issuance requests back to the topic they came from, which
must be the requests or the retry topic (--topic-requests, --topic-retry), after
decoding each again: a record that does not decode, is not an issuance request,
is a stub, or came from another topic is refused with the reason. It writes the
key, the value and the ce_* and content-type headers only. Each DLQ record is
replayed at most once: replays are recorded in the database (table dlq_replays;
run 'certfleet migrate' first), so --all skips what an earlier replay sent. Fix
the cause first: a record that is still bad is dead-lettered again, as a new
DLQ record. Exit status 1 when a record named with --record is not replayed.`

// dlq list shows dead-lettered records; dlq replay sends requests back to
// the topic they came from (after the cause was fixed, e.g. a CA was
// configured).
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
			"Lists dead-lettered records in partition and offset order: RECORD (PARTITION:OFFSET in\nthe DLQ, for 'certfleet dlq replay --record') and the cause, then where the record\ncame from (topic/partition/offset), when, its size, who gave up and after how\nmany attempts. A stub (the DLQ could not keep the record whole) says so.")
	} else {
		fs = newFlagSet("dlq replay", "(--all | --record PARTITION:OFFSET ...) [flags]", dlqReplayAbout)
	}
	kf := addKafkaFlags(fs)
	max := fs.Int("max", 1000, "read at most this many records")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this long")
	var asJSON, quiet, all *bool
	var records listFlag
	var dbURL *string
	var dbInsecure *bool
	if sub == "list" {
		asJSON = fs.Bool("json", false, "print JSON instead of text")
		quiet = fs.Bool("quiet", false, "print only the RECORD column (PARTITION:OFFSET), one per line")
	} else {
		all = fs.Bool("all", false, "replay every record not replayed before")
		fs.Var(&records, "record", "replay the DLQ record PARTITION:OFFSET; repeat or comma-separate")
		kf.env.String(&kf.topics.Retry, "topic-retry", "CERTFLEET_TOPIC_RETRY", events.DefaultTopics().Retry, "deferred requests topic (a replay destination)")
		dbURL, dbInsecure = addDatabaseFlags(fs)
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
	if sub == "replay" {
		if *dbURL == "" {
			return fmt.Errorf("%w: dlq replay: no database: replay records what it sends (table dlq_replays) so nothing is sent twice; set --database-url or CERTFLEET_DATABASE_URL (with testenv: set -a; . ./.testenv/env; set +a)", errUsage)
		}
		if err := (db.Config{URL: *dbURL, Insecure: *dbInsecure}).Check(); err != nil {
			return fmt.Errorf("%w: dlq replay: --database-url: %v", errUsage, err)
		}
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
	sortByPosition(msgs)
	if sub == "list" {
		return dlqList(stdout, msgs, *asJSON, *quiet)
	}

	// Decide what may be sent before touching the database or writing.
	var cands []replayCandidate
	found := map[string]bool{}
	for _, m := range msgs {
		rec := position(m)
		if !*all && !want[rec] {
			continue
		}
		found[rec] = true
		cands = append(cands, checkReplay(m, kf.topics))
	}
	for r := range want {
		if !found[r] {
			p, o, _ := strings.Cut(r, ":")
			pi, _ := strconv.ParseInt(p, 10, 64)
			oi, _ := strconv.ParseInt(o, 10, 64)
			cands = append(cands, replayCandidate{record: r, partOff: [2]int64{pi, oi},
				refusal: fmt.Sprintf("not in %s among the %d records read (--max)", kf.topics.DLQ, len(msgs))})
		}
	}
	d, err := db.Open(ctx, db.Config{URL: *dbURL, Insecure: *dbInsecure})
	if err != nil {
		return fmt.Errorf("dlq replay: %w", err)
	}
	defer d.Close()
	return dlqReplay(ctx, stdout, stderr, conn, d, dlqreplay.New(d), kf.topics.DLQ, cands, *all, *timeout)
}

// replayCandidate is a DLQ record selected for replay: the record to send,
// or why it is refused.
type replayCandidate struct {
	record   string // PARTITION:OFFSET in the DLQ
	msg      kafka.Message
	partOff  [2]int64
	eventID  string
	refusal  string
	previous string // an earlier replay holds it
}

// position is a record's PARTITION:OFFSET in its topic.
func position(m kafka.Message) string { return fmt.Sprintf("%d:%d", m.Partition, m.Offset) }

func sortByPosition(msgs []kafka.Message) {
	sort.SliceStable(msgs, func(i, j int) bool {
		if msgs[i].Partition != msgs[j].Partition {
			return msgs[i].Partition < msgs[j].Partition
		}
		return msgs[i].Offset < msgs[j].Offset
	})
}

// checkReplay decides whether the dead letter m may be replayed: it must
// carry the dead-letter headers, not be a stub, come from the requests or
// retry topic, and decode (with only the headers a replay copies) as an
// issuance request. The record to send goes to that topic.
func checkReplay(m kafka.Message, topics events.Topics) replayCandidate {
	c := replayCandidate{record: position(m), partOff: [2]int64{int64(m.Partition), m.Offset}}
	d, ok := events.ReadDeadLetter(m)
	switch {
	case !ok:
		c.refusal = "not a dead letter (no " + events.HeaderDLQReason + " header)"
		return c
	case d.Stub != "":
		c.refusal = fmt.Sprintf("a stub (%s): the DLQ kept hashes and a prefix, not the record", d.Stub)
		return c
	case d.Topic != topics.Requests && d.Topic != topics.Retry:
		c.refusal = fmt.Sprintf("it came from topic %q, not the requests (%s) or retry (%s) topic; replay sends only there", d.Topic, topics.Requests, topics.Retry)
		return c
	}
	out := kafka.Message{Topic: d.Topic, Key: m.Key, Value: m.Value, Headers: replayHeaders(m.Headers)}
	ev, err := events.Decode(out)
	if err != nil {
		c.refusal = "it still does not decode: " + err.Error()
		return c
	}
	if ev.Type() != events.TypeIssuanceRequested {
		c.refusal = fmt.Sprintf("a %s event; only %s records are replayed", ev.Type(), events.TypeIssuanceRequested)
		return c
	}
	c.msg, c.eventID = out, ev.ID
	return c
}

// replayHeaders are the headers a replay copies back: ce_* and content-type.
func replayHeaders(hs []kafka.Header) []kafka.Header {
	var out []kafka.Header
	for _, h := range hs {
		if strings.HasPrefix(h.Key, "ce_") || h.Key == "content-type" {
			out = append(out, h)
		}
	}
	return out
}

// dlqReplay claims each replayable candidate in the ledger, writes the
// claimed ones to their topics in one write, and marks them sent (or
// forgets the claims when the write failed).
func dlqReplay(ctx context.Context, stdout, stderr io.Writer, conn *kafkaconn.Connector, d *db.DB, ledger *dlqreplay.Ledger,
	dlqTopic string, cands []replayCandidate, all bool, timeout time.Duration) error {
	slices.SortStableFunc(cands, func(a, b replayCandidate) int {
		if c := cmp.Compare(a.partOff[0], b.partOff[0]); c != 0 {
			return c
		}
		return cmp.Compare(a.partOff[1], b.partOff[1])
	})
	run := dlqreplay.NewRun(operatorName())
	now := time.Now()
	var send []kafka.Message
	var sent []replayCandidate
	var auditErr error // the records were sent but the trail lacks one
	for i, c := range cands {
		if c.refusal != "" {
			continue
		}
		ok, prev, err := ledger.Claim(ctx, run, dlqreplay.Record{DLQTopic: dlqTopic, Partition: int(c.partOff[0]), Offset: c.partOff[1],
			Destination: c.msg.Topic, EventID: c.eventID, ValueSHA256: hexSHA256(c.msg.Value)}, now, now.Add(timeout+time.Minute))
		if err != nil {
			_ = forget(ctx, ledger, run)
			return fmt.Errorf("dlq replay: %w", err)
		}
		if !ok {
			if prev.Sent {
				cands[i].previous = fmt.Sprintf("already replayed to %s at %s by %s", prev.Destination, fmtTime(prev.At), prev.By)
			} else {
				cands[i].previous = fmt.Sprintf("being replayed by %s since %s (not confirmed sent; the claim expires on its own)", prev.By, fmtTime(prev.At))
			}
			continue
		}
		send = append(send, c.msg)
		sent = append(sent, c)
	}
	if len(send) > 0 {
		var dests []string
		for _, m := range send {
			dests = append(dests, m.Topic)
		}
		dests = sortedSet(dests)
		prod, err := events.NewProducer(events.ProducerConfig{Brokers: conn.Brokers(), Transport: conn.Transport(dests...), WriteTimeout: conn.Timeout()})
		if err != nil {
			_ = forget(ctx, ledger, run)
			return fmt.Errorf("dlq replay: %w", err)
		}
		err = prod.WriteMessages(ctx, send...)
		prod.Close()
		if err != nil {
			if ferr := forget(ctx, ledger, run); ferr != nil {
				fmt.Fprintf(stderr, "certfleet: dlq replay: %v\n", ferr)
			}
			return fmt.Errorf("dlq replay: nothing replayed: %w", conn.Explain(err, "write to topic "+strings.Join(dests, ", ")))
		}
		if err := ledger.Sent(context.WithoutCancel(ctx), run, time.Now()); err != nil {
			// Written but not marked: the claims hold them until they expire.
			fmt.Fprintf(stderr, "certfleet: dlq replay: the records were written, but marking them sent failed: %v\n", err)
		}
		// One audit event per record sent, even after ctx ended: they were.
		for _, c := range sent {
			if err := recordAudit(context.WithoutCancel(ctx), d, audit.Event{Action: audit.DLQReplay, Subject: dlqTopic + "/" + c.record,
				Detail: map[string]string{"destination": c.msg.Topic, "event_id": c.eventID, "replay_id": run.ID.String()}}); err != nil && auditErr == nil {
				auditErr = fmt.Errorf("dlq replay: %w", err)
			}
		}
	}
	// The report: what was sent, then what was not and why.
	if len(sent) > 0 {
		fmt.Fprintf(stdout, "replayed %d record(s):\n", len(sent))
		for _, c := range sent {
			fmt.Fprintf(stdout, "  %s -> %s (event %s)\n", c.record, events.Sanitize(c.msg.Topic, 255), events.Sanitize(c.eventID, 128))
		}
	}
	var skipped, refused int
	for _, c := range cands {
		switch {
		case c.previous != "":
			skipped++
			fmt.Fprintf(stdout, "skipped %s: %s\n", c.record, events.Sanitize(c.previous, 1024))
		case c.refusal != "":
			refused++
			fmt.Fprintf(stdout, "refused %s: %s\n", c.record, events.Sanitize(c.refusal, 1024))
		}
	}
	if len(sent) == 0 {
		fmt.Fprintf(stdout, "nothing new to replay: %d already replayed, %d refused\n", skipped, refused)
	}
	if auditErr != nil {
		return auditErr
	}
	if !all && skipped+refused > 0 {
		return fmt.Errorf("dlq replay: %d of the %d named record(s) not replayed (see above)", skipped+refused, len(cands))
	}
	return nil
}

// forget drops run's unsent claims, even after ctx ended.
func forget(ctx context.Context, ledger *dlqreplay.Ledger, run dlqreplay.Run) error {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return ledger.Forget(fctx, run)
}

// operatorName is who runs the replay, for the ledger: user@host.
func operatorName() string { return events.Sanitize(audit.OSUser(), 255) }

func hexSHA256(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// sortedSet returns the distinct strings of in, sorted.
func sortedSet(in []string) []string {
	out := slices.Clone(in)
	slices.Sort(out)
	return slices.Compact(out)
}

type dlqRow struct {
	Record   string `json:"record"` // PARTITION:OFFSET in the DLQ
	Reason   string `json:"reason"`
	Source   string `json:"source"` // topic/partition/offset it came from
	Attempts int    `json:"attempts"`
	// Owner is who gave up, from the certfleet_dlq_group header: the
	// issuer-worker's -owner, or the consumer group of an events.Subscriber.
	Owner string    `json:"owner"`
	Time  time.Time `json:"time"`
	Size  int       `json:"size"`
	// Stub is the cause when the DLQ holds a stub instead of the record
	// (refused, private_key); Size is then the original value's.
	Stub string `json:"stub,omitempty"`
}

// dlqList prints msgs (in partition and offset order) with every text from
// their headers sanitised (events.Sanitize): the reason in full, first.
func dlqList(w io.Writer, msgs []kafka.Message, asJSON, quiet bool) error {
	rows := []dlqRow{}
	for _, m := range msgs {
		d, _ := events.ReadDeadLetter(m)
		size := len(m.Value)
		if s, ok := events.ReadStub(m); ok && s.Size > 0 {
			size = s.Size
		}
		rows = append(rows, dlqRow{Record: position(m),
			Reason: events.Sanitize(d.Reason, 1024), Source: events.Sanitize(fmt.Sprintf("%s/%d/%d", d.Topic, d.Partition, d.Offset), 300),
			Attempts: d.Attempts, Owner: events.Sanitize(d.Group, 255), Time: d.Time, Size: size, Stub: events.Sanitize(d.Stub, 64)})
	}
	switch {
	case asJSON:
		return writeJSON(w, rows)
	case quiet:
		for _, r := range rows {
			fmt.Fprintln(w, r.Record)
		}
		return nil
	}
	for _, r := range rows {
		reason := r.Reason
		if reason == "" {
			reason = "(no reason: not a dead letter)"
		}
		if r.Stub != "" {
			reason = "[stub: " + r.Stub + "] " + reason
		}
		owner := r.Owner
		if owner == "" {
			owner = "-"
		}
		fmt.Fprintf(w, "%s  %s\n", r.Record, reason)
		fmt.Fprintf(w, "%s  from %s at %s, %d bytes, by %s after %d attempt(s)\n", strings.Repeat(" ", len(r.Record)), r.Source, fmtTime(r.Time), r.Size, owner, r.Attempts)
	}
	fmt.Fprintf(w, "%d record(s)\n", len(rows))
	return nil
}
