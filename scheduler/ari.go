package scheduler

import (
	"cmp"
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"golang.org/x/sync/errgroup"
)

// ARIClient fetches ACME Renewal Information (RFC 9773) through acmez's
// acme.Client.GetRenewalInfo, with one acme.Client per configured CA
// directory (each reads its directory once). It asks only the CAs of
// Directories: a CA named any other way (an https URL no -ca entry has, as
// an event or a hand-edited row might name) gets ErrNoARI and no request
// goes out, so the clients it keeps (and acmez's own directory cache, which
// is keyed by URL and never shrinks) hold at most len(Directories) entries.
// Safe for concurrent use.
type ARIClient struct {
	// HTTP is the client; nil means one with a 10 s timeout. Set its
	// transport's RootCAs for a private CA such as Pebble.
	HTTP *http.Client
	// Directories are the configured CAs (the scheduler's -ca): name to ACME
	// directory URL. A managed certificate's CA is one of the names, or
	// exactly one of the directory URLs; nothing else is asked for ARI.
	Directories map[string]string
	// Concurrency bounds fetches in flight in RecheckARI. Default 4.
	Concurrency int

	mu      sync.Mutex
	clients map[string]*acme.Client // by configured directory URL: at most len(Directories)
}

// ErrNoARI means the CA's directory has no renewalInfo endpoint, or the CA
// is not one of the configured CAs (ARIClient.Directories).
var ErrNoARI = errors.New("scheduler: CA does not offer ARI")

// ARIResponse is one renewalInfo answer.
type ARIResponse struct {
	Window     Window
	RetryAfter time.Duration // 0 when the CA sent none
}

// directory returns the directory URL of ca when ca is a configured CA, by
// name or by its exact directory URL.
func (c *ARIClient) directory(ca string) (string, bool) {
	if d, ok := c.Directories[ca]; ok {
		return d, true
	}
	for _, d := range c.Directories {
		if d == ca {
			return d, true
		}
	}
	return "", false
}

// configured reports whether ARI may be asked of ca.
func (c *ARIClient) configured(ca string) bool {
	_, ok := c.directory(ca)
	return ok
}

