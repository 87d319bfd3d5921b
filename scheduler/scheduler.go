package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/ratelimit"
)

// Config wires a Scheduler. Fields marked required have no default; the zero
// value of every other field means its documented default.
type Config struct {
	DB     *db.DB               // required
	Writer events.MessageWriter // required: where jobs go (an *events.Producer)
	// Holder names this process in the lease (required; unique per process,
	// e.g. host:pid:random).
	Holder string
	// Topics names the topics; zero fields mean events' defaults.
	Topics events.Topics
	// Source is the ce_source of emitted jobs. Default "//certfleet/scheduler".
	Source string

	// Budget is the fleet's issuance budget (ratelimit's FleetOrdersPerSecond
	// for the CA): the scheduler never emits faster than Count per Period on
	// average, nor more than max(Burst, rate×Horizon) at once. Default 10/s,
	// burst 10.
	Budget ratelimit.Limit
	// Horizon is the planning horizon: the budget of one horizon may be
	// emitted in one go. Default TickInterval.
	Horizon time.Duration
	// TickInterval is the time between ticks. Default 5 s.
	TickInterval time.Duration
	// BatchSize is the number of jobs per Kafka write and per emitted-mark
	// statement. Default 500.
	BatchSize int
	// Watchdog is how long an emitted job may go without any news (obtained,
	// failed, deferred) before the same job (same request id) is emitted
	// again; the workers' claim on the request id makes that harmless.
	// Default 6 h.
	Watchdog time.Duration
	// LeaseTTL is the leader lease period; a standby takes over within it
	// after the leader dies. The leader renews every LeaseTTL/3. Default 15 s.
	LeaseTTL time.Duration

	// InfraBackoffMax caps the backoff between retries of an outcome whose
	// recording failed for the database's sake (Handle). Default 5 s.
	InfraBackoffMax time.Duration

	Policy  Policy
	ARI     *ARIClient   // optional: fetches ARI windows; nil plans by lifetime only
	Logger  *slog.Logger // default slog.Default()
	Metrics *Metrics     // default: unregistered metrics
	Clock   clock.Clock  // default the wall clock
}

func (c *Config) validate() error {
	var errs []error
	req := func(ok bool, field string) {
		if !ok {
			errs = append(errs, fmt.Errorf("scheduler: config field %s is required", field))
		}
	}
	req(c.DB != nil, "DB")
	req(c.Writer != nil, "Writer")
	req(c.Holder != "", "Holder")
	if c.Budget != (ratelimit.Limit{}) {
		if err := c.Budget.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("scheduler: config field Budget: %w", err))
		}
	}
	for _, d := range []struct {
		v    time.Duration
		name string
	}{{c.Horizon, "Horizon"}, {c.TickInterval, "TickInterval"}, {c.Watchdog, "Watchdog"}, {c.LeaseTTL, "LeaseTTL"}, {c.InfraBackoffMax, "InfraBackoffMax"}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("scheduler: config field %s is negative", d.name))
		}
	}
	if c.BatchSize < 0 {
		errs = append(errs, errors.New("scheduler: config field BatchSize is negative"))
	}
	if err := c.Policy.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *Config) defaults() {
	c.Topics = c.Topics.WithDefaults()
	if c.Source == "" {
		c.Source = "//certfleet/scheduler"
	}
	if c.Budget == (ratelimit.Limit{}) {
		c.Budget = ratelimit.Limit{Count: 10, Period: time.Second, Burst: 10}
	}
	dur := func(p *time.Duration, v time.Duration) {
		if *p <= 0 {
			*p = v
		}
	}
	dur(&c.TickInterval, 5*time.Second)
	dur(&c.Horizon, c.TickInterval)
	dur(&c.Watchdog, 6*time.Hour)
	dur(&c.LeaseTTL, 15*time.Second)
	dur(&c.InfraBackoffMax, 5*time.Second)
	if c.BatchSize == 0 {
		c.BatchSize = 500
	}
	c.Policy = c.Policy.WithDefaults()
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics(nil)
	}
	c.Clock = clock.Or(c.Clock)
}

// Scheduler emits renewal jobs while it holds the leader lease and records
// certificate outcomes. Safe for concurrent use.
type Scheduler struct {
	cfg    Config
	lease  *Lease
	state  atomic.Pointer[LeaseState]
	budget budget
	ticks  atomic.Uint64
	ready  atomic.Bool

	shiftMu sync.Mutex
	swept   map[[2]string]time.Time // (CA, issuer) -> when its re-checks were last brought forward
}

