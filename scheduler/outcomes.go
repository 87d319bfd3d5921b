package scheduler

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/certfleet/certfleet/events"
)

// Outcomes are recorded by every scheduler instance, leader or standby (one
// consumer group, partitions shared): each write is conditional on the row's
// data, not on leadership, so a redelivered or late event changes nothing.
//
//	cert_obtained      a newer certificate than the one stored (by not_after):
//	                   store it and plan its renewal (ARI window if the CA
//	                   answers, else 2/3 of the lifetime; jitter always).
//	cert_failed        for the job in flight (request id matches):
//	  retryable        the worker retries at next_attempt_at: move the watchdog
//	                   past it.
//	  permanent        failures+1, next job on the escalating retry schedule,
//	                   with a new request id (the failed one is finished).
//	issuance_deferred  for the job in flight: move the watchdog past retry_at.
//
// Anything else on the topic, and events for SAN sets nobody manages, are
// ignored.
//
// ARI is asked only after the managed row is found and only of the row's
// own CA, when it is one of the configured CAs (ARIClient.Directories):
// never of a URL an event names.

// Handle is the events.Handler of the certificate events topic.
func (s *Scheduler) Handle(ctx context.Context, e events.Event) error {
	var effect string
	var err error
	switch p := e.Data.(type) {
	case *events.CertObtained:
		effect, err = s.obtained(ctx, p)
	case *events.CertFailed:
		effect, err = s.failed(ctx, p)
	case *events.IssuanceDeferred:
		effect, err = s.deferred(ctx, p)
	default:
		return nil
	}
	if err != nil {
		return err
	}
	s.cfg.Metrics.Outcomes.WithLabelValues(string(e.Type()), effect).Inc()
	return nil
}

const recordObtained = `
UPDATE managed_certificates
SET cert_ari_id = $2, cert_not_before = $3, cert_not_after = $4,
    next_renewal_at = $5, planned_at = $5, renewal_basis = $6,
    ari_window_start = $7, ari_window_end = $8, ari_retry_at = $9,
    request_id = NULL, emitted_at = NULL, failures = 0, last_error = '', updated_at = now()
WHERE identity = $1
  AND (cert_not_after IS NULL OR cert_not_after < $4 OR (cert_not_after = $4 AND cert_ari_id <> $2))`

// sameInstant compares at the database's precision (microseconds).
func sameInstant(a, b time.Time) bool {
	return a.Truncate(time.Microsecond).Equal(b.Truncate(time.Microsecond))
}

