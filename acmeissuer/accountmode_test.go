package acmeissuer

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/certfleet/certfleet/testenv"
)

// countingRegistrations is a RegistrationLimiter that allows registrations
// until deny is set, and counts what it was asked.
type countingRegistrations struct {
	mu      sync.Mutex
	asked   int
	denyTil time.Time
}

func (c *countingRegistrations) SpendRegistration(_ context.Context, _ string) (bool, time.Time, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.asked++
	if !c.denyTil.IsZero() {
		return false, c.denyTil, nil
	}
	return true, time.Time{}, nil
}

func TestParseAccountMode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want AccountMode
		ok   bool
	}{
		{"", AccountPerTenant, true},
		{"per-tenant", AccountPerTenant, true},
		{"shared", AccountShared, true},
		{"Shared", "", false},
		{"per-ca", "", false},
	} {
		got, err := ParseAccountMode(tc.in)
		if got != tc.want || (err == nil) != tc.ok {
			t.Errorf("ParseAccountMode(%q) = %q, %v; want %q, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// Two tenants obtain a certificate each: in shared mode through one account
// (one registration, one account URL, the same AccountKey), per tenant
// through an account each, as before.
func TestAccountModes(t *testing.T) {
	s := testenv.Require(t)
	for _, tc := range []struct {
		mode          AccountMode
		registrations int
		sameAccount   bool
	}{
		{AccountShared, 1, true},
		{AccountPerTenant, 2, false},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			regs := &countingRegistrations{}
			iss := newTestIssuer(t, s, freshDB(t), func(c *Config) { c.AccountMode, c.Registrations = tc.mode, regs })
			urls := map[string]string{}
			for _, tenant := range []string{"tenant-a", "tenant-b"} {
				name := tenant + "-" + randomSuffix() + ".certfleet.test"
				res, err := iss.Obtain(ctx, Request{Tenant: tenant, SANs: []string{name}})
				if err != nil {
					t.Fatalf("%s: %v", tenant, err)
				}
				verify(t, s, res, name)
				urls[tenant] = res.AccountURL
			}
			if same := urls["tenant-a"] == urls["tenant-b"]; same != tc.sameAccount || urls["tenant-a"] == "" {
				t.Errorf("account URLs %v; want the same account for both: %v", urls, tc.sameAccount)
			}
			if same := iss.AccountKey("tenant-a") == iss.AccountKey("tenant-b"); same != tc.sameAccount {
				t.Errorf("AccountKey: %q and %q; want equal: %v", iss.AccountKey("tenant-a"), iss.AccountKey("tenant-b"), tc.sameAccount)
			}
			if got := int(iss.registrations.Load()); got != tc.registrations || regs.asked != tc.registrations {
				t.Errorf("%d accounts registered, %d registrations spent; want %d", got, regs.asked, tc.registrations)
			}
		})
	}
}

// A registration the fleet's limits defer sends nothing to the CA and leaves
// no account row behind (a later caller would wait for its registration):
// the error is RateLimited until the limiter's instant, and once
// registrations are allowed the account is registered.
func TestRegistrationLimitDefersNewAccount(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	until := time.Now().Add(time.Hour).Truncate(time.Second)
	regs := &countingRegistrations{denyTil: until}
	d := freshDB(t)
	iss := newTestIssuer(t, s, d, func(c *Config) { c.AccountMode, c.Registrations = AccountShared, regs })
	_, err := iss.Account(ctx, "tenant-a")
	var re *RegistrationLimitedError
	if c := Classify(err); !errors.As(err, &re) || c.Class != RateLimited || !c.RetryAfter.Equal(until) {
		t.Fatalf("Account: %v (%+v); want RateLimited until %v", err, c, until)
	}
	if n := iss.registrations.Load(); n != 0 {
		t.Fatalf("%d accounts registered while registrations were denied", n)
	}
	var rows int
	if err := d.Pool().QueryRow(ctx, `SELECT count(*) FROM acme_accounts`).Scan(&rows); err != nil || rows != 0 {
		t.Fatalf("%d account rows after the denied registration (%v); want none for a later caller to wait on", rows, err)
	}
	regs.mu.Lock()
	regs.denyTil = time.Time{}
	regs.mu.Unlock()
	acct, err := iss.Account(ctx, "tenant-b")
	if err != nil || acct.Location == "" {
		t.Fatalf("Account once allowed: %v", err)
	}
	if n := iss.registrations.Load(); n != 1 {
		t.Errorf("%d accounts registered; want 1", n)
	}
}
