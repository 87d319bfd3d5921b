package main

import (
	"context"
	"errors"
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

// request publishes one issuance request and, with --wait, prints the event
// that ends it. Exit status 0: published (and, with --wait, obtained); 1: the
// request failed or the wait timed out; 2: bad arguments.
func request(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("request", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var sans listFlag
	fs.Var(&sans, "san", "DNS name for the certificate; repeat or comma-separate (required)")
	tenant := fs.String("tenant", "", "tenant (selects the ACME account)")
	ca := fs.String("ca", envOr("CERTFLEET_CA", "letsencrypt"), "CA name configured on the workers (env CERTFLEET_CA)")
	profile := fs.String("profile", "", "ACME profile; empty: the worker's default")
	keyType := fs.String("key-type", string(events.KeyECDSAP256), "ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096")
	id := fs.String("request-id", "", "request id; default a new UUID (reuse one to retry idempotently)")
	wait := fs.Duration("wait", 0, "wait this long for the outcome event (0: do not wait)")
	asJSON := fs.Bool("json", false, "print the outcome as JSON")
	kf := addKafkaFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: request: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: request: unexpected argument %q", errUsage, fs.Arg(0))
	}
	brokers, err := kf.list("request")
	if err != nil {
		return err
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
	prod, err := events.NewProducer(events.ProducerConfig{Brokers: brokers, Topics: kf.topics})
	if err != nil {
		return fmt.Errorf("request: %w", err)
	}
	defer prod.Close()

	// Position on the events topic before publishing, so the outcome cannot
	// slip past between publishing and listening.
	var outcome chan events.Event
	wctx, cancel := context.WithTimeout(ctx, *wait+10*time.Second)
	defer cancel()
	if *wait > 0 {
		outcome, err = watchOutcome(wctx, brokers, kf.topics.Events, *id)
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
	case e := <-outcome:
		return printOutcome(stdout, e, *asJSON)
	case <-time.After(*wait):
		return fmt.Errorf("request %s: no outcome within %v; it may still be queued or deferred (run again with the same --request-id to keep waiting, or check 'certfleet dlq list')", *id, *wait)
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

// watchOutcome reads every partition of the events topic from its end and
// delivers the first event that ends requestID (obtained or failed).
func watchOutcome(ctx context.Context, brokers []string, topic, requestID string) (chan events.Event, error) {
	conn, err := kafka.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		return nil, fmt.Errorf("dialing Kafka: %w", err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		return nil, fmt.Errorf("partitions of %s: %w", topic, err)
	}
	out := make(chan events.Event, 1)
	var once sync.Once
	var ready sync.WaitGroup
	for _, p := range parts {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p.ID, MaxWait: 100 * time.Millisecond})
		if err := r.SetOffset(kafka.LastOffset); err != nil {
			r.Close()
			return nil, err
		}
		ready.Add(1)
		go func() {
			defer r.Close()
			ready.Done()
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					return
				}
				e, err := events.Decode(m)
				if err != nil {
					continue
				}
				switch d := e.Data.(type) {
				case *events.CertObtained:
					if d.RequestID == requestID {
						once.Do(func() { out <- e })
					}
				case *events.CertFailed:
					if d.RequestID == requestID && !d.Retryable {
						once.Do(func() { out <- e })
					}
				}
			}
		}()
	}
	ready.Wait()
	return out, nil
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
