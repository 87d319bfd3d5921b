package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/internal/envflag"
	"github.com/certfleet/certfleet/retention"
	"github.com/certfleet/certfleet/scheduler"
)

// retentionLeaseName is the leases row the schedulers compete for to run
// the retention job: its own, so the job's leader need not be the tick's.
const retentionLeaseName = "retention"

// retentionConfig is the retention job's part of the configuration
// (-retention-*).
type retentionConfig struct {
	Ages     retention.Ages
	Interval time.Duration // 0: the job is off
	Batch    int
	LeaseTTL time.Duration
}

// registerRetentionFlags defines the -retention-* flags on fs.
func registerRetentionFlags(fs *envflag.Set) *retentionConfig {
	r := &retentionConfig{}
	def := retention.DefaultAges()
	age := func(p *time.Duration, name, env string, d time.Duration, what string) {
		fs.Duration(p, name, env, d, what+"; 0: never (e.g. when CockroachDB's row-level TTL prunes the table)")
	}
	fs.Duration(&r.Interval, "retention-interval", "CERTFLEET_RETENTION_INTERVAL", time.Hour, "time between passes of the retention job, run by one scheduler at a time (its own lease); 0: no retention job in this process")
	fs.Int(&r.Batch, "retention-batch", "CERTFLEET_RETENTION_BATCH", 500, "rows per retention statement (batches repeat with a pause until one comes back short)")
	fs.Duration(&r.LeaseTTL, "retention-lease-ttl", "CERTFLEET_RETENTION_LEASE_TTL", time.Minute, "the retention lease's period")
	age(&r.Ages.IdleBuckets, "retention-idle-buckets", "CERTFLEET_RETENTION_IDLE_BUCKETS", def.IdleBuckets, "delete a rate-limit bucket full and unchanged this long (a missing bucket is a full one)")
	age(&r.Ages.EndedRequests, "retention-ended-requests", "CERTFLEET_RETENTION_ENDED_REQUESTS", def.EndedRequests, "delete an issuance request ended (succeeded, failed, released) this long ago; at least 744h (31 days)")
	age(&r.Ages.KeyGrace, "retention-key-grace", "CERTFLEET_RETENTION_KEY_GRACE", def.KeyGrace, "destroy the sealed key of a certificate expired this long ago (crypto-shredding; the row stays)")
	age(&r.Ages.ExpiredCerts, "retention-expired-certificates", "CERTFLEET_RETENTION_EXPIRED_CERTIFICATES", def.ExpiredCerts, "delete a certificate row expired this long ago (at least -retention-key-grace)")
	age(&r.Ages.RelayedOutbox, "retention-relayed-outbox", "CERTFLEET_RETENTION_RELAYED_OUTBOX", def.RelayedOutbox, "delete an override change notification published this long ago")
	age(&r.Ages.DLQReplays, "retention-dlq-replays", "CERTFLEET_RETENTION_DLQ_REPLAYS", def.DLQReplays, "delete a dead-letter replay record this old")
	age(&r.Ages.DNS01Records, "retention-dns01-records", "CERTFLEET_RETENTION_DNS01_RECORDS", def.DNS01Records, "delete a DNS-01 record row expired this long ago (the workers remove expired records within minutes; older ones could not be removed)")
	age(&r.Ages.Audit, "retention-audit", "CERTFLEET_RETENTION_AUDIT", def.Audit, "delete an audit event this old (default never: the application then needs no DELETE on audit_events)")
	return r
}

// check validates the job's settings; errors name the flag.
func (r *retentionConfig) check() error {
	if r.Interval < 0 {
		return fmt.Errorf("-retention-interval: %v is negative", r.Interval)
	}
	if r.Batch < 1 || r.Batch > 10_000 {
		return fmt.Errorf("-retention-batch: %d is not between 1 and 10000", r.Batch)
	}
	if r.LeaseTTL < 30*time.Second {
		return fmt.Errorf("-retention-lease-ttl: %v is below 30s (a batch must fit well within it)", r.LeaseTTL)
	}
	if err := r.Ages.Check(); err != nil {
		return fmt.Errorf("-retention-*: %w", err)
	}
	return nil
}

// startRetention runs the retention job until ctx ends, leader-only through
// the scheduler's lease protocol on its own lease row, and releases the
// lease then. The returned channel closes once it has stopped. With the job
// off it is closed at once.
func startRetention(ctx context.Context, d *db.DB, holder string, r *retentionConfig, log *slog.Logger, reg prometheus.Registerer) (<-chan struct{}, error) {
	done := make(chan struct{})
	if r.Interval == 0 {
		close(done)
		return done, nil
	}
	p, err := retention.New(retention.Config{DB: d, Ages: r.Ages, Batch: r.Batch, Logger: log, Metrics: retention.NewMetrics(reg)})
	if err != nil {
		return nil, err
	}
	lease := scheduler.NewLease(d, retentionLeaseName, holder, r.LeaseTTL)
	leader := retention.LeaderFunc(func(ctx context.Context) (time.Time, error) {
		s, err := lease.TryAcquire(ctx)
		return s.ValidUntil, err
	})
	go func() {
		defer close(done)
		_ = p.Run(ctx, leader, r.Interval)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := lease.Release(rctx); err != nil {
			log.Warn("retention: releasing the lease", "err", err)
		}
	}()
	return done, nil
}
