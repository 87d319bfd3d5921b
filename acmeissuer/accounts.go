package acmeissuer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/seal"
)

// Accounts: one per (CA directory, tenant) across the whole fleet, or one
// per CA directory for every tenant with AccountShared (its row's tenant is
// AccountKey's "*", which no tenant can be called).
//
// The acme_accounts row is the lock. A worker needing an account:
//
//  1. reads the row; a row with an account_url is the answer (cached in
//     memory afterwards, so this is once per process and tenant);
//  2. otherwise generates a key and INSERTs its sealed form with an empty
//     account_url, ON CONFLICT DO NOTHING. The primary key lets exactly one
//     worker's key in;
//  3. the winner (its INSERT affected a row) registers that key at the CA
//     (newAccount) and writes the account URL where it is still empty;
//  4. a loser polls the row until account_url appears (Config.AccountWait).
//     If the winner died before registering, the loser opens the stored key
//     and registers it itself. That is safe because the key is the identity
//     of an ACME account: newAccount with a key the CA already knows returns
//     the existing account (RFC 8555 §7.3.1), so at most one account exists
//     per row even if several workers end up registering.
//
// Single statements only, so no transaction retry is involved; the row's key
// never changes once written.

// accountEntry de-duplicates concurrent lookups within one process.
type accountEntry struct {
	ready chan struct{}
	acct  acme.Account
	err   error
}

// Account returns the ACME account for tenant at this issuer's CA, registering
// it once across the fleet when it does not exist yet. It blocks until the
// account is known or ctx ends. Concurrent calls for one tenant share the work;
// a failure is not cached. With AccountShared every tenant gets the one
// shared account (row key AccountKey).
func (i *Issuer) Account(ctx context.Context, tenant string) (acme.Account, error) {
	tenant = i.AccountKey(tenant)
	i.mu.Lock()
	e, ok := i.accounts[tenant]
	if !ok {
		e = &accountEntry{ready: make(chan struct{})}
		i.remember(tenant, e)
		i.mu.Unlock()
		e.acct, e.err = i.loadOrRegister(ctx, tenant)
		if e.err != nil {
			i.mu.Lock()
			delete(i.accounts, tenant)
			i.mu.Unlock()
		}
		close(e.ready)
	} else {
		i.mu.Unlock()
	}
	select {
	case <-e.ready:
		return e.acct, e.err
	case <-ctx.Done():
		return acme.Account{}, fmt.Errorf("acmeissuer: waiting for the account of tenant %q: %w", tenant, ctx.Err())
	}
}

func (i *Issuer) accountAAD(tenant string) []byte {
	return seal.AAD(seal.PurposeAccountKey, i.cfg.Directory, tenant)
}

func (i *Issuer) loadOrRegister(ctx context.Context, tenant string) (acme.Account, error) {
	url, key, found, err := i.readAccount(ctx, tenant)
	if err != nil {
		return acme.Account{}, err
	}
	if found && url != "" {
		return i.account(url, key), nil
	}
	if !found {
		// A registration is spent before the row is claimed, so a
		// deferred one leaves no row for the next caller to wait on.
		if err := i.spendRegistration(ctx); err != nil {
			return acme.Account{}, fmt.Errorf("acmeissuer: registering %s: %w", describeAccount(tenant), err)
		}
		newKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return acme.Account{}, fmt.Errorf("acmeissuer: generating an account key: %w", err)
		}
		blob, err := seal.SealPrivateKey(ctx, i.cfg.Sealer, newKey, i.accountAAD(tenant))
		if err != nil {
			return acme.Account{}, fmt.Errorf("acmeissuer: account for tenant %q: %w", tenant, err)
		}
		tag, err := i.cfg.DB.Pool().Exec(ctx, `
			INSERT INTO acme_accounts (ca_directory, tenant, account_url, sealed_key)
			VALUES ($1, $2, '', $3)
			ON CONFLICT (ca_directory, tenant) DO NOTHING`, i.cfg.Directory, tenant, blob)
		if err != nil {
			return acme.Account{}, fmt.Errorf("acmeissuer: claiming the account row of tenant %q: %w", tenant, err)
		}
		if tag.RowsAffected() == 1 { // we won: our key is the tenant's key
			return i.register(ctx, tenant, newKey)
		}
	}
	// Someone else's key is in the row: wait for their registration.
	deadline := time.Now().Add(i.cfg.AccountWait)
	for {
		url, key, found, err = i.readAccount(ctx, tenant)
		if err != nil {
			return acme.Account{}, err
		}
		if !found {
			return acme.Account{}, fmt.Errorf("acmeissuer: account row of tenant %q vanished", tenant)
		}
		if url != "" {
			return i.account(url, key), nil
		}
		if time.Now().After(deadline) {
			// The winner is slow or dead: register its key ourselves
			// (idempotent at the CA, see above).
			if err := i.spendRegistration(ctx); err != nil {
				return acme.Account{}, fmt.Errorf("acmeissuer: registering %s: %w", describeAccount(tenant), err)
			}
			return i.register(ctx, tenant, key)
		}
		select {
		case <-time.After(i.cfg.AccountPoll):
		case <-ctx.Done():
			return acme.Account{}, fmt.Errorf("acmeissuer: waiting for tenant %q's account registration: %w", tenant, ctx.Err())
		}
	}
}

