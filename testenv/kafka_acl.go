package testenv

import (
	"context"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
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
	// Key deliveries (package delivery) and the agents' consumer groups.
	aclDeliveries  = "certfleet.certificates.deliveries"
	aclAgentGroups = "certfleet-agent"
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
//   - worker: read requests and retries, write retries, outcomes, key
//     deliveries and dead letters, read and write rate-limit changes (it
//     relays the outbox);
//   - scheduler: write renewal requests, read outcomes, dead-letter
//     undecodable outcomes, read rate-limit changes;
//   - operator (the CLI): everything on certfleet's topics and groups, and
//     creating topics;
//   - agent (certfleet agent, at the edge): read key deliveries and outcomes,
//     its own consumer groups (certfleet-agent*), nothing else;
//   - admin: a super user (broker config); nobody: no ACL at all.
var kafkaGrants = []grant{
	{PrincipalProducer, topic, aclRequests, write},
	{PrincipalWorker, topic, aclRequests, read},
	{PrincipalWorker, topic, aclRetry, rw},
	{PrincipalWorker, topic, aclEvents, write},
	{PrincipalWorker, topic, aclDeliveries, write},
	{PrincipalWorker, topic, aclDLQ, write},
	{PrincipalWorker, topic, aclChanges, rw},
	{PrincipalWorker, group, aclGroups, read},
	{PrincipalScheduler, topic, aclRequests, write},
	{PrincipalScheduler, topic, aclEvents, read},
	{PrincipalScheduler, topic, aclDLQ, write},
	{PrincipalScheduler, topic, aclChanges, read},
	{PrincipalScheduler, group, aclGroups, read},
	{PrincipalAgent, topic, aclDeliveries, read},
	{PrincipalAgent, topic, aclEvents, read},
	{PrincipalAgent, group, aclAgentGroups, read},
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

// ensureKafkaUsers gives every principal its SCRAM users (SHA-256 and
// SHA-512) that the broker lacks, through the PLAINTEXT listener. Storage
// formatting makes them for the principals of its day; this adds those of a
// principal added since, without formatting anew. Existing users are left
// alone (rewriting one would break a handshake in progress).
func ensureKafkaUsers(ctx context.Context, state string) error {
	k, err := ensurePKI(state) // a principal added since has no password yet
	if err != nil {
		return err
	}
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	c := &kafka.Client{Addr: kafka.TCP(kafkaAddr), Transport: tr}
	var users []kafka.UserScramCredentialsUser
	for _, p := range principals {
		users = append(users, kafka.UserScramCredentialsUser{Name: p})
	}
	desc, err := c.DescribeUserScramCredentials(ctx, &kafka.DescribeUserScramCredentialsRequest{Users: users})
	if err != nil {
		return fmt.Errorf("testenv: describing SCRAM users: %w", err)
	}
	has := map[string]bool{}
	for _, r := range desc.Results {
		for _, ci := range r.CredentialInfos {
			has[fmt.Sprint(r.User, ci.Mechanism)] = true
		}
	}
	var ups []kafka.UserScramCredentialsUpsertion
	for _, p := range principals {
		for _, m := range []kafka.ScramMechanism{kafka.ScramMechanismSha256, kafka.ScramMechanismSha512} {
			if has[fmt.Sprint(p, m)] {
				continue
			}
			pw, err := k.password(p)
			if err != nil {
				return err
			}
			salt := make([]byte, 16)
			_, _ = rand.Read(salt)
			h := sha256.New
			if m == kafka.ScramMechanismSha512 {
				h = sha512.New
			}
			const iterations = 4096
			salted, err := pbkdf2.Key(h, pw, salt, iterations, h().Size())
			if err != nil {
				return err
			}
			ups = append(ups, kafka.UserScramCredentialsUpsertion{Name: p, Mechanism: m, Iterations: iterations, Salt: salt, SaltedPassword: salted})
		}
	}
	// Kafka alters a user once per request: one request per mechanism.
	for _, m := range []kafka.ScramMechanism{kafka.ScramMechanismSha256, kafka.ScramMechanismSha512} {
		var batch []kafka.UserScramCredentialsUpsertion
		for _, u := range ups {
			if u.Mechanism == m {
				batch = append(batch, u)
			}
		}
		if len(batch) == 0 {
			continue
		}
		resp, err := c.AlterUserScramCredentials(ctx, &kafka.AlterUserScramCredentialsRequest{Upsertions: batch})
		if err != nil {
			return fmt.Errorf("testenv: creating SCRAM users: %w", err)
		}
		for _, r := range resp.Results {
			if r.Error != nil {
				return fmt.Errorf("testenv: creating SCRAM user %s: %w", r.User, r.Error)
			}
		}
	}
	return nil
}
