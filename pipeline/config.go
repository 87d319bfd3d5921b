package pipeline

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/caconfig"
	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/seal"
)

// Config wires a Worker. Fields marked required have no default; the zero
// value of every other field means its documented default.
type Config struct {
	// Owner names this worker in claims (required; e.g. host:pid).
	Owner string
	// Source is the CloudEvents source of the events it publishes.
	// Default "//certfleet/issuer-worker".
	Source string
	// Topics names the topics; zero fields mean events' defaults.
	Topics events.Topics

	Claims Claims      // required
	Tokens Tokens      // required
	Limits Limits      // required
	Writer Writer      // required
	Sealer seal.Sealer // required
	CAs    []CA        // required, at least one
	// Groups, optional, are the CA groups requests may name in their "ca"
	// field, each an ordered list of CAs' names (failover.go): a group's
	// request is ordered from the first of its CAs the Breaker lets through
	// and whose limits do not defer it beyond FailoverAfter.
	Groups []caconfig.Group
	// Breaker, optional, is the fleet's circuit breaker per CA: a CA it
	// holds open gets no new orders; a group's request goes to the next CA,
	// a request for that CA alone (or whose order is in flight there) waits
	// until the breaker lets a probe through. Nil: every CA is always tried.
	Breaker Breaker
	// FailoverAfter: a group's request leaves a CA whose limits (tokens
	// denied, the CA's 429) defer it longer than this for the next CA of the
	// group; a shorter deferral is waited out for the preferred CA. Default
	// 10 minutes.
	FailoverAfter time.Duration
	// Orders, optional, records each order as the CA creates it, so a worker
	// that claims the request after this one died continues that order
	// rather than placing another. Nil: a crash mid-order costs a second order.
	Orders OrderRecorder
	// Renewer, optional, renews the claim every Heartbeat while the job
	// works, so the Lease can be short and a dead worker's order is taken
	// over (and continued, with Orders) seconds after it dies. Nil: no
	// heartbeat, and the Lease must outlast the longest order.
	Renewer Renewer
	// Parking, optional, keeps requests that must wait longer than
	// MaxInlineWait in the database until due (park.go; run a ParkRelay
	// beside the worker), so they hold no MaxPending slot and no partition
	// commit. Nil: they wait on the retry topic and in memory.
	Parking Parking
	// Booker, optional (with Parking), books a denied request's slot
	// (ratelimit's Book), so waiters on a bucket get distinct slots in
	// arrival order and each wake-up orders without spending again. Nil:
	// a denied request is deferred by the denial's retry-in and spends
	// again when it comes back.
	Booker Booker
	// Lead sets the lead with which CertificatesPerDomain and
	// CertificatesPerFQDNSet are spent (lead.go): the CA counts them when
	// it issues. The zero value means its defaults.
	Lead LeadPolicy
	// Previous, optional, finds the certificate a renewal replaces, so the
	// order names it and the CA can apply its ARI exemption. Nil: renewals
	// are ordered without "replaces".
	Previous Previous
	// Delivery, optional, seals the key of each certificate obtained to its
	// recipients before the certificate is stored, so a crash in between
	// delivers again rather than never. Nil: keys are not delivered.
	Delivery Delivery

	// Concurrency caps orders in flight: a job holds an order slot from its
	// claim until the CA has issued (storing and publishing run outside it).
	// Default 8 (Pebble's safe maximum).
	Concurrency int
	// MaxPending caps fetched records not yet finished, including those
	// waiting for their not_before. Default 1024.
	MaxPending int
	// Lanes says how order slots are shared between lanes and tenants
	// (lanes.go); the zero value is DefaultLanePolicy.
	Lanes LanePolicy
	// LaneSignals, optional, makes lanes fleet-wide: a higher lane's
	// requests denied by the fleet budget hold lower-lane requests back in
	// every worker (lanes.go). Nil: lanes order only each worker's slots.
	LaneSignals LaneSignals
	// FairShare, optional, makes the fair share inside a lane fleet-wide:
	// every worker shares each tenant's recent usage and serves first the
	// tenants the whole fleet has served least (fairshare.go). Nil: each
	// worker is fair over the requests it holds.
	FairShare FairShare
	// Lease is how long a claim protects a request from other workers
	// without a renewal. Default 15 s with a Renewer (the heartbeat renews
	// it), 5 minutes without (it must then outlast the longest order).
	Lease time.Duration
	// Heartbeat is how often a job renews its claim (with a Renewer).
	// Default a third of the Lease, so two renewals may fail before it lapses.
	Heartbeat time.Duration
	// MaxInlineWait: a limit denial whose retry-in is at most this long is
	// waited out in place (holding the order slot) rather than deferred;
	// with Parking, a longer wait is parked. Default 5 s.
	MaxInlineWait time.Duration
	// BusyRetry is how long a record waits when another worker is ordering
	// the same request, before looking again for its outcome. Default 5 s.
	BusyRetry time.Duration
	// OrderTimeout bounds one ACME order. Default 2 minutes.
	OrderTimeout time.Duration
	// OrderRetries is how often a retryable ACME failure (5xx, network) is
	// retried inside the job before deferring. Default 3.
	OrderRetries int
	// MaxAttempts ends a request as permanently failed once it failed this
	// often (retryable ACME failures re-queued; HeaderFailures counts them).
	// Deferrals (limits, the CA's 429, another worker's claim) are not
	// failures and do not count. Default 200.
	MaxAttempts int
	// RetryDelay is the first deferral after retryable ACME failures; it
	// doubles per earlier failure (never per deferral) up to MaxRetryDelay.
	// Defaults 30 s and 1 h.
	RetryDelay, MaxRetryDelay time.Duration
	// InfraBackoffMax caps the backoff between retries of database and Kafka
	// operations inside a job. Default 5 s.
	InfraBackoffMax time.Duration

	Logger  *slog.Logger // default slog.Default()
	Metrics *Metrics     // default: unregistered metrics
	Clock   clock.Clock  // default the wall clock
}

