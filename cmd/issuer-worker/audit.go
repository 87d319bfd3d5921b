package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/audit"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/pipeline"
)

// auditedIssuer is one CA's issuer that records every certificate the CA
// issued (audit.Issuance: tenant, SANs, CA, account, serial) before the
// pipeline stores and publishes it. The row's ID is audit.IssuanceID, so a
// retry, or a resumed order downloading the same certificate, leaves one row.
// A database that does not take the row is retried until ctx ends; then the
// order's result is withheld (an error, so the job is retried and the order
// resumed): no certificate leaves the worker unaudited.
type auditedIssuer struct {
	next pipeline.Issuer
	ca   string // the CA's name (-ca NAME=URL)
	db   audit.Execer
	log  *slog.Logger
}

// Obtain is next's Obtain, recorded.
func (a auditedIssuer) Obtain(ctx context.Context, req acmeissuer.Request) (*acmeissuer.Result, error) {
	r, err := a.next.Obtain(ctx, req)
	if err != nil {
		return r, err
	}
	e := audit.Event{ID: audit.IssuanceID(a.ca, r.Serial), Action: audit.Issuance, Subject: events.Identity(req.SANs),
		Tenant: req.Tenant, SANs: req.SANs, CA: a.ca, Account: r.AccountURL, Serial: r.Serial,
		Detail: map[string]string{"not_after": r.NotAfter.UTC().Format(time.RFC3339), "resumed": fmt.Sprint(r.Resumed), "cert_url": r.CertURL}}
	b := backoff.WithContext(backoff.NewExponentialBackOff(backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0)), ctx)
	if err := backoff.Retry(func() error {
		err := audit.Record(ctx, a.db, e)
		if err != nil && ctx.Err() == nil {
			a.log.Warn("recording the issuance in the audit trail; retrying", "serial", r.Serial, "err", err)
		}
		return err
	}, b); err != nil {
		// %v, not %w: a database outage must not read as the CA's
		// (acmeissuer.Unavailable would count it against the CA's breaker).
		return nil, fmt.Errorf("recording the issuance of serial %s in the audit trail: %v", r.Serial, err)
	}
	return r, nil
}
