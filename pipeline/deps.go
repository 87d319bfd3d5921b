package pipeline

import (
	"context"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/cahealth"
	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/delivery"
	"github.com/certfleet/certfleet/internal/caconfig"
	"github.com/certfleet/certfleet/ratelimit"
)

// Claims makes requests idempotent across workers and redeliveries.
// *certstore.Store implements it; see certstore for the contract.
type Claims interface {
	Claim(ctx context.Context, requestID, identity, owner string, lease time.Duration) (certstore.ClaimResult, error)
	Complete(ctx context.Context, owner string, c certstore.Issued, outcome []byte) error
	Fail(ctx context.Context, requestID, owner string, outcome []byte) error
	Release(ctx context.Context, requestID, owner string) error
}

// OrderRecorder remembers the order in flight for a claimed request, so the
// next owner continues it (ClaimResult.Order) when this one dies instead of
// ordering again. *certstore.Store implements it.
//
// Contract: RecordOrder stores o for requestID only while owner owns the
// request (else an error wrapping certstore.ErrNotOwner); the claim that
// follows a crash or a release returns it; the request's end forgets it. Safe
// for concurrent use; honours ctx.
type OrderRecorder interface {
	RecordOrder(ctx context.Context, requestID, owner string, o certstore.Order) error
}

// Renewer extends a claim while its owner works on it (the heartbeat), so
// the claim can be a short lease. *certstore.Store implements it.
//
// Contract: Renew sets owner's lease on requestID to lease from now while
// owner owns the request; otherwise it returns an error wrapping
// certstore.ErrNotOwner and changes nothing. Safe for concurrent use;
// honours ctx.
type Renewer interface {
	Renew(ctx context.Context, requestID, owner string, lease time.Duration) error
}

// LaneSignals is the fleet-wide word that a lane's requests are waiting
// for the fleet budget. *lanesignal.Store implements it.
//
// Contract: Mark records that lane's requests wait until until (never
// shortening a later mark); Until returns the latest end of a mark of any of
// lanes, the zero time when there is none. Safe for concurrent use, also
// across processes; ctx bounds each call.
type LaneSignals interface {
	Mark(ctx context.Context, lane string, until time.Time) error
	Until(ctx context.Context, lanes []string) (time.Time, error)
}

// FairShare shares each worker's recent usage of the lanes per tenant with
// the fleet (fairshare.go). *lanesignal.Store implements it.
//
// Contract: Report replaces what owner reported before with usage (an
// empty usage clears it); Others returns what every worker but owner last
// reported for tenants, as reported (the caller decays it from At), and may
// leave out rows so old that they decayed to nothing. Safe for concurrent
// use, also across processes; ctx bounds each call.
type FairShare interface {
	Report(ctx context.Context, owner string, usage []TenantUsage) error
	Others(ctx context.Context, owner string, tenants []string) ([]TenantUsage, error)
}

// Booker books the next free slot of an order's buckets when they are
// full. *ratelimit.Limiter implements it.
//
// Contract: Book spends txns now when they fit (Allowed); otherwise, when
// only full buckets deny them (no penalty) and the slot in which all fit is
// within horizon, it books that slot (Booked, At): the spend is made now,
// the n-th concurrent waiter on a bucket gets the n-th slot, and the holder
// goes ahead at At without spending again (or gives up with Refund).
// Otherwise it books nothing and RetryIn says when to ask again. An error
// means the outcome is unknown (over-charging only delays). Safe for
// concurrent use; honours ctx.
type Booker interface {
	Book(ctx context.Context, txns []ratelimit.Transaction, horizon time.Duration) (ratelimit.Result, error)
}

// Parking keeps deferred requests outside the worker's memory until due,
// and the booking a deferred request holds. *certstore.Store implements
// it; ParkRelay writes due records to the retry topic.
//
// Contract: Park keeps p until p.Due, replacing what was parked for the
// request before; ReleaseBooked hands owner's claim back keeping b for the
// next owner (its claim's Booking), or returns an error wrapping
// certstore.ErrNotOwner and changes nothing. Safe for concurrent use;
// honours ctx.
type Parking interface {
	Park(ctx context.Context, p certstore.Parked) error
	ReleaseBooked(ctx context.Context, requestID, owner string, b certstore.Booking) error
}

