package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/names"
)

// kafkaFlags are the flags of commands that talk to Kafka.
type kafkaFlags struct {
	brokers *string
	topics  events.Topics
}

func addKafkaFlags(fs *flag.FlagSet) *kafkaFlags {
	k := &kafkaFlags{brokers: fs.String("brokers", os.Getenv("CERTFLEET_KAFKA_BROKERS"), "Kafka brokers, comma separated (env CERTFLEET_KAFKA_BROKERS)")}
	def := events.DefaultTopics()
	fs.StringVar(&k.topics.Requests, "topic-requests", envOr("CERTFLEET_TOPIC_REQUESTS", def.Requests), "issuance requests topic")
	fs.StringVar(&k.topics.Events, "topic-events", envOr("CERTFLEET_TOPIC_EVENTS", def.Events), "certificate events topic")
	fs.StringVar(&k.topics.DLQ, "topic-dlq", envOr("CERTFLEET_TOPIC_DLQ", def.DLQ), "dead-letter topic")
	return k
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func (k *kafkaFlags) list(cmd string) ([]string, error) {
	var out []string
	for _, b := range strings.Split(*k.brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s: no Kafka brokers: set --brokers or CERTFLEET_KAFKA_BROKERS (with testenv: set -a; . ./.testenv/env; set +a)", errUsage, cmd)
	}
	return out, nil
}

const requestAbout = `Publishes one issuance request to the requests topic. With --wait, waits for
what ends it: cert_obtained (exit 0); cert_failed, or the request's record in
the dead-letter topic, as a worker dead-letters a request it can never serve
(an unknown CA, invalid data) (exit 1, with the reason, at once); or the end
of --wait (exit 1). --ca names a CA configured on the workers (their -ca
NAME=URL); --profile empty leaves the profile to the worker's -profile.`

// request publishes one issuance request and, with --wait, prints what ends
// it. Exit status 0: published (and, with --wait, obtained); 1: the request
// failed, was dead-lettered, or the wait timed out; 2: bad arguments.
func request(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("request", "--san NAME [--san NAME ...] [flags]", requestAbout)
	var sans listFlag
	fs.Var(&sans, "san", "DNS name for the certificate; repeat or comma-separate (required)")
	tenant := fs.String("tenant", "", "tenant the certificate belongs to; selects the ACME account (required)")
	ca := fs.String("ca", envOr("CERTFLEET_CA", "letsencrypt"), "CA name configured on the workers, as in their -ca NAME=URL (env CERTFLEET_CA)")
	profile := fs.String("profile", "", "ACME profile; empty: the worker's -profile")
	keyType := fs.String("key-type", string(events.KeyECDSAP256), "ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096")
	id := fs.String("request-id", "", "request id; default a new UUID (reuse one to retry idempotently)")
	wait := fs.Duration("wait", 0, "wait this long for the outcome, e.g. 2m (0: do not wait)")
	asJSON := fs.Bool("json", false, "print the outcome as JSON")
	kf := addKafkaFlags(fs)
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: request: unexpected argument %q", errUsage, fs.Arg(0))
	}
	if len(sans) == 0 {
		return fmt.Errorf("%w: request: --san is required: the certificate's DNS names (repeat --san, or comma-separate)", errUsage)
	}
	if *tenant == "" {
		return fmt.Errorf("%w: request: --tenant is required: the tenant the certificate belongs to (it selects the ACME account)", errUsage)
	}
	if *wait < 0 {
		return fmt.Errorf("%w: request: --wait %v: want a positive duration such as 2m, or 0 not to wait", errUsage, *wait)
	}
	canon, err := normalizeAll(sans)
	if err == nil {
		err = names.ValidateList(canon, events.MaxSANs)
	}
	if err != nil {
		return fmt.Errorf("%w: request: --san: %v", errUsage, err)
	}
	brokers, err := kf.list("request")
	if err != nil {
		return err
	}
	if *id == "" {
		*id = uuid.NewString()
	}
	req := &events.IssuanceRequest{RequestID: *id, SANs: canon, Tenant: *tenant, KeyType: events.KeyType(*keyType),
		CA: *ca, Profile: *profile, Reason: events.ReasonNew}
	ev, err := events.New("//certfleet/cli", time.Now(), req)
	if err != nil {
		return fmt.Errorf("%w: request: %v", errUsage, err)
	}
	prod, err := events.NewProducer(events.ProducerConfig{Brokers: brokers, Topics: kf.topics})
	if err != nil {
		return fmt.Errorf("request: %w", err)
	}
	defer prod.Close()

	// Position on the events and dead-letter topics before publishing, so
	// the outcome cannot slip past between publishing and listening.
	var outcome <-chan outcome
	wctx, cancel := context.WithTimeout(ctx, *wait+10*time.Second)
	defer cancel()
	if *wait > 0 {
		outcome, err = watchOutcome(wctx, brokers, kf.topics, *id)
		if err != nil {
			return fmt.Errorf("request: %w", err)
		}
	}
	pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
	defer pcancel()
	if err := prod.Publish(pctx, ev); err != nil {
		return fmt.Errorf("request: publishing to %s: %w", kf.topics.Requests, err)
	}
	if *wait == 0 {
		fmt.Fprintf(stdout, "published request %s for %s\n", *id, strings.Join(canon, ", "))
		return nil
	}
	select {
	case o := <-outcome:
		if o.dead != nil {
			return printDeadLettered(stdout, *id, kf.topics.DLQ, o.dead, *asJSON)
		}
		return printOutcome(stdout, *o.event, *asJSON)
	case <-time.After(*wait):
		return fmt.Errorf("request %s: no outcome within %v; it may still be queued (is a worker running for CA %q?) or deferred by a rate limit (run again with the same --request-id to keep waiting, or check 'certfleet dlq list')", *id, *wait, *ca)
	case <-ctx.Done():
		return fmt.Errorf("request %s: %w", *id, ctx.Err())
	}
}

