// Package scheduler keeps every managed certificate valid without anyone
// polling: it owns the inventory of certificates operators asked for
// (inventory.go), the pure renewal and retry decisions (plan.go), the leader
// lease with its fencing token (lease.go), the tick that emits due renewal
// jobs to Kafka (tick.go), the consumer of certificate events that records
// outcomes and plans the next renewal (outcomes.go), the ARI client
// (ari.go) and its Prometheus metrics (metrics.go).
//
// It owns the scheduler columns of managed_certificates and the
// "scheduler" row of leases (schema/migrations/0001 and 0005). It reads
// issued_certificates and issuance_requests (written by certstore) and never
// writes them: an outcome event is recorded only when it matches what a
// worker stored there (outcomes.go). It does not order certificates or spend
// rate-limit tokens (the issuer-workers do).
//
// A tick (tick.go) reads due rows in fair batches by keyset cursors, writes
// each batch to Kafka and then marks it, as a pipeline of those three
// stages, so its memory is a few batches whatever the fleet size. Rows whose
// CA moved the ARI window into the past (an incident revocation) are in the
// incident lane (BasisIncident, IncidentDue): emitted first, as reissues at
// events.MaxPriority, still within the fleet budget; the first such window
// of an issuer brings forward the ARI re-check of all its certificates
// (ari.go). Outcome recording retries database failures until shutdown and
// dead-letters only data errors (outcomes.go, internal/infraretry).
//
// Start with NewInventory to manage certificates and New to run a scheduler
// (Run: lease, ticks, outcome consumer); see cmd/scheduler.
package scheduler

import "github.com/jackc/pgx/v5"

var errNoRows = pgx.ErrNoRows
