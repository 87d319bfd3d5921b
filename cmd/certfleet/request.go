package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/envflag"
	"github.com/certfleet/certfleet/kafkaconn"
	"github.com/certfleet/certfleet/names"
)

// kafkaFlags are the flags of commands that talk to Kafka: the connection
// (kafkaconn's -kafka-* flags: brokers, TLS, SASL, timeout; each with its
// CERTFLEET_KAFKA_* fallback) and the topics. Parse them with parseEnvFlags.
type kafkaFlags struct {
	env    *envflag.Set
	conn   *kafkaconn.Config
	topics events.Topics
}

func addKafkaFlags(fs *flag.FlagSet) *kafkaFlags {
	env := envflag.New(fs, os.Getenv)
	k := &kafkaFlags{env: env, conn: kafkaconn.RegisterFlags(env)}
	def := events.DefaultTopics()
	env.String(&k.topics.Requests, "topic-requests", "CERTFLEET_TOPIC_REQUESTS", def.Requests, "issuance requests topic")
	env.String(&k.topics.Events, "topic-events", "CERTFLEET_TOPIC_EVENTS", def.Events, "certificate events topic")
	env.String(&k.topics.DLQ, "topic-dlq", "CERTFLEET_TOPIC_DLQ", def.DLQ, "dead-letter topic")
	return k
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// connect validates the connection flags and reads their files (an error is
// a usage error, exit status 2, naming the flag), then checks that the
// brokers answer and that topics are there for this principal: an untrusted
// certificate, a wrong password, a missing ACL or a silent broker end the
// command here, within -kafka-timeout, with the cause named.
func (k *kafkaFlags) connect(ctx context.Context, cmd string, topics ...string) (*kafkaconn.Connector, error) {
	c, err := kafkaconn.New(*k.conn)
	if err != nil {
		if strings.Contains(err.Error(), "-kafka-brokers: required") {
			return nil, fmt.Errorf("%w: %s: no Kafka brokers: set --kafka-brokers or CERTFLEET_KAFKA_BROKERS (with testenv: set -a; . ./.testenv/env; set +a)", errUsage, cmd)
		}
		return nil, fmt.Errorf("%w: %s: %v", errUsage, cmd, err)
	}
	if err := c.Check(ctx, topics...); err != nil {
		c.Close()
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	return c, nil
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
	if err := parseEnvFlags(fs, kf.env, args, stdout, stderr); err != nil {
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
	if *id == "" {
		*id = uuid.NewString()
	}
	req := &events.IssuanceRequest{RequestID: *id, SANs: canon, Tenant: *tenant, KeyType: events.KeyType(*keyType),
		CA: *ca, Profile: *profile, Reason: events.ReasonNew}
	ev, err := events.New("//certfleet/cli", time.Now(), req)
	if err != nil {
		return fmt.Errorf("%w: request: %v", errUsage, err)
	}
	watched := []string{kf.topics.Requests}
	if *wait > 0 {
		watched = append(watched, kf.topics.Events, kf.topics.DLQ)
	}
	conn, err := kf.connect(ctx, "request", watched...)
	if err != nil {
		return err
	}
	defer conn.Close()
	prod, err := events.NewProducer(events.ProducerConfig{Brokers: conn.Brokers(), Topics: kf.topics,
		Transport: conn.Transport(kf.topics.Requests), WriteTimeout: conn.Timeout()})
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
		outcome, err = watchOutcome(wctx, conn, kf.topics, *id)
		if err != nil {
			return fmt.Errorf("request: %w", err)
		}
	}
	pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
	defer pcancel()
	if err := prod.Publish(pctx, ev); err != nil {
		return fmt.Errorf("request: publishing: %w", conn.Explain(err, "write to topic "+kf.topics.Requests))
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

// watchOutcome follows the events and dead-letter topics from their
// current ends (events.Follow) and delivers the first record that ends
// requestID: cert_obtained, cert_failed that is not retryable, or the
// request itself dead-lettered. It reads through conn's dialer, so every
// call has a deadline (kafkaconn) and the connections close when ctx ends.
func watchOutcome(ctx context.Context, conn *kafkaconn.Connector, topics events.Topics, requestID string) (<-chan outcome, error) {
	msgs, err := events.Follow(ctx, conn.DialerContext(ctx), conn.Brokers(), topics.Events, topics.DLQ)
	if err != nil {
		return nil, conn.Explain(err, "read the ends of topics "+topics.Events+" and "+topics.DLQ)
	}
	out := make(chan outcome, 1)
	go func() {
		for m := range msgs {
			if o, ok := ends(m, m.Topic == topics.DLQ, requestID); ok {
				out <- o
				return
			}
		}
	}()
	return out, nil
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
