package scheduler

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/infraretry"
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
// The events topic is not trusted beyond what an event proves (anyone who
// may write it could otherwise make certificates expire). Workers and
// scheduler share the database, and a worker stores what it reports before
// it publishes, so an event is recorded only when it matches that:
//
//	cert_obtained      the certificate stored for its request id
//	                   (issued_certificates: SAN set, serial, ARI id,
//	                   not_before and not_after, all equal).
//	cert_failed,       a request a worker claimed for the same SAN set
//	issuance_deferred  (issuance_requests); the time it names at most
//	                   events.MaxRetryAhead after now (events.CheckHorizon).
//
// An event that does not match is refused: Handle returns it permanent, the
// subscriber dead-letters it at once (a data error from an untrusted writer:
// retrying cannot help, and dropping it would hide the attempt), and
// certfleet_scheduler_events_refused_total counts it. A chain that verifies
// against the CA's roots is not enough: a genuine certificate the fleet did
// not order (its key is not in the database) must not move the renewal of
// the one the fleet serves.
//
// ARI is asked only after the managed row is found and only of the row's
// own CA, when it is one of the configured CAs (ARIClient.Directories):
// never of a URL an event names.

// ErrRefused is wrapped by the error Handle returns for an event it does not
// trust (see above); that error is also permanent (events.Permanent).
var ErrRefused = errors.New("event refused")

// Refusal reasons, the reason label of certfleet_scheduler_events_refused_total.
const (
	refusedUnmatched = "unmatched"     // not what a worker stored
	refusedTooFar    = "too_far_ahead" // a time beyond its events bound
)

type refusedError struct {
	reason string
	err    error
}

func (e *refusedError) Error() string {
	return "scheduler: event refused (" + e.reason + "): " + e.err.Error()
}

func (e *refusedError) Unwrap() []error { return []error{ErrRefused, e.err} }

func refuse(reason, format string, args ...any) error {
	return &refusedError{reason: reason, err: fmt.Errorf(format, args...)}
}

// Handle is the events.Handler of the certificate events topic.
//
// An infrastructure failure (the database unreachable or restarting) says
// nothing about the event: Handle retries it with capped backoff
// (Config.InfraBackoffMax) until it succeeds or ctx ends (the subscriber's
// shutdown; the record is then left uncommitted and redelivered), so an
// outage never dead-letters an outcome. Only data errors are dead-lettered
// (returned permanent): an event refused as untrusted (above), or one the
// database refuses for its data (internal/infraretry.ErrData).
func (s *Scheduler) Handle(ctx context.Context, e events.Event) error {
	var handle func(context.Context) (string, error)
	switch p := e.Data.(type) {
	case *events.CertObtained:
		handle = func(ctx context.Context) (string, error) { return s.obtained(ctx, p) }
	case *events.CertFailed:
		handle = func(ctx context.Context) (string, error) { return s.failed(ctx, e, p) }
	case *events.IssuanceDeferred:
		handle = func(ctx context.Context) (string, error) { return s.deferred(ctx, e, p) }
	default:
		return nil
	}
	effect, err := infraretry.Do(ctx, infraretry.Policy{Max: s.cfg.InfraBackoffMax, Logger: s.cfg.Logger,
		IsPermanent: func(err error) bool { return errors.As(err, new(*refusedError)) }},
		"recording "+string(e.Type()), handle)
	if ref := (*refusedError)(nil); errors.As(err, &ref) {
		s.cfg.Metrics.EventsRefused.WithLabelValues(string(e.Type()), ref.reason).Inc()
		s.cfg.Logger.Warn("certificate event refused; dead-lettering it", "type", e.Type(), "event_id", e.ID,
			"source", e.Source, "topic", e.Record.Topic, "partition", e.Record.Partition, "offset", e.Record.Offset, "err", err)
		return events.Permanent(err)
	}
	if errors.Is(err, infraretry.ErrData) {
		s.cfg.Logger.Error("certificate event refused by the database; dead-lettering it", "type", e.Type(), "event_id", e.ID,
			"topic", e.Record.Topic, "partition", e.Record.Partition, "offset", e.Record.Offset, "err", err)
		return events.Permanent(err)
	}
	if err != nil {
		return err // ctx ended: not handled, not committed
	}
	s.cfg.Metrics.Outcomes.WithLabelValues(string(e.Type()), effect).Inc()
	return nil
}

const recordObtained = `
UPDATE managed_certificates
SET cert_ari_id = $2, cert_not_before = $3, cert_not_after = $4,
    next_renewal_at = $10, planned_at = $5, renewal_basis = $6,
    ari_window_start = $7, ari_window_end = $8, ari_retry_at = $9,
    request_id = NULL, emitted_at = NULL, failures = 0, last_error = '', updated_at = now()
WHERE identity = $1
  AND (cert_not_after IS NULL OR cert_not_after < $4 OR (cert_not_after = $4 AND cert_ari_id <> $2))`