func (c *Config) validate() error {
	var errs []error
	req := func(ok bool, field string) {
		if !ok {
			errs = append(errs, fmt.Errorf("pipeline: config field %s is required", field))
		}
	}
	req(c.Owner != "", "Owner")
	req(c.Claims != nil, "Claims")
	req(c.Tokens != nil, "Tokens")
	req(c.Limits != nil, "Limits")
	req(c.Writer != nil, "Writer")
	req(c.Sealer != nil, "Sealer")
	req(len(c.CAs) > 0, "CAs")
	var seen []caconfig.CA
	for i, ca := range c.CAs {
		if ca.Issuer == nil {
			errs = append(errs, fmt.Errorf("pipeline: config field CAs[%d] needs an Issuer", i))
		}
		if err := errors.Join(ca.Check(), ca.Repeats(seen)); err != nil {
			errs = append(errs, fmt.Errorf("pipeline: config field CAs[%d]: %w", i, err))
		}
		seen = append(seen, ca.CA)
	}
	var plain []caconfig.CA
	for _, ca := range c.CAs {
		plain = append(plain, ca.CA)
	}
	if err := caconfig.CheckGroups(c.Groups, plain); err != nil {
		errs = append(errs, fmt.Errorf("pipeline: config field Groups: %w", err))
	}
	for _, n := range []struct {
		v    int
		name string
	}{{c.Concurrency, "Concurrency"}, {c.MaxPending, "MaxPending"}, {c.OrderRetries, "OrderRetries"}, {c.MaxAttempts, "MaxAttempts"}} {
		if n.v < 0 {
			errs = append(errs, fmt.Errorf("pipeline: config field %s is negative", n.name))
		}
	}
	if c.Booker != nil && c.Parking == nil {
		errs = append(errs, errors.New("pipeline: config field Booker needs Parking (a booking is kept on the parked request's claim)"))
	}
	if c.Concurrency > 0 && c.MaxPending > 0 && c.MaxPending < c.Concurrency {
		errs = append(errs, errors.New("pipeline: config field MaxPending is below Concurrency"))
	}
	return errors.Join(errs...)
}

func (c *Config) defaults() {
	if c.Source == "" {
		c.Source = "//certfleet/issuer-worker"
	}
	c.Topics = c.Topics.WithDefaults()
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	def(&c.Concurrency, 8)
	def(&c.MaxPending, 1024)
	def(&c.OrderRetries, 3)
	def(&c.MaxAttempts, 200)
	dur := func(p *time.Duration, v time.Duration) {
		if *p <= 0 {
			*p = v
		}
	}
	if c.Renewer != nil {
		dur(&c.Lease, 15*time.Second)
	}
	dur(&c.Lease, 5*time.Minute)
	dur(&c.Heartbeat, c.Lease/3)
	dur(&c.OrderTimeout, 2*time.Minute)
	dur(&c.BusyRetry, 5*time.Second)
	dur(&c.MaxInlineWait, 5*time.Second)
	dur(&c.RetryDelay, 30*time.Second)
	dur(&c.MaxRetryDelay, time.Hour)
	dur(&c.InfraBackoffMax, 5*time.Second)
	dur(&c.FailoverAfter, 10*time.Minute)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics(nil)
	}
	c.Clock = clock.Or(c.Clock)
}
