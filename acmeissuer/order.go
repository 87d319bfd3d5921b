package acmeissuer

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"slices"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
)

// Orders are driven here with acmez's ACME calls (NewOrder,
// GetAuthorization, InitiateChallenge, PollAuthorization, FinalizeOrder),
// not acmez's ObtainCertificate. ObtainCertificate deactivates every pending
// and valid authorization of an order when solving fails for any reason, a
// 503 on one poll included, which invalidates an order that could have been
// continued, and it places new orders by itself (up to three) when a
// challenge type fails. Here an order is only ever left as it is when its
// solving stops on a transient error (the CA unreachable or answering 5xx, a
// solver's retryable failure, ctx ending): the caller continues it later
// (Request.Resume). Pending authorizations are deactivated, as acmez does,
// only once a validation has failed and the order is invalid anyway. Every
// order placed is reported through Request.OnOrder.

// maxOrders is the most orders one Obtain places: the first, and one more for
// each fallback to another challenge type after a failed validation (acmez's
// own cap).
const maxOrders = 3

// orderRun is one order being brought to a certificate: a new one, or one
// resumed from an earlier attempt.
type orderRun struct {
	i       *Issuer
	acct    acme.Account
	req     Request
	solvers map[string]acmez.Solver
	key     crypto.Signer
	// resume: errors that are not about reaching the CA (see notResumable)
	// wrap ErrNotResumable, so the caller places a new order instead.
	resume bool
	// failed are the challenge types whose validation failed, per
	// identifier (authorization's IdentifierValue), in this Obtain.
	failed map[string][]string
}

// validationFailure is an authorization the CA found invalid: the order is
// dead. fallback says another offered challenge type with a solver is left
// for that identifier, so a new order may try it.
type validationFailure struct {
	err      error
	fallback bool
}

func (v *validationFailure) Error() string { return "validating an authorization: " + v.err.Error() }
func (v *validationFailure) Unwrap() error { return v.err }

// fail wraps an error of the CA or a solver met while doing something.
func (r *orderRun) fail(ctx context.Context, doing string, err error) error {
	if r.resume {
		return notResumable(ctx, doing, err)
	}
	return fmt.Errorf("%s: %w", doing, err)
}

// stop is an order in a state this run cannot take further (an invalid
// order or authorization, no solver for what the CA offers).
func (r *orderRun) stop(format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	if r.resume {
		return fmt.Errorf("%w: %w", ErrNotResumable, err)
	}
	return fmt.Errorf("acmeissuer: %w", err)
}

// orderNew places an order for req and brings it to a certificate with key.
// A failed validation with another challenge type left for its identifier
// places a new order that tries it, up to maxOrders; any other failure
// leaves the order as it is and returns.
func (i *Issuer) orderNew(ctx context.Context, acct acme.Account, req Request, solvers map[string]acmez.Solver, profile string, key crypto.Signer) (*Result, error) {
	o := acme.Order{Profile: profile}
	for _, san := range req.SANs {
		o.Identifiers = append(o.Identifiers, acme.Identifier{Type: "dns", Value: san})
	}
	if req.Replaces != nil {
		id, err := acme.ARIUniqueIdentifier(req.Replaces)
		if err != nil {
			return nil, fmt.Errorf("%w: the certificate to replace: %v", ErrInvalidRequest, err)
		}
		o.Replaces = id
	}
	run := &orderRun{i: i, acct: acct, req: req, solvers: solvers, key: key, failed: map[string][]string{}}
	for placed := 0; ; {
		order, err := i.client.NewOrder(ctx, acct, o)
		var p acme.Problem
		if errors.As(err, &p) && p.Type == acme.ProblemTypeAlreadyReplaced && o.Replaces != "" {
			// Another order already replaces that certificate: order
			// without "replaces" (the CA created nothing).
			o.Replaces = ""
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("creating the order: %w", err)
		}
		placed++
		res, err := run.complete(ctx, order)
		var vf *validationFailure
		if err == nil || !errors.As(err, &vf) || !vf.fallback || placed == maxOrders {
			return res, err
		}
		if i.cfg.Logger != nil {
			i.cfg.Logger.Info("validation failed; ordering again with another challenge type", "order", order.Location, "error", err)
		}
	}
}