// acmeClient returns the ACME client of ca's directory.
func (c *ARIClient) acmeClient(ca string) (*acme.Client, error) {
	dir, ok := c.directory(ca)
	if !ok {
		return nil, fmt.Errorf("%w: CA %q is not configured (-ca)", ErrNoARI, ca)
	}
	if !strings.HasPrefix(dir, "https://") {
		return nil, fmt.Errorf("%w: CA %q has no https directory URL", ErrNoARI, ca)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl, ok := c.clients[dir]; ok {
		return cl, nil
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	if c.clients == nil {
		c.clients = map[string]*acme.Client{}
	}
	cl := &acme.Client{Directory: dir, HTTPClient: hc, UserAgent: "certfleet-scheduler"}
	c.clients[dir] = cl
	return cl, nil
}

// Fetch returns the suggested window of the certificate ariID issued by ca,
// and how long the CA asks to wait before asking again. acmez retries a
// failed or malformed answer a few times within ctx; an error carries no
// Retry-After.
func (c *ARIClient) Fetch(ctx context.Context, ca, ariID string) (ARIResponse, error) {
	cl, err := c.acmeClient(ca)
	if err != nil {
		return ARIResponse{}, err
	}
	leaf, err := certOfARIID(ariID)
	if err != nil {
		return ARIResponse{}, err
	}
	ri, err := cl.GetRenewalInfo(ctx, leaf)
	if errors.Is(err, acme.ErrUnsupported) {
		return ARIResponse{}, fmt.Errorf("%w: %w", ErrNoARI, err)
	}
	if err != nil {
		return ARIResponse{}, fmt.Errorf("scheduler: renewalInfo %s: %w", ariID, err)
	}
	w := Window{Start: ri.SuggestedWindow.Start.UTC(), End: ri.SuggestedWindow.End.UTC()}
	if !w.Valid() {
		return ARIResponse{}, fmt.Errorf("scheduler: renewalInfo %s: invalid window %v..%v", ariID, w.Start, w.End)
	}
	var ra time.Duration
	if ri.RetryAfter != nil {
		// acmez turns Retry-After (whole seconds, or an HTTP date) into an
		// instant on the wall clock; the scheduler wants the delay.
		ra = max(time.Until(*ri.RetryAfter).Round(time.Second), 0)
	}
	return ARIResponse{Window: w, RetryAfter: ra}, nil
}

// certOfARIID returns a certificate carrying just what an ARI certificate id
// (RFC 9773 section 4.1, as events.ARICertID builds it) is made of, the
// authority key identifier and the serial number: GetRenewalInfo takes a
// certificate, the inventory keeps the id.
func certOfARIID(ariID string) (*x509.Certificate, error) {
	bad := func() error { return fmt.Errorf("scheduler: %q is not an ARI certificate id", ariID) }
	akiText, serialText, ok := strings.Cut(ariID, ".")
	if !ok {
		return nil, bad()
	}
	aki, err1 := base64.RawURLEncoding.DecodeString(akiText)
	serial, err2 := base64.RawURLEncoding.DecodeString(serialText)
	if err1 != nil || err2 != nil || len(aki) == 0 || len(serial) == 0 || serial[0]&0x80 != 0 {
		return nil, bad()
	}
	cert := &x509.Certificate{AuthorityKeyId: aki, SerialNumber: new(big.Int).SetBytes(serial)}
	if id, err := acme.ARIUniqueIdentifier(cert); err != nil || id != ariID {
		return nil, bad() // not DER's minimal encoding of the serial
	}
	return cert, nil
}

// ariRow is a row whose ARI window is due for a re-check.
type ariRow struct {
	identity, ca, ariID, requestID string
	notBefore, notAfter, planned   time.Time
}

const dueARI = `
SELECT identity, ca_directory, cert_ari_id, COALESCE(request_id, ''), cert_not_before, cert_not_after,
       COALESCE(planned_at, next_renewal_at)
FROM managed_certificates
WHERE ari_retry_at <= $1 AND ari_retry_at IS NOT NULL AND cert_ari_id IS NOT NULL AND cert_not_before IS NOT NULL
ORDER BY ari_retry_at LIMIT $2`

// updateARI stores a fresh window; the plan moves only when no job is in flight.
const updateARI = `
UPDATE managed_certificates
SET ari_window_start = $3, ari_window_end = $4, ari_retry_at = $5,
    next_renewal_at = CASE WHEN request_id IS NULL THEN $8 ELSE next_renewal_at END,
    planned_at      = CASE WHEN request_id IS NULL THEN $6 ELSE planned_at END,
    renewal_basis   = CASE WHEN request_id IS NULL THEN $7 ELSE renewal_basis END,
    updated_at = now()
WHERE identity = $1 AND cert_ari_id = $2`

// sweepIssuer brings forward the ARI re-check of every certificate of one
// issuer (the authority key identifier part $2 of cert_ari_id) at one CA
// whose known window has not passed yet: one statement, run at most once per
// issuer and ARIRecheckDefault.
const sweepIssuer = `
UPDATE managed_certificates SET ari_retry_at = $3, updated_at = now()
WHERE ca_directory = $1 AND substr(cert_ari_id, 1, length($2)) = $2 AND ari_retry_at > $3
  AND (ari_window_end IS NULL OR ari_window_end > $3)`

// stopARI ends the re-checks of a row whose CA is not configured.
const stopARI = `
UPDATE managed_certificates SET ari_retry_at = NULL, updated_at = now()
WHERE identity = $1 AND cert_ari_id = $2`

// RecheckARI fetches the ARI windows whose Retry-After has passed (at most
// limit rows, oldest first, through managed_certificates_ari_retry_nn_idx,
// which holds no NULLs: schema 0018) with bounded concurrency, and re-plans rows with no job in flight. A row whose
// CA is not configured (ARIClient.Directories) is not asked about and is
// re-checked no more. A failed fetch keeps the stored plan and is retried
// after the CA's Retry-After, or at the earliest after Policy.ARIRecheckMin,
// so an unreachable CA is not hammered. It returns how many rows it looked
// at.
//
// A window that has entirely passed is the CA asking for a replacement now,
// as it does to signal an incident revocation: the row goes to the incident
// lane (BasisIncident, IncidentDue). The first such window of an issuer
// (the authority key identifier of the ARI id) at a CA is taken for the
// start of a shift: it is logged and metered
// (certfleet_scheduler_ari_incident_windows_total,
// certfleet_scheduler_ari_shift) and the re-check of every certificate of
// that issuer at that CA is brought forward to now, so the whole fleet's
// windows are read again within the passes that follow (Run drains due
// re-checks every tick) rather than over the CA's Retry-After period.
func (s *Scheduler) RecheckARI(ctx context.Context, limit int) (int, error) {
	if s.cfg.ARI == nil {
		return 0, nil
	}
	now := s.cfg.Clock.Now().UTC()
	rows, err := s.cfg.DB.Pool().Query(ctx, dueARI, now, limit)
	if err != nil {
		return 0, fmt.Errorf("scheduler: ARI re-check: %w", err)
	}
	var due []ariRow
	for rows.Next() {
		var r ariRow
		if err := rows.Scan(&r.identity, &r.ca, &r.ariID, &r.requestID, &r.notBefore, &r.notAfter, &r.planned); err != nil {
			rows.Close()
			return 0, err
		}
		due = append(due, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("scheduler: ARI re-check: %w", err)
	}
	var mu sync.Mutex
	checked := map[string]bool{}     // CAs answered in this pass
	incidents := map[[2]string]int{} // (CA, issuer) -> windows in the past
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cmp.Or(s.cfg.ARI.Concurrency, 4))
	for _, r := range due {
		g.Go(func() error {
			if !s.cfg.ARI.configured(r.ca) {
				// Not one of the -ca CAs (any more): no request goes out, and
				// the row stops being re-checked; its plan stands.
				s.cfg.Logger.Debug("no ARI: the certificate's CA is not configured", "identity", r.identity, "ca", r.ca)
				_, err := s.cfg.DB.Pool().Exec(gctx, stopARI, r.identity, r.ariID)
				return err
			}
			fctx, cancel := context.WithTimeout(gctx, 10*time.Second)
			resp, ferr := s.cfg.ARI.Fetch(fctx, r.ca, r.ariID)
			cancel()
			cert := &certLife{r.notBefore, r.notAfter}
			var w Window
			var plan renewalPlan
			if ferr != nil {
				s.cfg.Metrics.ARIFetches.WithLabelValues("error").Inc()
				s.cfg.Logger.Debug("ARI fetch failed", "identity", r.identity, "err", ferr)
				plan = planRenewal(s.cfg.Policy, now, cert, nil, draw(r.identity, r.ariID))
				if !r.planned.Before(now) {
					plan.RenewAt = r.planned // keep the stored plan; retry the fetch later
				}
				resp.RetryAfter = max(resp.RetryAfter, s.cfg.Policy.ARIRecheckMin)
			} else {
				s.cfg.Metrics.ARIFetches.WithLabelValues("ok").Inc()
				w = resp.Window
				plan = keepARIPoint(s.cfg.Policy, now, cert, w, r.planned, draw(r.identity, r.ariID))
				mu.Lock()
				checked[r.ca] = true
				if plan.Basis == BasisIncident {
					aki, _, _ := strings.Cut(r.ariID, ".")
					incidents[[2]string{r.ca, aki}]++
				}
				mu.Unlock()
			}
			_, err := s.cfg.DB.Pool().Exec(gctx, updateARI, r.identity, r.ariID, nullTime(w.Start), nullTime(w.End),
				ariRecheckAt(s.cfg.Policy, now, resp.RetryAfter), plan.RenewAt, string(plan.Basis), plan.dueAt())
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return len(due), fmt.Errorf("scheduler: ARI re-check: %w", err)
	}
	if err := s.noticeShift(ctx, now, checked, incidents); err != nil {
		return len(due), err
	}
	return len(due), nil
}

// noticeShift meters the windows a re-check pass found in the past and, for
// an issuer not swept within ARIRecheckDefault, brings forward the re-check
// of all its certificates at that CA (see RecheckARI).
func (s *Scheduler) noticeShift(ctx context.Context, now time.Time, checked map[string]bool, incidents map[[2]string]int) error {
	m := s.cfg.Metrics
	inShift := map[string]bool{}
	for k, n := range incidents {
		ca, aki := k[0], k[1]
		inShift[ca] = true
		m.ARIIncidents.WithLabelValues(ca).Add(float64(n))
		s.shiftMu.Lock()
		last, seen := s.swept[k]
		fresh := !seen || now.Sub(last) >= s.cfg.Policy.ARIRecheckDefault
		if fresh {
			if s.swept == nil {
				s.swept = map[[2]string]time.Time{}
			}
			s.swept[k] = now
		}
		s.shiftMu.Unlock()
		if !fresh {
			s.cfg.Logger.Info("ARI windows in the past: certificates moved to the incident lane", "ca", ca, "issuer_key_id", aki, "count", n)
			continue
		}
		tag, err := s.cfg.DB.Pool().Exec(ctx, sweepIssuer, ca, aki+".", now)
		if err != nil {
			s.shiftMu.Lock()
			delete(s.swept, k) // try again at the next pass
			s.shiftMu.Unlock()
			return fmt.Errorf("scheduler: ARI re-check: bringing the issuer's re-checks forward: %w", err)
		}
		s.cfg.Logger.Warn("the CA moved ARI windows into the past (an incident revocation?): reissuing them first, and re-checking every certificate of the issuer now",
			"ca", ca, "issuer_key_id", aki, "windows_in_the_past", n, "rechecks_brought_forward", tag.RowsAffected())
	}
	for ca := range checked {
		m.ARIShift.WithLabelValues(ca).Set(b2f(inShift[ca]))
	}
	return nil
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
