package acmeissuer

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
)

// Revocation asks the CA to revoke one certificate it issued (RFC 8555
// §7.6). The request is signed with the account that ordered it (the
// tenant's account at this CA, or the shared one, read from acme_accounts,
// never registered here) or with the certificate's own key: either may
// revoke.
type Revocation struct {
	// Tenant selects the account that ordered the certificate: the
	// tenant's, or the shared account of AccountShared.
	Tenant string
	// Cert is the certificate to revoke (the leaf). Required.
	Cert *x509.Certificate
	// Reason is the RFC 5280 CRLReason code sent to the CA (Let's Encrypt
	// accepts 0, 1, 3, 4 and 5); the CA refuses others with
	// badRevocationReason, which comes back as an acme.Problem.
	Reason int
	// CertKey, optional, is the certificate's private key. It signs the
	// request when the tenant has no account at this CA, or when the CA
	// refuses the account (unauthorized: an account that neither ordered
	// the certificate nor holds authorizations for its names).
	CertKey crypto.Signer
}

// RevokeResult says how the CA took a revocation.
type RevokeResult struct {
	// SignedWith is "account" or "certificate-key".
	SignedWith string
	// AlreadyRevoked: the CA answered alreadyRevoked. The certificate is
	// revoked either way; the reason the CA holds may differ from Reason.
	AlreadyRevoked bool
}

// Signing keys of a revocation (RevokeResult.SignedWith).
const (
	SignedWithAccount = "account"
	SignedWithCertKey = "certificate-key"
)

// Revoker revokes certificates at one CA. It reads accounts (Config.DB,
// Config.Sealer) but never creates one: an account registered now never
// ordered the certificate. Safe for concurrent use.
type Revoker struct{ i *Issuer }

// revokeOnly is the solver a Revoker's issuer is built with when the
// Config names none: a Revoker places no order, so it never runs.
type revokeOnly struct{}

func (revokeOnly) Present(context.Context, acme.Challenge) error {
	return errors.New("acmeissuer: a Revoker solves no challenges")
}
func (revokeOnly) CleanUp(context.Context, acme.Challenge) error { return nil }

// NewRevoker returns a Revoker for cfg's CA. Solvers may be empty; the
// other fields are Issuer's (Directory, DB and Sealer are required).
func NewRevoker(cfg Config) (*Revoker, error) {
	if len(cfg.Solvers) == 0 {
		cfg.Solvers = map[string]acmez.Solver{"revoke-only": revokeOnly{}}
	}
	i, err := New(cfg)
	if err != nil {
		return nil, err
	}
	return &Revoker{i: i}, nil
}

// Revoke revokes r.Cert at the CA; see Issuer.Revoke.
func (v *Revoker) Revoke(ctx context.Context, r Revocation) (RevokeResult, error) {
	return v.i.Revoke(ctx, r)
}

// Revoke asks the CA to revoke r.Cert: signed with the tenant's stored
// account, else the shared account (AccountShared), when there is one, else
// (or when the CA refuses those as unauthorized) with r.CertKey. A CA
// answering alreadyRevoked is success (RevokeResult.AlreadyRevoked). Errors wrap what the CA said (a 429 or a
// final 5xx as *CAError, otherwise acme.Problem; use Classify), or say that
// neither key is at hand.
func (i *Issuer) Revoke(ctx context.Context, r Revocation) (RevokeResult, error) {
	if r.Cert == nil {
		return RevokeResult{}, fmt.Errorf("%w: no certificate to revoke", ErrInvalidRequest)
	}
	serial := r.Cert.SerialNumber.Text(16)
	// The account that ordered it: the tenant's own, or the shared one
	// (AccountShared), whichever mode the fleet ordered in then.
	var refused error
	for _, owner := range []string{r.Tenant, sharedAccountKey} {
		url, key, found, err := i.readAccount(ctx, owner)
		if err != nil {
			return RevokeResult{}, fmt.Errorf("acmeissuer: revoking %s: %w", serial, err)
		}
		if !found || url == "" {
			continue
		}
		res, err := i.revokeWith(ctx, i.account(url, key), r, nil, SignedWithAccount)
		var p acme.Problem
		if err == nil || !errors.As(err, &p) || (p.Type != acme.ProblemTypeUnauthorized && p.Type != acme.ProblemTypeAccountDoesNotExist) {
			return res, err
		}
		// The CA does not take this account for this certificate: try the
		// next, then the certificate's own key, which always may.
		refused = err
	}
	if r.CertKey == nil && refused != nil {
		return RevokeResult{}, refused
	}
	if r.CertKey == nil {
		return RevokeResult{}, fmt.Errorf("acmeissuer: revoking %s: tenant %q has no account at %s and no certificate key was given", serial, r.Tenant, i.cfg.Directory)
	}
	return i.revokeWith(ctx, acme.Account{}, r, r.CertKey, SignedWithCertKey)
}

func (i *Issuer) revokeWith(ctx context.Context, acct acme.Account, r Revocation, certKey crypto.Signer, how string) (RevokeResult, error) {
	cctx, c := withCapture(ctx)
	err := i.client.RevokeCertificate(cctx, acct, r.Cert, certKey, r.Reason)
	var p acme.Problem
	switch {
	case err == nil:
		return RevokeResult{SignedWith: how}, nil
	case errors.As(err, &p) && p.Type == acme.ProblemTypeAlreadyRevoked:
		return RevokeResult{SignedWith: how, AlreadyRevoked: true}, nil
	}
	err = annotate(err, c, i.now(), i.cfg.DefaultPenalty)
	return RevokeResult{}, fmt.Errorf("acmeissuer: revoking %s (signed with the %s): %w", r.Cert.SerialNumber.Text(16), how, err)
}
