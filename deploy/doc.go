// Package deploy holds certfleet's deployment artifacts; it has no Go code of
// its own. Its test (manifests_test.go) keeps them honest against the code:
//
//   - kubernetes/: a kustomize base (Namespace, ServiceAccount, ConfigMaps,
//     example Secrets, issuer-worker Deployment + HorizontalPodAutoscaler +
//     PodDisruptionBudget + Services, scheduler Deployment with two replicas
//     sharing the lease + PodDisruptionBudget + Service, migrations Job,
//     NetworkPolicies) and an example overlay. The test decodes every
//     manifest strictly with the Kubernetes API types and checks the
//     references between them, and that every environment variable set on a
//     container is one its binary reads.
//   - compose/: Docker Compose with the official Apache Kafka, CockroachDB
//     and Pebble images and the certfleet binaries built from docker/.
//   - docker/: one distroless, non-root Dockerfile; BINARY picks the binary.
//   - cockroachdb/changefeed.sql: the changefeed that feeds the rate-limit
//     changes topic from the outbox table on CockroachDB.
//   - grafana/: a dashboard of the certfleet_* metrics.
package deploy
