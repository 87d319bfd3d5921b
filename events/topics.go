package events

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
)

// Topics names certfleet's Kafka topics. The zero value of a field means its
// default (docs/contracts.md, "Kafka topics and records").
type Topics struct {
	Requests         string // issuance requests; default "certfleet.issuance.requests"
	Retry            string // deferred requests; default "certfleet.issuance.retry"
	DLQ              string // dead letters; default "certfleet.issuance.dlq"
	Events           string // certificate events; default "certfleet.certificates.events"
	RateLimitChanges string // override invalidations; default "certfleet.ratelimit.changes"
}

// DefaultTopics returns the default topic names.
func DefaultTopics() Topics {
	return Topics{
		Requests:         "certfleet.issuance.requests",
		Retry:            "certfleet.issuance.retry",
		DLQ:              "certfleet.issuance.dlq",
		Events:           "certfleet.certificates.events",
		RateLimitChanges: "certfleet.ratelimit.changes",
	}
}

// WithDefaults returns t with every empty name set to its default.
func (t Topics) WithDefaults() Topics {
	d := DefaultTopics()
	for _, f := range []struct{ v, d *string }{
		{&t.Requests, &d.Requests}, {&t.Retry, &d.Retry}, {&t.DLQ, &d.DLQ},
		{&t.Events, &d.Events}, {&t.RateLimitChanges, &d.RateLimitChanges},
	} {
		if *f.v == "" {
			*f.v = *f.d
		}
	}
	return t
}

// For returns the topic a message of type typ is published to: requests to
// Requests, every outcome to Events. Re-queued requests go to Retry through
// Producer.PublishTo.
func (t Topics) For(typ Type) string {
	if typ == TypeIssuanceRequested {
		return t.WithDefaults().Requests
	}
	return t.WithDefaults().Events
}

// All lists the five topics.
func (t Topics) All() []string {
	t = t.WithDefaults()
	return []string{t.Requests, t.Retry, t.DLQ, t.Events, t.RateLimitChanges}
}

// Specs returns one TopicSpec per topic with the given partition count and
// replication factor.
func (t Topics) Specs(partitions, replication int) []TopicSpec {
	var out []TopicSpec
	for _, name := range t.All() {
		out = append(out, TopicSpec{Name: name, Partitions: partitions, ReplicationFactor: replication})
	}
	return out
}

// Retention of the topics that hold work for later, set explicitly when
// they are created (a broker's default, often 7 days, is not a decision):
//   - retry holds deferred requests until their not_before, which a CA's
//     weekly limits can put days away: twice Let's Encrypt's longest window;
//   - the DLQ holds records given up on until an operator lists and replays
//     them ('certfleet dlq'): a month.
const (
	DefaultRetryRetention = 14 * 24 * time.Hour
	DefaultDLQRetention   = 30 * 24 * time.Hour
)

// ProvisionOptions say how SpecsWith's topics are created.
type ProvisionOptions struct {
	// Partitions per topic, at least 1.
	Partitions int
	// ReplicationFactor of every topic, at least 1: 3 in production (a
	// broker can be lost without losing a record), 1 on testenv's single
	// broker.
	ReplicationFactor int
	// MinInsyncReplicas is each topic's min.insync.replicas: with
	// RequiredAcks=RequireAll a write succeeds only once this many replicas
	// have it. 2 in production with ReplicationFactor 3; 0 leaves the
	// broker's default. At most ReplicationFactor.
	MinInsyncReplicas int
	// RetryRetention and DLQRetention are the retention.ms of the retry and
	// dead-letter topics; 0 means DefaultRetryRetention, DefaultDLQRetention.
	RetryRetention, DLQRetention time.Duration
}

// Validate reports what is out of range, naming the fields.
func (o ProvisionOptions) Validate() error {
	var errs []error
	if o.Partitions < 1 {
		errs = append(errs, fmt.Errorf("partitions %d: want at least 1", o.Partitions))
	}
	if o.ReplicationFactor < 1 {
		errs = append(errs, fmt.Errorf("replication factor %d: want at least 1", o.ReplicationFactor))
	}
	if o.MinInsyncReplicas < 0 || o.MinInsyncReplicas > o.ReplicationFactor {
		errs = append(errs, fmt.Errorf("min.insync.replicas %d: want 0 (the broker's default) to the replication factor %d", o.MinInsyncReplicas, o.ReplicationFactor))
	}
	if o.RetryRetention < 0 || o.DLQRetention < 0 || (o.RetryRetention > 0 && o.RetryRetention < time.Hour) || (o.DLQRetention > 0 && o.DLQRetention < time.Hour) {
		errs = append(errs, fmt.Errorf("retention %v (retry), %v (DLQ): want 0 (the default) or at least 1h", o.RetryRetention, o.DLQRetention))
	}
	return errors.Join(errs...)
}

