package acmeissuer

import (
	"context"
	"fmt"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// AccountMode says how tenants map to ACME accounts at a CA.
type AccountMode string

const (
	// AccountPerTenant (the default): one ACME account per (CA, tenant).
	AccountPerTenant AccountMode = "per-tenant"
	// AccountShared: every tenant orders through one ACME account per CA,
	// as Let's Encrypt asks of large integrators (few accounts, not one per
	// customer). Tenant isolation then lives in certfleet's own buckets;
	// the CA's per-account limits apply to the fleet's whole traffic to
	// that CA (key NewOrdersPerAccount by Issuer.AccountKey).
	AccountShared AccountMode = "shared"
)

// sharedAccountKey is the acme_accounts tenant of the shared account: no
// tenant can be called that (a request's tenant starts with a letter or a
// digit).
const sharedAccountKey = "*"

// ParseAccountMode reads an account mode as the -account-mode flag takes it:
// "per-tenant" or "shared" ("" is per-tenant).
func ParseAccountMode(s string) (AccountMode, error) {
	switch m := AccountMode(s); m {
	case "", AccountPerTenant:
		return AccountPerTenant, nil
	case AccountShared:
		return m, nil
	}
	return "", fmt.Errorf("account mode %q: want %s or %s", s, AccountPerTenant, AccountShared)
}

// AccountKey is the account a tenant's orders use at this CA: the tenant
// itself per tenant, one key for every tenant in shared mode. Callers that
// mirror the CA's per-account limits (NewOrdersPerAccount) key them by it.
func (i *Issuer) AccountKey(tenant string) string {
	if i.cfg.AccountMode == AccountShared {
		return sharedAccountKey
	}
	return tenant
}

// describeAccount names an account key in messages.
func describeAccount(key string) string {
	if key == sharedAccountKey {
		return "the shared account"
	}
	return fmt.Sprintf("the account of tenant %q", key)
}

// RegistrationLimiter is asked before every newAccount an Issuer sends (a
// first registration, or a key registered again after the CA lost its
// account): the CA limits registrations (Let's Encrypt:
// NewRegistrationsPerIPAddress, 10 per 3 hours per IP address, and
// NewRegistrationsPerIPv6Range, 500 per 3 hours per /48), and the fleet must
// not exceed them. Implementations spend the fleet's registration buckets of
// that CA (package ratelimit's); acmeissuer does not import ratelimit.
type RegistrationLimiter interface {
	// SpendRegistration takes one registration at the CA directory. When
	// the limits do not allow one now it spends nothing and returns
	// allowed false with the instant one will be. An error means it could
	// not decide; no registration is attempted then.
	SpendRegistration(ctx context.Context, directory string) (allowed bool, retryAt time.Time, err error)
}

// RegistrationLimitedError is an account registration the fleet's
// registration limits deferred (Config.Registrations): nothing was sent to
// the CA. Classify maps it to RateLimited with RetryAfter = RetryAt; it is
// not a *CAError, since the CA said nothing.
type RegistrationLimitedError struct {
	Directory string
	RetryAt   time.Time
}

func (e *RegistrationLimitedError) Error() string {
	return fmt.Sprintf("acmeissuer: account registrations at %s are limited until %s", e.Directory, e.RetryAt.UTC().Format(time.RFC3339))
}

// spendRegistration asks Config.Registrations, when set, for one
// registration.
func (i *Issuer) spendRegistration(ctx context.Context) error {
	if i.cfg.Registrations == nil {
		return nil
	}
	ok, at, err := i.cfg.Registrations.SpendRegistration(ctx, i.cfg.Directory)
	switch {
	case err != nil:
		return fmt.Errorf("acmeissuer: spending a registration at %s: %w", i.cfg.Directory, err)
	case !ok:
		return &RegistrationLimitedError{Directory: i.cfg.Directory, RetryAt: at}
	}
	return nil
}

// registrationProblem is the Classification of a RegistrationLimitedError.
func registrationProblem(e *RegistrationLimitedError) Classification {
	return Classification{Class: RateLimited, RetryAfter: e.RetryAt, ProblemType: acme.ProblemTypeRateLimited, Detail: e.Error()}
}
