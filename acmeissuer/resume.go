package acmeissuer

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
)

// PendingOrder is an order the CA has created for a request, and the
// certificate key it is to be finalised with. A worker that dies mid-order
// leaves one behind; its successor continues it (Request.Resume) instead of
// ordering again, so a crash does not cost an order at the CA. Its String
// and LogValue leave the key out.
type PendingOrder struct {
	URL string
	Key crypto.Signer
}

func (p PendingOrder) String() string { return "acmeissuer.PendingOrder{" + p.URL + "}" }

// GoString is String, so %#v prints no key either.
func (p PendingOrder) GoString() string { return p.String() }

// ErrNotResumable says a PendingOrder cannot be continued (the CA no longer
// has it, it went invalid, its names differ from the request's); Obtain then
// places a new order.
var ErrNotResumable = errors.New("acmeissuer: order cannot be resumed")

// resume continues p for req: it downloads the certificate of a valid order,
// waits for a processing one, finalises a ready one, and solves the pending
// authorizations of a pending one first (orderRun.complete). It never
// creates an order. Errors that are not about reaching the CA (see
// notResumable) wrap ErrNotResumable.
func (i *Issuer) resume(ctx context.Context, acct acme.Account, req Request, solvers map[string]acmez.Solver, p PendingOrder) (*Result, error) {
	if p.URL == "" || p.Key == nil {
		return nil, fmt.Errorf("%w: no order URL or key", ErrNotResumable)
	}
	// The URL comes from the database: never sign a request for another
	// server than the CA's.
	if !sameOrigin(p.URL, i.cfg.Directory) {
		return nil, fmt.Errorf("%w: order URL %q is not on the CA's server %q", ErrNotResumable, p.URL, i.cfg.Directory)
	}
	order, err := i.client.GetOrder(ctx, acct, acme.Order{Location: p.URL})
	if err != nil {
		return nil, notResumable(ctx, "reading the order", err)
	}
	order.Location = p.URL
	if !sameNames(order.Identifiers, req.SANs) {
		return nil, fmt.Errorf("%w: the order is for %v, the request for %v", ErrNotResumable, identifierValues(order.Identifiers), req.SANs)
	}
	run := &orderRun{i: i, acct: acct, req: req, solvers: solvers, key: p.Key, resume: true, failed: map[string][]string{}}
	return run.complete(ctx, order)
}

// waitProcessing polls an order the CA is issuing until it is valid or
// invalid, within the client's poll timeout.
func (r *orderRun) waitProcessing(ctx context.Context, order acme.Order) (acme.Order, error) {
	interval, timeout := r.i.cfg.PollInterval, r.i.cfg.PollTimeout
	if interval == 0 {
		interval = 250 * time.Millisecond
	}
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	loc := order.Location
	for deadline := time.Now().Add(timeout); order.Status == acme.StatusProcessing; {
		if time.Now().After(deadline) {
			return order, r.stop("the order stayed processing for %s", timeout)
		}
		select {
		case <-ctx.Done():
			return order, ctx.Err()
		case <-time.After(interval):
		}
		var err error
		if order, err = r.i.client.GetOrder(ctx, r.acct, order); err != nil {
			return order, r.fail(ctx, "polling the order", err)
		}
		order.Location = loc
	}
	return order, nil
}

// notResumable wraps err as ErrNotResumable unless ctx ended, which the
// caller must see as such, or the CA could not be asked (Unavailable: a
// refused connection, a timeout, a 5xx) or refused for a rate limit: the
// order may well be there, and placing another would order twice; the
// caller retries the resume later.
func notResumable(ctx context.Context, doing string, err error) error {
	var ce *CAError
	var p acme.Problem
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("acmeissuer: resuming an order: %s: %w", doing, ctx.Err())
	case Unavailable(err), errors.As(err, &ce) && ce.RateLimited(), errors.As(err, &p) && p.Type == acme.ProblemTypeRateLimited:
		return fmt.Errorf("acmeissuer: resuming an order: %s: %w", doing, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrNotResumable, doing, err)
}

func sameOrigin(a, b string) bool {
	ua, err1 := url.Parse(a)
	ub, err2 := url.Parse(b)
	return err1 == nil && err2 == nil && ua.Scheme == "https" && ua.Scheme == ub.Scheme && strings.EqualFold(ua.Host, ub.Host)
}

func sameNames(ids []acme.Identifier, sans []string) bool {
	return slices.Equal(sortedCopy(identifierValues(ids)), sortedCopy(sans))
}

func identifierValues(ids []acme.Identifier) []string {
	out := make([]string, len(ids))
	for k, id := range ids {
		out[k] = strings.ToLower(id.Value)
	}
	return out
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}