// SpecsWith returns one TopicSpec per topic created as o says: the
// replication factor and min.insync.replicas on every topic, and
// retention.ms on the retry and dead-letter topics.
func (t Topics) SpecsWith(o ProvisionOptions) []TopicSpec {
	t = t.WithDefaults()
	retention := map[string]time.Duration{t.Retry: o.RetryRetention, t.DLQ: o.DLQRetention}
	if retention[t.Retry] == 0 {
		retention[t.Retry] = DefaultRetryRetention
	}
	if retention[t.DLQ] == 0 {
		retention[t.DLQ] = DefaultDLQRetention
	}
	var out []TopicSpec
	for _, name := range t.All() {
		s := TopicSpec{Name: name, Partitions: o.Partitions, ReplicationFactor: o.ReplicationFactor, Configs: map[string]string{}}
		if o.MinInsyncReplicas > 0 {
			s.Configs["min.insync.replicas"] = strconv.Itoa(o.MinInsyncReplicas)
		}
		if r, ok := retention[name]; ok {
			s.Configs["retention.ms"] = strconv.FormatInt(r.Milliseconds(), 10)
		}
		out = append(out, s)
	}
	return out
}

// TopicSpec is a topic to create.
type TopicSpec struct {
	Name              string
	Partitions        int               // at least 1
	ReplicationFactor int               // at least 1
	Configs           map[string]string // topic configs, e.g. "retention.ms"
}

// ErrTopicMismatch reports an existing topic with fewer partitions than its
// spec asks for; Provision never alters an existing topic.
var ErrTopicMismatch = errors.New("existing topic does not match its spec")

// Provision creates the topics and waits until every partition has a leader.
// A topic that already exists counts as created, so running it twice is
// safe; an existing topic with fewer partitions than asked is an
// ErrTopicMismatch. ctx bounds the whole call, including the wait; on
// cancellation it returns ctx's error and topics may be partly created.
func Provision(ctx context.Context, client *kafka.Client, specs ...TopicSpec) error {
	req := &kafka.CreateTopicsRequest{}
	for _, s := range specs {
		if s.Name == "" || s.Partitions < 1 || s.ReplicationFactor < 1 {
			return fmt.Errorf("events: provisioning topic %q: need a name, partitions >= 1 and replication >= 1 (got %d, %d)",
				s.Name, s.Partitions, s.ReplicationFactor)
		}
		tc := kafka.TopicConfig{Topic: s.Name, NumPartitions: s.Partitions, ReplicationFactor: s.ReplicationFactor}
		for k, v := range s.Configs {
			tc.ConfigEntries = append(tc.ConfigEntries, kafka.ConfigEntry{ConfigName: k, ConfigValue: v})
		}
		req.Topics = append(req.Topics, tc)
	}
	if len(req.Topics) == 0 {
		return nil
	}
	resp, err := client.CreateTopics(ctx, req)
	if err != nil {
		return fmt.Errorf("events: creating topics: %w", err)
	}
	var errs []error
	for name, terr := range resp.Errors {
		if terr != nil && !errors.Is(terr, kafka.TopicAlreadyExists) {
			errs = append(errs, fmt.Errorf("events: creating topic %s: %w", name, terr))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return waitForLeaders(ctx, client, specs)
}

// waitForLeaders polls metadata until every partition of every spec has a
// leader. Topic creation is asynchronous in Kafka: producing right after
// CreateTopics returns can fail with UnknownTopicOrPartition.
func waitForLeaders(ctx context.Context, client *kafka.Client, specs []TopicSpec) error {
	want := map[string]int{}
	var names []string
	for _, s := range specs {
		want[s.Name] = s.Partitions
		names = append(names, s.Name)
	}
	delay := 10 * time.Millisecond
	for {
		md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: names})
		var pending error
		if err != nil {
			pending = err
		} else {
			seen := map[string]bool{}
			for _, t := range md.Topics {
				seen[t.Name] = true
				if _, ok := want[t.Name]; !ok {
					continue
				}
				if t.Error != nil {
					pending = fmt.Errorf("topic %s: %w", t.Name, t.Error)
					continue
				}
				if len(t.Partitions) < want[t.Name] {
					if len(t.Partitions) > 0 {
						return fmt.Errorf("events: topic %s has %d partitions, spec asks %d: %w",
							t.Name, len(t.Partitions), want[t.Name], ErrTopicMismatch)
					}
					pending = fmt.Errorf("topic %s has no partitions yet", t.Name)
					continue
				}
				for _, p := range t.Partitions {
					if p.Error != nil || p.Leader.Host == "" {
						pending = fmt.Errorf("topic %s partition %d has no leader yet", t.Name, p.ID)
					}
				}
			}
			for _, n := range names {
				if !seen[n] {
					pending = fmt.Errorf("topic %s not in metadata yet", n)
				}
			}
		}
		if pending == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("events: waiting for topic leaders: %w (last: %v)", ctx.Err(), pending)
		case <-time.After(delay):
		}
		delay = min(2*delay, 500*time.Millisecond)
	}
}
