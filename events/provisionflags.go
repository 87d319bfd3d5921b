package events

import "github.com/certfleet/certfleet/internal/envflag"

// Production values of the provisioning flags: a topic survives the loss of
// a broker (replication 3) and a write acknowledged by RequireAll is on at
// least two brokers (min.insync.replicas 2). testenv's single broker takes
// 1 and 1.
const (
	DefaultPartitions        = 12
	DefaultReplicationFactor = 3
	DefaultMinInsyncReplicas = 2
)

// RegisterProvisionFlags registers the flags that say how topics are
// created (-partitions, -replication-factor, -min-insync-replicas,
// -retry-retention, -dlq-retention, each with its CERTFLEET_* fallback) on
// s, for every command that provisions (issuer-worker -provision-topics,
// certfleet topics create). Check the result with Validate after parsing.
func RegisterProvisionFlags(s *envflag.Set) *ProvisionOptions {
	o := &ProvisionOptions{}
	s.Int(&o.Partitions, "partitions", "CERTFLEET_PARTITIONS", DefaultPartitions, "partitions per topic when creating topics")
	s.Int(&o.ReplicationFactor, "replication-factor", "CERTFLEET_TOPIC_REPLICATION_FACTOR", DefaultReplicationFactor,
		"replication factor of created topics (3 in production; 1 on a single test broker)")
	s.Int(&o.MinInsyncReplicas, "min-insync-replicas", "CERTFLEET_TOPIC_MIN_INSYNC_REPLICAS", DefaultMinInsyncReplicas,
		"min.insync.replicas of created topics: acknowledged writes are on this many brokers (2 in production; 1 on a single test broker; 0: the broker's default)")
	s.Duration(&o.RetryRetention, "retry-retention", "CERTFLEET_TOPIC_RETRY_RETENTION", DefaultRetryRetention,
		"retention.ms of the retry topic: longer than the longest deferral")
	s.Duration(&o.DLQRetention, "dlq-retention", "CERTFLEET_TOPIC_DLQ_RETENTION", DefaultDLQRetention,
		"retention.ms of the dead-letter topic: how long records wait for 'certfleet dlq replay'")
	return o
}