func (i *Issuer) readAccount(ctx context.Context, tenant string) (url string, key crypto.Signer, found bool, err error) {
	var blob []byte
	err = i.cfg.DB.Pool().QueryRow(ctx, `
		SELECT account_url, sealed_key FROM acme_accounts WHERE ca_directory = $1 AND tenant = $2`,
		i.cfg.Directory, tenant).Scan(&url, &blob)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil, false, nil
	}
	if err != nil {
		return "", nil, false, fmt.Errorf("acmeissuer: reading the account of tenant %q: %w", tenant, err)
	}
	key, err = seal.OpenPrivateKey(ctx, i.cfg.Sealer, blob, i.accountAAD(tenant))
	if err != nil {
		return "", nil, false, fmt.Errorf("acmeissuer: account key of tenant %q: %w", tenant, err)
	}
	return url, key, true, nil
}

// register creates (or finds, for a known key) the account at the CA and
// records its URL. With Config.EAB the new account is bound to the CA's
// external account.
func (i *Issuer) register(ctx context.Context, tenant string, key crypto.Signer) (acme.Account, error) {
	cctx, c := withCapture(ctx)
	req := acme.Account{
		Contact:              i.cfg.Contact,
		TermsOfServiceAgreed: true,
		PrivateKey:           key,
	}
	if i.cfg.EAB != nil {
		if err := req.SetExternalAccountBinding(cctx, i.client, *i.cfg.EAB); err != nil {
			err = annotate(err, c, i.now(), i.cfg.DefaultPenalty)
			return acme.Account{}, fmt.Errorf("acmeissuer: registering the account of tenant %q: External Account Binding with key id %q: %w", tenant, i.cfg.EAB.KeyID, err)
		}
	}
	acct, err := i.client.NewAccount(cctx, req)
	if err != nil {
		if explained := i.explainEAB(err); explained != nil {
			return acme.Account{}, fmt.Errorf("acmeissuer: registering the account of tenant %q: %w", tenant, explained)
		}
		err = annotate(err, c, i.now(), i.cfg.DefaultPenalty)
		return acme.Account{}, fmt.Errorf("acmeissuer: registering the account of tenant %q: %w", tenant, err)
	}
	if acct.Location == "" {
		return acme.Account{}, fmt.Errorf("acmeissuer: registering the account of tenant %q: CA returned no account URL", tenant)
	}
	if acct.Status != acme.StatusValid {
		return acme.Account{}, fmt.Errorf("acmeissuer: account of tenant %q has status %q", tenant, acct.Status)
	}
	i.registrations.Add(1)
	if _, err := i.cfg.DB.Pool().Exec(ctx, `
		UPDATE acme_accounts SET account_url = $3
		WHERE ca_directory = $1 AND tenant = $2 AND account_url = ''`,
		i.cfg.Directory, tenant, acct.Location); err != nil {
		return acme.Account{}, fmt.Errorf("acmeissuer: recording the account URL of tenant %q: %w", tenant, err)
	}
	return i.account(acct.Location, key), nil
}