func (s *Scheduler) obtained(ctx context.Context, p *events.CertObtained) (string, error) {
	identity := events.Identity(p.SANs)
	// The managed row before anything goes out: a SAN set nobody manages, or
	// a certificate older than the one recorded, costs no ARI request.
	var ca string
	var curNotAfter *time.Time
	var curARIID *string
	err := s.cfg.DB.Pool().QueryRow(ctx, `SELECT ca_directory, cert_not_after, cert_ari_id FROM managed_certificates WHERE identity = $1`,
		identity).Scan(&ca, &curNotAfter, &curARIID)
	if errors.Is(err, errNoRows) {
		return "ignored", nil
	}
	if err != nil {
		return "", fmt.Errorf("scheduler: record cert_obtained: %w", err)
	}
	if curNotAfter != nil && (curNotAfter.After(p.NotAfter) || (sameInstant(*curNotAfter, p.NotAfter) && derefS(curARIID) == p.ARICertID)) {
		return "ignored", nil
	}
	now := s.cfg.Clock.Now().UTC()
	cert := &certLife{p.NotBefore.UTC(), p.NotAfter.UTC()}
	r := draw(identity, p.ARICertID)
	var w *Window
	var retryAt time.Time
	// ARI from the managed row's CA, and only when it is a configured one:
	// the event's ca field is not trusted to name where requests go.
	if s.cfg.ARI != nil && s.cfg.ARI.configured(ca) {
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := s.cfg.ARI.Fetch(fctx, ca, p.ARICertID)
		cancel()
		if err != nil {
			// Plan by lifetime now; the ARI re-check tries again soon.
			s.cfg.Metrics.ARIFetches.WithLabelValues("error").Inc()
			s.cfg.Logger.Debug("ARI fetch failed; planning by lifetime", "identity", identity, "err", err)
			retryAt = ariRecheckAt(s.cfg.Policy, now, max(resp.RetryAfter, s.cfg.Policy.ARIRecheckMin))
		} else {
			s.cfg.Metrics.ARIFetches.WithLabelValues("ok").Inc()
			w = &resp.Window
			retryAt = ariRecheckAt(s.cfg.Policy, now, resp.RetryAfter)
		}
	} else if s.cfg.ARI != nil {
		s.cfg.Logger.Debug("no ARI: the certificate's CA is not configured; planning by lifetime", "identity", identity, "ca", ca)
	}
	plan := planRenewal(s.cfg.Policy, now, cert, w, r)
	var ws, we, ra *time.Time
	if w != nil {
		ws, we = &w.Start, &w.End
	}
	if !retryAt.IsZero() {
		ra = &retryAt
	}
	tag, err := s.cfg.DB.Pool().Exec(ctx, recordObtained, identity, p.ARICertID, cert.NotBefore, cert.NotAfter,
		plan.RenewAt, string(plan.Basis), ws, we, ra)
	if err != nil {
		return "", fmt.Errorf("scheduler: record cert_obtained: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return "ignored", nil
	}
	s.cfg.Logger.Info("renewal planned", "identity", identity, "renew_at", plan.RenewAt, "basis", plan.Basis, "request_id", p.RequestID)
	return "planned", nil
}

func (s *Scheduler) failed(ctx context.Context, p *events.CertFailed) (string, error) {
	identity := events.Identity(p.SANs)
	now := s.cfg.Clock.Now().UTC()
	detail := p.ProblemType + ": " + p.Detail
	if p.Retryable {
		tag, err := s.cfg.DB.Pool().Exec(ctx, `UPDATE managed_certificates
SET next_renewal_at = $3, last_error = $4, updated_at = now()
WHERE identity = $1 AND request_id = $2`, identity, p.RequestID, p.NextAttemptAt.UTC().Add(s.cfg.Watchdog), truncate(detail))
		if err != nil {
			return "", fmt.Errorf("scheduler: record cert_failed: %w", err)
		}
		return effect(tag.RowsAffected(), "watchdog_moved"), nil
	}
	// Permanent: read the failure count and certificate, then move on only
	// if the row still waits for this request (optimistic, one statement).
	var failures int
	var notBefore, notAfter *time.Time
	err := s.cfg.DB.Pool().QueryRow(ctx, `SELECT failures, cert_not_before, cert_not_after FROM managed_certificates
WHERE identity = $1 AND request_id = $2`, identity, p.RequestID).Scan(&failures, &notBefore, &notAfter)
	if errors.Is(err, errNoRows) {
		return "ignored", nil
	}
	if err != nil {
		return "", fmt.Errorf("scheduler: record cert_failed: %w", err)
	}
	var cert *certLife
	if notBefore != nil && notAfter != nil {
		cert = &certLife{*notBefore, *notAfter}
	}
	at := nextRetryAt(s.cfg.Policy, now, failures+1, time.Time{}, cert, draw(identity, p.RequestID, strconv.Itoa(failures+1)))
	tag, err := s.cfg.DB.Pool().Exec(ctx, `UPDATE managed_certificates
SET failures = failures + 1, next_renewal_at = $4, planned_at = $4, renewal_basis = 'retry',
    request_id = NULL, emitted_at = NULL, last_error = $5, updated_at = now()
WHERE identity = $1 AND request_id = $2 AND failures = $3`, identity, p.RequestID, failures, at, truncate(detail))
	if err != nil {
		return "", fmt.Errorf("scheduler: record cert_failed: %w", err)
	}
	if tag.RowsAffected() == 1 {
		s.cfg.Logger.Warn("issuance failed; retry scheduled", "identity", identity, "request_id", p.RequestID,
			"failures", failures+1, "retry_at", at, "problem", p.ProblemType)
	}
	return effect(tag.RowsAffected(), "retry_scheduled"), nil
}

func (s *Scheduler) deferred(ctx context.Context, p *events.IssuanceDeferred) (string, error) {
	tag, err := s.cfg.DB.Pool().Exec(ctx, `UPDATE managed_certificates
SET next_renewal_at = $3, updated_at = now()
WHERE identity = $1 AND request_id = $2 AND next_renewal_at < $3`,
		events.Identity(p.SANs), p.RequestID, p.RetryAt.UTC().Add(s.cfg.Watchdog))
	if err != nil {
		return "", fmt.Errorf("scheduler: record issuance_deferred: %w", err)
	}
	return effect(tag.RowsAffected(), "watchdog_moved"), nil
}

func effect(n int64, done string) string {
	if n == 0 {
		return "ignored"
	}
	return done
}

func truncate(s string) string {
	if len(s) > 1024 {
		return s[:1024]
	}
	return s
}
