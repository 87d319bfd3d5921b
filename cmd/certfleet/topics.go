package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/certfleet/certfleet/delivery"
	"github.com/certfleet/certfleet/events"
)

const topicsAbout = `Creates certfleet's topics if they are missing, with explicit partitions,
replication factor, min.insync.replicas and the retention of the retry and
dead-letter topics; an existing topic is left as it is (one with fewer
partitions than asked is an error). The five, and the key delivery topic
(compacted, kept 100 days) unless --topic-deliveries is empty. Run it once per cluster as a principal
that may create topics (the workers then need no CREATE right). Defaults are
production values (replication 3, min.insync.replicas 2); a single test
broker needs --replication-factor 1 --min-insync-replicas 1.`

// topics creates the topics ("topics create").
func topics(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const usage = "usage: certfleet topics create [flags]\n"
	if len(args) == 0 || isHelp(args[0]) {
		if len(args) == 0 {
			fmt.Fprint(stderr, usage)
			return fmt.Errorf("%w: topics: missing command (create)", errUsage)
		}
		fmt.Fprint(stdout, usage)
		return nil
	}
	if args[0] != "create" {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: topics: unknown command %q", errUsage, args[0])
	}
	fs := newFlagSet("topics create", "[flags]", topicsAbout)
	kf := addKafkaFlags(fs)
	def := events.DefaultTopics()
	kf.env.String(&kf.topics.Retry, "topic-retry", "CERTFLEET_TOPIC_RETRY", def.Retry, "deferred requests topic")
	kf.env.String(&kf.topics.RateLimitChanges, "topic-ratelimit-changes", "CERTFLEET_TOPIC_RATELIMIT_CHANGES", def.RateLimitChanges, "override change notifications topic")
	var deliveries string
	kf.env.String(&deliveries, "topic-deliveries", "CERTFLEET_TOPIC_DELIVERIES", delivery.DefaultTopic, "key delivery topic (for workers with -deliver-keys); empty: not created")
	opts := events.RegisterProvisionFlags(kf.env)
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	if err := parseEnvFlags(fs, kf.env, args[1:], stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: topics create: unexpected argument %q", errUsage, fs.Arg(0))
	}
	if err := opts.Validate(); err != nil {
		return fmt.Errorf("%w: topics create: %v", errUsage, err)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	conn, err := kf.connect(ctx, "topics create")
	if err != nil {
		return err
	}
	defer conn.Close()
	all, specs := kf.topics.All(), kf.topics.SpecsWith(*opts)
	if deliveries != "" {
		all, specs = append(all, deliveries), append(specs, delivery.TopicSpec(deliveries, *opts))
	}
	if err := events.Provision(ctx, conn.Client(all...), specs...); err != nil {
		return fmt.Errorf("topics create: %w", conn.Explain(err, "create topics "+strings.Join(all, ", ")))
	}
	fmt.Fprintf(stdout, "topics ready (created or already there): %s\npartitions %d, replication factor %d, min.insync.replicas %d, retry retention %v, DLQ retention %v\n",
		strings.Join(all, ", "), opts.Partitions, opts.ReplicationFactor, opts.MinInsyncReplicas, opts.RetryRetention, opts.DLQRetention)
	return nil
}