// reregister registers tenant's key again after the CA answered that the
// stored account (gone) does not exist, and replaces gone's URL in the row
// and in this process's cache. Workers doing it at once are safe: a key the
// CA knows again maps to one account (RFC 8555 §7.3.1), and the row keeps
// whichever new URL is written.
func (i *Issuer) reregister(ctx context.Context, tenant string, gone acme.Account) (acme.Account, error) {
	tenant = i.AccountKey(tenant)
	if err := i.spendRegistration(ctx); err != nil {
		return acme.Account{}, fmt.Errorf("acmeissuer: registering %s again: %w", describeAccount(tenant), err)
	}
	cctx, c := withCapture(ctx)
	acct, err := i.client.NewAccount(cctx, acme.Account{Contact: i.cfg.Contact, TermsOfServiceAgreed: true, PrivateKey: gone.PrivateKey})
	if err != nil {
		err = annotate(err, c, i.now(), i.cfg.DefaultPenalty)
		return acme.Account{}, fmt.Errorf("acmeissuer: registering the account of tenant %q again (the CA no longer knows %s): %w", tenant, gone.Location, err)
	}
	if acct.Location == "" || acct.Status != acme.StatusValid {
		return acme.Account{}, fmt.Errorf("acmeissuer: registering the account of tenant %q again: status %q, URL %q", tenant, acct.Status, acct.Location)
	}
	i.registrations.Add(1)
	if _, err := i.cfg.DB.Pool().Exec(ctx, `
		UPDATE acme_accounts SET account_url = $4
		WHERE ca_directory = $1 AND tenant = $2 AND account_url = $3`,
		i.cfg.Directory, tenant, gone.Location, acct.Location); err != nil {
		return acme.Account{}, fmt.Errorf("acmeissuer: recording the new account URL of tenant %q: %w", tenant, err)
	}
	fresh := i.account(acct.Location, gone.PrivateKey)
	e := &accountEntry{ready: make(chan struct{}), acct: fresh}
	close(e.ready)
	i.mu.Lock()
	i.remember(tenant, e)
	i.mu.Unlock()
	if i.cfg.Logger != nil {
		i.cfg.Logger.Warn("the CA no longer knew the account; registered it again", "tenant", tenant, "old", gone.Location, "new", acct.Location)
	}
	return fresh, nil
}

func (i *Issuer) account(url string, key crypto.Signer) acme.Account {
	return acme.Account{
		Status:               acme.StatusValid,
		Contact:              i.cfg.Contact,
		TermsOfServiceAgreed: true,
		Location:             url,
		PrivateKey:           key,
	}
}

// explainEAB rewrites the CA's refusal of a newAccount that is about External
// Account Binding so that it says what to fix: a CA that requires a binding
// when none is configured, or one that refuses the configured binding (an
// unknown key id, a wrong MAC key). The result is the CA's problem with that
// explanation in front of its detail, so Classify (Permanent) and the
// cert_failed it becomes carry it. nil: the refusal is not about EAB.
func (i *Issuer) explainEAB(err error) error {
	var p acme.Problem
	if !errors.As(err, &p) {
		return nil
	}
	switch {
	case p.Type == acme.ProblemTypeExternalAccountRequired && i.cfg.EAB == nil:
		p.Detail = "the CA requires External Account Binding: configure the CA's key id and MAC key (-ca NAME=URL,eab-kid=KEYID,eab-key-file=FILE); the CA said: " + p.Detail
	case i.cfg.EAB != nil && (p.Type == acme.ProblemTypeUnauthorized || p.Type == acme.ProblemTypeMalformed ||
		p.Type == acme.ProblemTypeBadPublicKey || p.Type == acme.ProblemTypeExternalAccountRequired):
		p.Detail = fmt.Sprintf("the CA refused the External Account Binding with key id %q: check eab-kid and the MAC key in eab-key-file; the CA said: %s",
			i.cfg.EAB.KeyID, p.Detail)
	default:
		return nil
	}
	return p
}

// maxCachedAccounts bounds the accounts an Issuer keeps in memory: a fleet
// of 100,000 tenants (per-tenant mode) must not grow a worker for ever.
// Evicted accounts are read again from acme_accounts when next used.
const maxCachedAccounts = 10000

// remember caches e for key, first evicting accounts already loaded (never
// one still loading: its waiters hold it) while the cache is at its bound.
// Called with i.mu held.
func (i *Issuer) remember(key string, e *accountEntry) {
	if _, ok := i.accounts[key]; !ok && len(i.accounts) >= maxCachedAccounts {
		for k, old := range i.accounts { // map order: an arbitrary loaded entry
			select {
			case <-old.ready:
				delete(i.accounts, k)
			default:
				continue
			}
			if len(i.accounts) < maxCachedAccounts {
				break
			}
		}
	}
	i.accounts[key] = e
}