// Previous finds the certificate an ARI renewal replaces, so the order can
// name it (RFC 9773 "replaces"). *certstore.Store implements it. Contract:
// ByARICertID returns the stored certificate whose ARI id is ariCertID, or an
// error when there is none; safe for concurrent use; honours ctx.
type Previous interface {
	ByARICertID(ctx context.Context, ariCertID string) (certstore.Certificate, error)
}

// Tokens spends and refunds rate-limit tokens, all or nothing across the
// transactions, and records what the CA said about limits: the penalty of a
// 429 on a bucket, and failed validations. *ratelimit.Limiter implements it.
// An error means the outcome is unknown (the job retries a spend; a double
// spend only delays, never over-issues).
type Tokens interface {
	Spend(ctx context.Context, txns []ratelimit.Transaction) (ratelimit.Result, error)
	Refund(ctx context.Context, txns []ratelimit.Transaction) error
	Penalize(ctx context.Context, t ratelimit.Transaction, until time.Time) error
	SpendFailedAuthorizations(ctx context.Context, o ratelimit.Order, problemType string) error
}

// Limits derives the rate-limit transactions of an order.
// *ratelimit.Catalogue implements it.
type Limits interface {
	OrderTransactions(o ratelimit.Order) ([]ratelimit.Transaction, error)
}

// Issuer obtains one certificate from one CA. *acmeissuer.Issuer implements
// it. Errors are classified with acmeissuer.Classify.
type Issuer interface {
	Obtain(ctx context.Context, req acmeissuer.Request) (*acmeissuer.Result, error)
}

// Delivery hands the key of a certificate just obtained to its recipients,
// sealed to each of them (*delivery.Deliverer implements it). Contract:
// Deliver returns nil once c's key is sealed and published to every
// recipient c matches (none may match); an error means it may not be, and
// the job retries like any infrastructure call. It never logs, returns or
// publishes the key in the clear. Safe for concurrent use; honours ctx.
type Delivery interface {
	Deliver(ctx context.Context, c delivery.Certificate) error
}

// Writer writes records synchronously (nil error: durably written, every
// record with its Topic set). *events.Producer implements it.
type Writer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// CA is one certificate authority the worker may order from: the CA as
// configured (its name in requests' "ca" field and its ACME directory URL,
// which requests may name instead) and the issuer that orders from it.
type CA struct {
	caconfig.CA
	Issuer Issuer
	// AccountKey, optional, names the ACME account a tenant's orders go
	// through at this CA (acmeissuer's Issuer.AccountKey: the tenant, or one
	// shared account): NewOrdersPerAccount is keyed by it, so the fleet's
	// bucket counts what the CA counts per account. Nil: the tenant.
	AccountKey func(tenant string) string
}

// account is the account tenant's orders at ca go through.
func (ca CA) account(tenant string) string {
	if ca.AccountKey == nil {
		return tenant
	}
	return ca.AccountKey(tenant)
}

// Breaker is the fleet's circuit breaker per CA, by CA name.
// *cahealth.Breaker implements it; see package cahealth for the states.
//
// Contract: Allow says whether a job (owner) may order from the CA now, and
// hands at most one job at a time the probe of a half-open CA; an error comes
// with an allowing decision. Failure records an unavailable answer and
// returns the CA's row after it (open while now < OpenUntil). Success
// records an answer to an operation begun at since and closes the breaker,
// unless a failure was recorded after since. ReleaseProbe gives back a probe
// owner holds without a verdict. Safe for concurrent use; honours ctx.
type Breaker interface {
	Allow(ctx context.Context, ca, owner string) (cahealth.Decision, error)
	Failure(ctx context.Context, ca, reason string) (cahealth.Status, error)
	Success(ctx context.Context, ca string, since time.Time) error
	ReleaseProbe(ctx context.Context, ca, owner string) error
}
