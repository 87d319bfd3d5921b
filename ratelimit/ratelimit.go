// Package ratelimit owns certfleet's view of CA rate limits: the pure GCRA
// arithmetic (gcra.go), the limit names (names.go), the per-CA limit
// catalogue and its file (limits.go), the bucket keys an order spends
// (transactions.go), the decisions that combine them (limiter.go),
// the bucket stores (store.go, store_mem.go, store_db.go), operator-managed
// overrides with their cache (override*.go), shared CA penalties and the
// outbox relay that announces override changes (relay.go).
//
// It owns the ratelimit_* tables created by schema/migrations/0002_ratelimit.sql
// and touches no other table. It does not talk to Kafka or to the CA itself:
// the relay publishes through a one-method Publisher, and a CA's 429 is
// recorded by whoever holds the Store. In the issuer-worker that is
// acmeissuer: cmd/issuer-worker hands the same DBStore the Limiter spends
// from to acmeissuer.Config.Penalties, and the issuer calls Store.Penalize
// on the buckets the CA's problem names (acmeissuer.PenaltyTargets over the
// keys the pipeline derives from the order's transactions). Limiter.Penalize
// is the same call by Transaction, for tests and tools. Package
// ratelimit/changefeed carries override changes over Kafka: a Publisher over
// the events producer, and a consumer that feeds every worker's
// OverrideCache from the topic.
//
// Start with NewLimiter over a Store (NewMemStore for one process, NewDBStore
// for the fleet) and a Catalogue (DefaultCatalogue or LoadCatalogue), then
// call Limiter.Spend with the transactions Catalogue.OrderTransactions
// derives for an order.
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
