package testenv

import (
	"context"
	"errors"
	"fmt"

	"github.com/segmentio/kafka-go"
)

// Default topic and group names the ACLs are granted on, as prefixes, so a
// test's own topics (a suffix after the default name) get the same rights.
const (
	aclRequests = "certfleet.issuance.requests"
	aclRetry    = "certfleet.issuance.retry"
	aclDLQ      = "certfleet.issuance.dlq"
	aclEvents   = "certfleet.certificates.events"
	aclChanges  = "certfleet.ratelimit.changes"
	aclGroups   = "certfleet"
)

// grant is one principal's right on topics or groups whose names start with
// prefix (the cluster, when kind is ResourceTypeCluster).
type grant struct {
	principal string
	kind      kafka.ResourceType
	prefix    string
	ops       []kafka.ACLOperationType
}

var (
	read  = []kafka.ACLOperationType{kafka.ACLOperationTypeRead, kafka.ACLOperationTypeDescribe}
	write = []kafka.ACLOperationType{kafka.ACLOperationTypeWrite, kafka.ACLOperationTypeDescribe}
	rw    = []kafka.ACLOperationType{kafka.ACLOperationTypeRead, kafka.ACLOperationTypeWrite, kafka.ACLOperationTypeDescribe}
	all   = []kafka.ACLOperationType{kafka.ACLOperationTypeAll}
	topic = kafka.ResourceTypeTopic
	group = kafka.ResourceTypeGroup
)

// kafkaGrants is who may do what on the SASL_SSL and mTLS listeners:
// least privilege per role, as a production cluster would have it.
//   - producer (upstream systems): write issuance requests, nothing else;
//   - worker: read requests and retries, write retries, outcomes and dead
//     letters, read and write rate-limit changes (it relays the outbox);
//   - scheduler: write renewal requests, read outcomes, dead-letter
//     undecodable outcomes, read rate-limit changes;
//   - operator (the CLI): everything on certfleet's topics and groups, and
//     creating topics;
//   - admin: a super user (broker config); nobody: no ACL at all.
var kafkaGrants = []grant{
	{PrincipalProducer, topic, aclRequests, write},
	{PrincipalWorker, topic, aclRequests, read},
	{PrincipalWorker, topic, aclRetry, rw},
	{PrincipalWorker, topic, aclEvents, write},
	{PrincipalWorker, topic, aclDLQ, write},
	{PrincipalWorker, topic, aclChanges, rw},
	{PrincipalWorker, group, aclGroups, read},
	{PrincipalScheduler, topic, aclRequests, write},
	{PrincipalScheduler, topic, aclEvents, read},
	{PrincipalScheduler, topic, aclDLQ, write},
	{PrincipalScheduler, topic, aclChanges, read},
	{PrincipalScheduler, group, aclGroups, read},
	{PrincipalOperator, topic, "certfleet.", all},
	{PrincipalOperator, group, aclGroups, all},
	{PrincipalOperator, kafka.ResourceTypeCluster, "kafka-cluster", []kafka.ACLOperationType{kafka.ACLOperationTypeCreate, kafka.ACLOperationTypeDescribe}},
}

// ensureKafkaACLs creates kafkaGrants through the PLAINTEXT listener (whose
// ANONYMOUS principal is a super user). Creating an ACL that exists is a
// no-op in Kafka, so this runs at every `testenv up`.
func ensureKafkaACLs(ctx context.Context) error {
	var entries []kafka.ACLEntry
	for _, g := range kafkaGrants {
		pattern := kafka.PatternTypePrefixed
		if g.kind == kafka.ResourceTypeCluster {
			pattern = kafka.PatternTypeLiteral
		}
		for _, op := range g.ops {
			entries = append(entries, kafka.ACLEntry{
				ResourceType: g.kind, ResourceName: g.prefix, ResourcePatternType: pattern,
				Principal: "User:" + g.principal, Host: "*", Operation: op, PermissionType: kafka.ACLPermissionTypeAllow,
			})
		}
	}
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	c := &kafka.Client{Addr: kafka.TCP(kafkaAddr), Transport: tr}
	resp, err := c.CreateACLs(ctx, &kafka.CreateACLsRequest{ACLs: entries})
	if err != nil {
		return fmt.Errorf("testenv: creating Kafka ACLs: %w", err)
	}
	if err := errors.Join(resp.Errors...); err != nil {
		return fmt.Errorf("testenv: creating Kafka ACLs: %w", err)
	}
	return nil
}
