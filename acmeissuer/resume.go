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
// authorizations of a pending one first. It never creates an order. Errors
// that are not about reaching the CA (see notResumable) wrap ErrNotResumable.
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
	if order.Status == acme.StatusPending {
		for _, authzURL := range order.Authorizations {
			if err := i.solveAuthorization(ctx, acct, solvers, authzURL); err != nil {
				return nil, err
			}
		}
		if order, err = i.client.GetOrder(ctx, acct, order); err != nil {
			return nil, notResumable(ctx, "reading the order after its authorizations", err)
		}
		order.Location = p.URL
	}
	if order.Status == acme.StatusReady {
		csr, err := acmez.NewCSR(p.Key, req.SANs)
		if err != nil {
			return nil, fmt.Errorf("%w: making the CSR: %v", ErrNotResumable, err)
		}
		if order, err = i.client.FinalizeOrder(ctx, acct, order, csr.Raw); err != nil {
			return nil, notResumable(ctx, "finalizing the order", err)
		}
	}
	if order.Status == acme.StatusProcessing {
		if order, err = i.waitProcessing(ctx, acct, order); err != nil {
			return nil, err
		}
	}
	if order.Status != acme.StatusValid || order.Certificate == "" {
		return nil, fmt.Errorf("%w: the order is %q", ErrNotResumable, order.Status)
	}
	chains, err := i.client.GetCertificateChain(ctx, acct, order.Certificate)
	if err != nil {
		return nil, notResumable(ctx, "downloading the certificate", err)
	}
	if len(chains) == 0 {
		return nil, fmt.Errorf("%w: the CA offered no chain", ErrNotResumable)
	}
	res, err := resultFrom(chains[0], p.Key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotResumable, err)
	}
	if !slices.Equal(sortedCopy(res.Leaf.DNSNames), sortedCopy(req.SANs)) {
		return nil, fmt.Errorf("%w: the certificate is for %v", ErrNotResumable, res.Leaf.DNSNames)
	}
	return res, nil
}

// solveAuthorization brings one authorization of a resumed order to valid
// with the first offered challenge type there is a solver for.
func (i *Issuer) solveAuthorization(ctx context.Context, acct acme.Account, solvers map[string]acmez.Solver, authzURL string) error {
	authz, err := i.client.GetAuthorization(ctx, acct, authzURL)
	if err != nil {
		return notResumable(ctx, "reading an authorization", err)
	}
	switch authz.Status {
	case acme.StatusValid:
		return nil
	case acme.StatusPending:
	default:
		return fmt.Errorf("%w: authorization for %s is %q", ErrNotResumable, authz.IdentifierValue(), authz.Status)
	}
	var ch acme.Challenge
	var solver acmez.Solver
	for _, c := range authz.Challenges {
		if s, ok := solvers[c.Type]; ok {
			ch, solver = c, s
			break
		}
	}
	if solver == nil {
		return fmt.Errorf("%w: no solver for the challenges offered for %s", ErrNotResumable, authz.IdentifierValue())
	}
	if err := solver.Present(ctx, ch); err != nil {
		return notResumable(ctx, "presenting a challenge", err)
	}
	defer func() { _ = solver.CleanUp(context.WithoutCancel(ctx), ch) }()
	if w, ok := solver.(acmez.Waiter); ok {
		if err := w.Wait(ctx, ch); err != nil {
			return notResumable(ctx, "waiting for the challenge solver", err)
		}
	}
	// A challenge the dead worker already answered is "processing" or
	// "valid": do not answer it twice, poll.
	if ch.Status == acme.StatusPending {
		if _, err := i.client.InitiateChallenge(ctx, acct, ch); err != nil {
			return notResumable(ctx, "answering a challenge", err)
		}
	}
	if _, err := i.client.PollAuthorization(ctx, acct, authz); err != nil {
		return notResumable(ctx, "validating an authorization", err)
	}
	return nil
}

// waitProcessing polls an order the CA is issuing until it is valid or
// invalid, within the client's poll timeout.
func (i *Issuer) waitProcessing(ctx context.Context, acct acme.Account, order acme.Order) (acme.Order, error) {
	interval, timeout := i.cfg.PollInterval, i.cfg.PollTimeout
	if interval == 0 {
		interval = 250 * time.Millisecond
	}
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	loc := order.Location
	for deadline := time.Now().Add(timeout); order.Status == acme.StatusProcessing; {
		if time.Now().After(deadline) {
			return order, fmt.Errorf("%w: the order stayed processing for %s", ErrNotResumable, timeout)
		}
		select {
		case <-ctx.Done():
			return order, ctx.Err()
		case <-time.After(interval):
		}
		var err error
		if order, err = i.client.GetOrder(ctx, acct, order); err != nil {
			return order, notResumable(ctx, "polling the order", err)
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
