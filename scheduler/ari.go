package scheduler

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// ARIClient fetches ACME Renewal Information (RFC 9773): the renewalInfo URL
// from each CA's directory (cached), then GET {renewalInfo}/{ari cert id}.
// Safe for concurrent use.
type ARIClient struct {
	// HTTP is the client; nil means one with a 10 s timeout. Set its
	// transport's RootCAs for a private CA such as Pebble.
	HTTP *http.Client
	// Directories maps configured CA names to directory URLs; a managed
	// certificate whose CA is an https URL needs no entry.
	Directories map[string]string
	// Concurrency bounds fetches in flight in RecheckARI. Default 4.
	Concurrency int

	mu   sync.Mutex
	urls map[string]string // directory -> renewalInfo base URL
}

// ErrNoARI means the CA's directory has no renewalInfo endpoint.
var ErrNoARI = errors.New("scheduler: CA does not offer ARI")

// ARIResponse is one renewalInfo answer.
type ARIResponse struct {
	Window     Window
	RetryAfter time.Duration // 0 when the CA sent none
}

func (c *ARIClient) client() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return &http.Client{Timeout: 10 * time.Second}
}

func (c *ARIClient) renewalInfoURL(ctx context.Context, ca string) (string, error) {
	dir := ca
	if d, ok := c.Directories[ca]; ok {
		dir = d
	}
	if !strings.HasPrefix(dir, "https://") {
		return "", fmt.Errorf("%w: no directory URL for CA %q", ErrNoARI, ca)
	}
	c.mu.Lock()
	u, ok := c.urls[dir]
	c.mu.Unlock()
	if ok {
		if u == "" {
			return "", ErrNoARI
		}
		return u, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, dir, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.client().Do(req)
	if err != nil {
		return "", fmt.Errorf("scheduler: ACME directory: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("scheduler: ACME directory %s: HTTP %d", dir, resp.StatusCode)
	}
	var d struct {
		RenewalInfo string `json:"renewalInfo"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&d); err != nil {
		return "", fmt.Errorf("scheduler: ACME directory %s: %w", dir, err)
	}
	c.mu.Lock()
	if c.urls == nil {
		c.urls = map[string]string{}
	}
	c.urls[dir] = strings.TrimSuffix(d.RenewalInfo, "/")
	c.mu.Unlock()
	if d.RenewalInfo == "" {
		return "", ErrNoARI
	}
	return strings.TrimSuffix(d.RenewalInfo, "/"), nil
}

// Fetch returns the suggested window of the certificate ariID issued by ca.
func (c *ARIClient) Fetch(ctx context.Context, ca, ariID string) (ARIResponse, error) {
	base, err := c.renewalInfoURL(ctx, ca)
	if err != nil {
		return ARIResponse{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/"+ariID, nil)
	if err != nil {
		return ARIResponse{}, err
	}
	resp, err := c.client().Do(req)
	if err != nil {
		return ARIResponse{}, fmt.Errorf("scheduler: renewalInfo: %w", err)
	}
	defer resp.Body.Close()
	ra := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	if resp.StatusCode != http.StatusOK {
		return ARIResponse{RetryAfter: ra}, fmt.Errorf("scheduler: renewalInfo %s: HTTP %d", ariID, resp.StatusCode)
	}
	var body struct {
		SuggestedWindow struct {
			Start time.Time `json:"start"`
			End   time.Time `json:"end"`
		} `json:"suggestedWindow"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body); err != nil {
		return ARIResponse{RetryAfter: ra}, fmt.Errorf("scheduler: renewalInfo %s: %w", ariID, err)
	}
	w := Window{Start: body.SuggestedWindow.Start.UTC(), End: body.SuggestedWindow.End.UTC()}
	if !w.Valid() {
		return ARIResponse{RetryAfter: ra}, fmt.Errorf("scheduler: renewalInfo %s: invalid window %v..%v", ariID, w.Start, w.End)
	}
	return ARIResponse{Window: w, RetryAfter: ra}, nil
}

// parseRetryAfter reads delay-seconds or an HTTP date; 0 when absent or bad.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
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
WHERE ari_retry_at <= $1 AND cert_ari_id IS NOT NULL AND cert_not_before IS NOT NULL
ORDER BY ari_retry_at LIMIT $2`

// updateARI stores a fresh window; the plan moves only when no job is in flight.
const updateARI = `
UPDATE managed_certificates
SET ari_window_start = $3, ari_window_end = $4, ari_retry_at = $5,
    next_renewal_at = CASE WHEN request_id IS NULL THEN $6 ELSE next_renewal_at END,
    planned_at      = CASE WHEN request_id IS NULL THEN $6 ELSE planned_at END,
    renewal_basis   = CASE WHEN request_id IS NULL THEN $7 ELSE renewal_basis END,
    updated_at = now()
WHERE identity = $1 AND cert_ari_id = $2`

// RecheckARI fetches the ARI windows whose Retry-After has passed (at most
// limit rows, oldest first, through managed_certificates_ari_retry_idx) with
// bounded concurrency, and re-plans rows with no job in flight. A failed
// fetch keeps the stored plan and is retried after the CA's Retry-After, or
// at the earliest after Policy.ARIRecheckMin, so an unreachable CA is not
// hammered. It returns how many rows it looked at.
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
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cmp.Or(s.cfg.ARI.Concurrency, 4))
	for _, r := range due {
		g.Go(func() error {
			fctx, cancel := context.WithTimeout(gctx, 10*time.Second)
			resp, ferr := s.cfg.ARI.Fetch(fctx, r.ca, r.ariID)
			cancel()
			cert := &Cert{r.notBefore, r.notAfter}
			var w Window
			var plan Plan
			if ferr != nil {
				s.cfg.Metrics.ARIFetches.WithLabelValues("error").Inc()
				s.cfg.Logger.Debug("ARI fetch failed", "identity", r.identity, "err", ferr)
				plan = PlanRenewal(s.cfg.Policy, now, cert, nil, Draw(r.identity, r.ariID))
				if !r.planned.Before(now) {
					plan.RenewAt = r.planned // keep the stored plan; retry the fetch later
				}
				resp.RetryAfter = max(resp.RetryAfter, s.cfg.Policy.ARIRecheckMin)
			} else {
				s.cfg.Metrics.ARIFetches.WithLabelValues("ok").Inc()
				w = resp.Window
				plan = KeepARIPoint(s.cfg.Policy, now, cert, w, r.planned, Draw(r.identity, r.ariID))
			}
			_, err := s.cfg.DB.Pool().Exec(gctx, updateARI, r.identity, r.ariID, nullTime(w.Start), nullTime(w.End),
				ARIRecheckAt(s.cfg.Policy, now, resp.RetryAfter), plan.RenewAt, string(plan.Basis))
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return len(due), fmt.Errorf("scheduler: ARI re-check: %w", err)
	}
	return len(due), nil
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