func normalizeAll(in []string) ([]string, error) {
	out := make([]string, 0, len(in))
	for _, s := range in {
		n, err := names.Normalize(s)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

// outcome is what ends a request: an event (obtained, or failed for good)
// or its record in the dead-letter topic.
type outcome struct {
	event *events.Event
	dead  *deadLettered
}

type deadLettered struct {
	record string // PARTITION:OFFSET in the dead-letter topic
	events.DeadLetter
}

// watchOutcome reads every partition of the events and dead-letter topics
// from their current ends and delivers the first record that ends
// requestID: cert_obtained, cert_failed that is not retryable, or the
// request itself dead-lettered.
func watchOutcome(ctx context.Context, brokers []string, topics events.Topics, requestID string) (<-chan outcome, error) {
	out := make(chan outcome, 1)
	var once sync.Once
	deliver := func(o outcome) { once.Do(func() { out <- o }) }
	var readers []*kafka.Reader
	for _, topic := range []string{topics.Events, topics.DLQ} {
		rs, err := tailReaders(ctx, brokers, topic)
		readers = append(readers, rs...)
		if err != nil {
			for _, r := range readers {
				r.Close()
			}
			return nil, err
		}
	}
	for _, r := range readers {
		dlq := r.Config().Topic == topics.DLQ
		go func() {
			defer r.Close()
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					return
				}
				if o, ok := ends(m, dlq, requestID); ok {
					deliver(o)
				}
			}
		}()
	}
	return out, nil
}

// tailReaders returns a reader per partition of topic, each at the
// partition's current end (resolved now, not when the reader first fetches).
func tailReaders(ctx context.Context, brokers []string, topic string) ([]*kafka.Reader, error) {
	conn, err := kafka.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		return nil, fmt.Errorf("dialing Kafka: %w", err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		return nil, fmt.Errorf("partitions of %s: %w", topic, err)
	}
	var rs []*kafka.Reader
	for _, p := range parts {
		pc, err := kafka.DefaultDialer.DialLeader(ctx, "tcp", brokers[0], topic, p.ID)
		if err != nil {
			return rs, fmt.Errorf("leader of %s/%d: %w", topic, p.ID, err)
		}
		last, err := pc.ReadLastOffset()
		pc.Close()
		if err != nil {
			return rs, fmt.Errorf("end of %s/%d: %w", topic, p.ID, err)
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p.ID, MaxWait: 100 * time.Millisecond})
		rs = append(rs, r)
		if err := r.SetOffset(last); err != nil {
			return rs, err
		}
	}
	return rs, nil
}

// ends reports whether m, read from the events topic or (dlq) the
// dead-letter topic, ends requestID.
func ends(m kafka.Message, dlq bool, requestID string) (outcome, bool) {
	e, err := events.Decode(m)
	if err != nil {
		return outcome{}, false
	}
	switch d := e.Data.(type) {
	case *events.IssuanceRequest:
		if dlq && d.RequestID == requestID {
			dl, _ := events.ReadDeadLetter(m)
			return outcome{dead: &deadLettered{record: fmt.Sprintf("%d:%d", m.Partition, m.Offset), DeadLetter: dl}}, true
		}
	case *events.CertObtained:
		if !dlq && d.RequestID == requestID {
			return outcome{event: &e}, true
		}
	case *events.CertFailed:
		if !dlq && d.RequestID == requestID && !d.Retryable {
			return outcome{event: &e}, true
		}
	}
	return outcome{}, false
}

// printDeadLettered reports a dead-lettered request and returns the error
// that makes the exit status 1.
func printDeadLettered(w io.Writer, requestID, topic string, d *deadLettered, asJSON bool) error {
	replay := "certfleet dlq replay --record " + d.record
	if asJSON {
		if err := writeJSON(w, map[string]any{"type": "dead_lettered", "request_id": requestID, "topic": topic, "record": d.record,
			"reason": d.Reason, "owner": d.Group, "time": d.Time.UTC()}); err != nil {
			return err
		}
	} else {
		_ = table(w, []string{"request", requestID}, []string{"outcome", "dead-lettered"}, []string{"reason", d.Reason},
			[]string{"record", d.record + " in " + topic}, []string{"by", d.Group}, []string{"replay", replay + " (after fixing the cause)"})
	}
	return fmt.Errorf("request %s was dead-lettered: %s", requestID, d.Reason)
}

func printOutcome(w io.Writer, e events.Event, asJSON bool) error {
	if asJSON {
		if err := writeJSON(w, map[string]any{"type": e.Type(), "id": e.ID, "data": e.Data}); err != nil {
			return err
		}
	}
	switch d := e.Data.(type) {
	case *events.CertObtained:
		if !asJSON {
			_ = table(w, []string{"request", d.RequestID}, []string{"outcome", "obtained"}, []string{"sans", strings.Join(d.SANs, ", ")},
				[]string{"serial", d.Serial}, []string{"not after", fmtTime(d.NotAfter)}, []string{"attempts", fmt.Sprint(d.Attempts)})
		}
		return nil
	case *events.CertFailed:
		if !asJSON {
			_ = table(w, []string{"request", d.RequestID}, []string{"outcome", "failed"}, []string{"problem", d.ProblemType}, []string{"detail", d.Detail})
		}
		return fmt.Errorf("request %s failed: %s", d.RequestID, d.ProblemType)
	}
	return nil
}
