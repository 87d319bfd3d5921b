// Package ratelimit owns certfleet's view of CA rate limits, end to end: the
// pure GCRA arithmetic (gcra.go), the limit names (names.go), the per-CA limit
// catalogue and its file (limits.go), the bucket keys an order spends and the
// failed-authorization buckets a failed validation spends (transactions.go),
// the reading of a CA's 429 into the buckets it names (boulder429.go), the
// decisions that combine them: spend, check, refund, penalise (limiter.go),
// the bucket stores (store.go, store_mem.go, store_db.go), operator-managed
// overrides with their cache (override*.go) and the outbox relay that
// announces override changes (relay.go).
//
// It owns the ratelimit_* tables created by schema/migrations/0002_ratelimit.sql
// and touches no other table. It does not talk to Kafka or to the CA itself:
// the relay publishes through a one-method Publisher, and what a CA answered
// reaches it from the pipeline (acmeissuer reports a 429 as a
// *acmeissuer.CAError; the pipeline hands its detail to PenaltyTargets and
// penalises each bucket named with Limiter.Penalize, and hands the ACME
// problem of a failed order to Limiter.SpendFailedAuthorizations).
// Identifiers are package names' business: an order's SANs, registered
// domains and override keys go through it. Package ratelimit/changefeed
// carries override changes over Kafka: a Publisher over the events producer,
// and a consumer that feeds every worker's OverrideCache from the topic.
//
// Start with NewLimiter(LimiterConfig{...}) over a Store (NewMemStore for one
// process, NewDBStore for the fleet) and a Catalogue (DefaultCatalogue or
// LoadCatalogue), then call Limiter.Spend (or Limiter.Book, which queues a
// denied order in a slot of its own) with the transactions
// Catalogue.OrderTransactions derives for an order, through
// WithIssuanceLead when the CA counts certificates at issuance.
// Catalogue.RegistrationTransactions derives what an account registration
// spends.
package ratelimit

import "errors"

// Errors callers branch on.
var (
	// ErrInvalidRequest means a spend, check or refund was malformed (bad
	// cost, duplicate key, unknown CA, ...); retrying it cannot help.
	ErrInvalidRequest = errors.New("ratelimit: invalid request")
	// ErrConflict means an override update or delete named a version that is
	// no longer current: re-read and try again.
	ErrConflict = errors.New("ratelimit: override version conflict")
	// ErrNotFound means the override does not exist.
	ErrNotFound = errors.New("ratelimit: override not found")
)