// New validates cfg and builds a Scheduler. It does not connect.
func New(cfg Config) (*Scheduler, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	s := &Scheduler{cfg: cfg, lease: NewLease(cfg.DB, LeaseName, cfg.Holder, cfg.LeaseTTL)}
	s.lease.clock = cfg.Clock
	rate := float64(cfg.Budget.Count) / cfg.Budget.Period.Seconds()
	s.budget = budget{rate: rate, capacity: max(float64(cfg.Budget.Burst), rate*cfg.Horizon.Seconds(), 1)}
	s.budget.tokens = s.budget.capacity
	s.state.Store(&LeaseState{})
	return s, nil
}

// Lease returns the current lease state as last acquired or renewed.
func (s *Scheduler) Lease() LeaseState { return *s.state.Load() }

// Ready reports whether the scheduler has reached the database at least once
// since it started (for /readyz); leader or standby alike.
func (s *Scheduler) Ready() bool { return s.ready.Load() }

// Run competes for the lease, ticks while it holds it, and renews it every
// LeaseTTL/3, until ctx ends; then it releases the lease (so a standby takes
// over at once) and returns nil. Database errors are logged and retried at
// the next interval; they end leadership once the lease runs out.
func (s *Scheduler) Run(ctx context.Context) error {
	log := s.cfg.Logger
	var wg sync.WaitGroup
	leaseCtx, stopLease := context.WithCancel(context.Background())
	wg.Add(1)
	go func() { // lease keeper: independent of tick length
		defer wg.Done()
		s.keepLease(leaseCtx)
	}()
	defer func() {
		stopLease()
		wg.Wait()
		if s.Lease().Held {
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := s.lease.Release(rctx); err != nil {
				log.Warn("releasing the lease", "err", err)
			}
			cancel()
		}
		s.cfg.Metrics.Leader.Set(0)
		s.cfg.Metrics.LeaseToken.Set(0)
	}()
	t := time.NewTicker(s.cfg.TickInterval)
	defer t.Stop()
	for {
		if ls := s.Lease(); ls.Held && s.cfg.Clock.Now().Before(ls.ValidUntil) {
			if _, err := s.Tick(ctx, s.Lease); err != nil && ctx.Err() == nil {
				log.Warn("tick failed", "err", err)
			}
		}
		if s.cfg.ARI != nil {
			s.drainARI(ctx)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// drainARI runs ARI re-check passes of 100 rows while full passes come back
// (an issuer swept after an incident, a backlog after an outage), for at
// most one TickInterval.
func (s *Scheduler) drainARI(ctx context.Context) {
	const pass = 100
	start := time.Now()
	for {
		n, err := s.RecheckARI(ctx, pass)
		if err != nil {
			if ctx.Err() == nil {
				s.cfg.Logger.Warn("ARI re-check failed", "err", err)
			}
			return
		}
		if n < pass || time.Since(start) >= s.cfg.TickInterval {
			return
		}
	}
}

func (s *Scheduler) keepLease(ctx context.Context) {
	every := s.cfg.LeaseTTL / 3
	for {
		actx, cancel := context.WithTimeout(ctx, every)
		ls, err := s.lease.TryAcquire(actx)
		cancel()
		prev := s.Lease()
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return
			}
			s.cfg.Logger.Warn("lease renewal failed", "err", err)
			if prev.Held && !s.cfg.Clock.Now().Before(prev.ValidUntil) {
				s.state.Store(&LeaseState{})
			}
		default:
			s.ready.Store(true)
			s.state.Store(&ls)
			if ls.Held != prev.Held || ls.Token != prev.Token {
				s.cfg.Logger.Info("lease state changed", "leader", ls.Held, "token", ls.Token, "holder", s.cfg.Holder)
			}
		}
		cur := s.Lease()
		s.cfg.Metrics.Leader.Set(b2f(cur.Held))
		s.cfg.Metrics.LeaseToken.Set(float64(cur.Token))
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// budget is a token bucket over the scheduler's clock: rate jobs per second,
// at most capacity at once.
type budget struct {
	mu       sync.Mutex
	rate     float64
	capacity float64
	tokens   float64
	last     time.Time
}

func (b *budget) available(now time.Time) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() && now.After(b.last) {
		b.tokens = min(b.capacity, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	if b.last.IsZero() || now.After(b.last) {
		b.last = now
	}
	return int(math.Floor(b.tokens + 1e-9))
}

func (b *budget) spend(n int) {
	b.mu.Lock()
	b.tokens -= float64(n)
	b.mu.Unlock()
}