// storedCertificate is what a worker stored for a request (certstore.Complete,
// before it published cert_obtained), through issued_certificates_request_idx.
const storedCertificate = `
SELECT identity, serial, ari_cert_id, not_before, not_after FROM issued_certificates WHERE request_id = $1`

// matchStored refuses a cert_obtained that is not the certificate a worker
// stored for its request id.
func (s *Scheduler) matchStored(ctx context.Context, identity string, p *events.CertObtained) error {
	var st struct {
		identity, serial, ariID string
		notBefore, notAfter     time.Time
	}
	err := s.cfg.DB.Pool().QueryRow(ctx, storedCertificate, p.RequestID).Scan(&st.identity, &st.serial, &st.ariID, &st.notBefore, &st.notAfter)
	differs := func(format string, args ...any) error {
		return refuse(refusedUnmatched, "cert_obtained for request %q is not the certificate a worker stored: "+format,
			append([]any{p.RequestID}, args...)...)
	}
	rfc := func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
	switch {
	case errors.Is(err, errNoRows):
		return differs("none is stored for that request")
	case err != nil:
		return fmt.Errorf("scheduler: record cert_obtained: stored certificate: %w", err)
	case st.identity != identity:
		return differs("the stored one is for another SAN set")
	case st.serial != p.Serial:
		return differs("serial %s, stored %s", p.Serial, st.serial)
	case st.ariID != p.ARICertID:
		return differs("ari_cert_id %s, stored %s", p.ARICertID, st.ariID)
	case !sameInstant(st.notBefore, p.NotBefore):
		return differs("not_before %s, stored %s", rfc(p.NotBefore), rfc(st.notBefore))
	case !sameInstant(st.notAfter, p.NotAfter):
		return differs("not_after %s, stored %s", rfc(p.NotAfter), rfc(st.notAfter))
	}
	return nil
}

// sameInstant compares at the database's precision (microseconds).
func sameInstant(a, b time.Time) bool {
	return a.Truncate(time.Microsecond).Equal(b.Truncate(time.Microsecond))
}

func (s *Scheduler) obtained(ctx context.Context, p *events.CertObtained) (string, error) {
	identity := events.Identity(p.SANs)
	if err := s.matchStored(ctx, identity, p); err != nil {
		return "", err
	}
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
		plan.RenewAt, string(plan.Basis), ws, we, ra, plan.dueAt())
	if err != nil {
		return "", fmt.Errorf("scheduler: record cert_obtained: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return "ignored", nil
	}
	s.cfg.Logger.Info("renewal planned", "identity", identity, "renew_at", plan.RenewAt, "basis", plan.Basis, "request_id", p.RequestID)
	return "planned", nil
}

// claimed refuses an event about a request that no worker claimed for the
// event's SAN set (certstore.Claim comes before every cert_failed and
// issuance_deferred a worker publishes), and one whose retry time is beyond
// events' bound.
func (s *Scheduler) claimed(ctx context.Context, e events.Event, requestID, identity string) error {
	if err := events.CheckHorizon(e, s.cfg.Clock.Now()); err != nil {
		return &refusedError{reason: refusedTooFar, err: err}
	}
	var stored string
	err := s.cfg.DB.Pool().QueryRow(ctx, `SELECT identity FROM issuance_requests WHERE request_id = $1`, requestID).Scan(&stored)
	switch {
	case errors.Is(err, errNoRows):
		return refuse(refusedUnmatched, "%s for request %q: no worker has claimed that request", e.Type(), requestID)
	case err != nil:
		return fmt.Errorf("scheduler: record %s: claim: %w", e.Type(), err)
	case stored != identity:
		return refuse(refusedUnmatched, "%s for request %q: the request was claimed for another SAN set", e.Type(), requestID)
	}
	return nil
}

func (s *Scheduler) failed(ctx context.Context, e events.Event, p *events.CertFailed) (string, error) {
	identity := events.Identity(p.SANs)
	if err := s.claimed(ctx, e, p.RequestID, identity); err != nil {
		return "", err
	}
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

func (s *Scheduler) deferred(ctx context.Context, e events.Event, p *events.IssuanceDeferred) (string, error) {
	identity := events.Identity(p.SANs)
	if err := s.claimed(ctx, e, p.RequestID, identity); err != nil {
		return "", err
	}
	tag, err := s.cfg.DB.Pool().Exec(ctx, `UPDATE managed_certificates
SET next_renewal_at = $3, updated_at = now()
WHERE identity = $1 AND request_id = $2 AND next_renewal_at < $3`,
		identity, p.RequestID, p.RetryAt.UTC().Add(s.cfg.Watchdog))
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