// complete takes order from whatever state it is in to the certificate:
// solves its pending authorizations, finalises it when ready, waits while it
// is processing, and downloads the certificate once valid. The certificate
// must be for run.key and the request's names.
func (r *orderRun) complete(ctx context.Context, order acme.Order) (*Result, error) {
	loc := order.Location
	var err error
	solved := false
	if order.Status == acme.StatusPending {
		solved = true
		if err := r.solve(ctx, order.Authorizations); err != nil {
			return nil, err
		}
		if order, err = r.i.client.GetOrder(ctx, r.acct, order); err != nil {
			return nil, r.fail(ctx, "reading the order after its authorizations", err)
		}
		order.Location = loc
	}
	// A pending order whose authorizations were all just solved is
	// finalised too: a CA may not have moved it to ready yet, and acmez's
	// FinalizeOrder polls an order the CA answers orderNotReady for.
	if order.Status == acme.StatusReady || (solved && order.Status == acme.StatusPending) {
		csr, err := acmez.NewCSR(r.key, r.req.SANs)
		if err != nil {
			return nil, r.stop("making the CSR: %v", err)
		}
		if order, err = r.i.client.FinalizeOrder(ctx, r.acct, order, csr.Raw); err != nil {
			return nil, r.fail(ctx, "finalizing the order", err)
		}
		order.Location = loc
	}
	if order.Status == acme.StatusProcessing {
		if order, err = r.waitProcessing(ctx, order); err != nil {
			return nil, err
		}
	}
	if order.Status != acme.StatusValid || order.Certificate == "" {
		return nil, r.stop("the order %s is %q", loc, order.Status)
	}
	chains, err := r.i.client.GetCertificateChain(ctx, r.acct, order.Certificate)
	if err != nil {
		return nil, r.fail(ctx, "downloading the certificate", err)
	}
	if len(chains) == 0 {
		return nil, r.stop("the CA offered no chain")
	}
	res, err := resultFrom(chains[0], r.key)
	if err != nil {
		return nil, r.stop("%v", err)
	}
	if !slices.Equal(sortedCopy(res.Leaf.DNSNames), sortedCopy(r.req.SANs)) {
		return nil, r.stop("the certificate is for %v", res.Leaf.DNSNames)
	}
	return res, nil
}

// challengeRun is one authorization being solved.
type challengeRun struct {
	authz     acme.Authorization
	ch        acme.Challenge
	solver    acmez.Solver
	presented bool
}

// solve brings every authorization of an order to valid, as acmez does:
// every solver presents first (slow ones, such as DNS propagation, then run
// together), then each waits if it is a Waiter, then every challenge is
// answered, then each authorization is polled. A challenge an earlier
// attempt answered already is polled, not answered twice. Solvers are
// cleaned up however it ends. Nothing is deactivated unless a validation
// failed.
func (r *orderRun) solve(ctx context.Context, authzURLs []string) error {
	var todo []*challengeRun
	defer func() {
		for _, c := range todo {
			if c.presented {
				_ = c.solver.CleanUp(context.WithoutCancel(ctx), c.ch)
			}
		}
	}()
	for _, u := range authzURLs {
		authz, err := r.i.client.GetAuthorization(ctx, r.acct, u)
		if err != nil {
			return r.fail(ctx, "reading an authorization", err)
		}
		switch authz.Status {
		case acme.StatusValid:
			continue
		case acme.StatusPending:
		default:
			return r.stop("the authorization for %s is %q", authz.IdentifierValue(), authz.Status)
		}
		c := &challengeRun{authz: authz}
		c.ch, c.solver = r.pick(authz)
		if c.solver == nil {
			return r.stop("no solver for the challenges offered for %s", authz.IdentifierValue())
		}
		todo = append(todo, c)
	}
	for _, c := range todo {
		if err := c.solver.Present(ctx, c.ch); err != nil {
			return r.fail(ctx, "presenting a challenge", err)
		}
		c.presented = true
	}
	for _, c := range todo {
		if w, ok := c.solver.(acmez.Waiter); ok {
			if err := w.Wait(ctx, c.ch); err != nil {
				return r.fail(ctx, "waiting for the challenge solver", err)
			}
		}
	}
	for _, c := range todo {
		if c.ch.Status == acme.StatusPending {
			if _, err := r.i.client.InitiateChallenge(ctx, r.acct, c.ch); err != nil {
				return r.fail(ctx, "answering a challenge", err)
			}
		}
	}
	for _, c := range todo {
		got, err := r.i.client.PollAuthorization(ctx, r.acct, c.authz)
		if err == nil {
			continue
		}
		if got.Status != acme.StatusInvalid {
			// Not a validation that failed: the CA could not be asked
			// (a 5xx, a timeout), or ctx ended. The order stays as it is
			// for the caller to continue.
			return r.fail(ctx, "validating an authorization", err)
		}
		id := c.authz.IdentifierValue()
		r.failed[id] = append(r.failed[id], c.ch.Type)
		r.deactivatePending(ctx, todo)
		if r.resume {
			return r.fail(ctx, "validating an authorization", err)
		}
		_, next := r.pick(c.authz)
		return &validationFailure{err: err, fallback: next != nil}
	}
	return nil
}

// pick chooses the challenge of authz to answer: the first offered one with
// a solver whose type has not failed validation for its identifier.
func (r *orderRun) pick(authz acme.Authorization) (acme.Challenge, acmez.Solver) {
	failed := r.failed[authz.IdentifierValue()]
	for _, c := range authz.Challenges {
		if s, ok := r.solvers[c.Type]; ok && !slices.Contains(failed, c.Type) {
			return c, s
		}
	}
	return acme.Challenge{}, nil
}

// deactivatePending deactivates, best effort, the authorizations of a dead
// order that are still pending, so they do not linger at the CA (acmez's
// behaviour, kept for orders that cannot be continued).
func (r *orderRun) deactivatePending(ctx context.Context, runs []*challengeRun) {
	for _, c := range runs {
		a, err := r.i.client.GetAuthorization(ctx, r.acct, c.authz.Location)
		if err != nil || a.Status != acme.StatusPending {
			continue
		}
		_, _ = r.i.client.DeactivateAuthorization(ctx, r.acct, c.authz.Location)
	}
}
