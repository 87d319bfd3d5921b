package acmeissuer

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/certfleet/certfleet/seal"
	"github.com/certfleet/certfleet/testenv"
)

// Four workers (separate Issuers, as in separate processes) racing for the
// same tenant's account register exactly one: one row, one registration at
// the CA, the same account URL everywhere.
func TestAccountRaceRegistersOnce(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const workers = 4
	issuers := make([]*Issuer, workers)
	for w := range issuers {
		issuers[w] = newTestIssuer(t, s, d, nil)
	}
	urls := make([]string, workers)
	errs := make([]error, workers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for w := range issuers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			acct, err := issuers[w].Account(ctx, "tenant-a")
			urls[w], errs[w] = acct.Location, err
		}()
	}
	close(start)
	wg.Wait()
	var registrations int64
	for w := range issuers {
		if errs[w] != nil {
			t.Fatalf("worker %d: %v", w, errs[w])
		}
		if urls[w] == "" || urls[w] != urls[0] {
			t.Fatalf("account URLs differ: %q", urls)
		}
		registrations += issuers[w].registrations.Load()
	}
	if registrations != 1 {
		t.Errorf("newAccount succeeded %d times; want 1", registrations)
	}
	var rows int
	var url string
	if err := d.Pool().QueryRow(ctx, `SELECT count(*), max(account_url) FROM acme_accounts WHERE tenant = 'tenant-a'`).Scan(&rows, &url); err != nil {
		t.Fatal(err)
	}
	if rows != 1 || url != urls[0] {
		t.Errorf("rows = %d, url %q; want 1 row with %q", rows, url, urls[0])
	}
	// The stored key is sealed, bound to (directory, tenant), and is the account's key.
	var blob []byte
	if err := d.Pool().QueryRow(ctx, `SELECT sealed_key FROM acme_accounts WHERE tenant = 'tenant-a'`).Scan(&blob); err != nil {
		t.Fatal(err)
	}
	if _, err := seal.OpenPrivateKey(ctx, testKeyring(t), blob, seal.AAD(seal.PurposeAccountKey, s.ACMEDirectory, "tenant-b")); err == nil {
		t.Error("account key opens under another tenant's AAD")
	}
	// Another tenant gets another account; a later call is served from memory.
	other, err := issuers[0].Account(ctx, "tenant-b")
	if err != nil || other.Location == urls[0] {
		t.Fatalf("tenant-b: %q, %v", other.Location, err)
	}
	if again, _ := issuers[1].Account(ctx, "tenant-a"); again.Location != urls[0] {
		t.Errorf("second lookup: %q", again.Location)
	}
}

// A worker that claimed the row but died before registering leaves a sealed
// key and no URL; the next worker waits AccountWait, then registers that same
// key, and the CA returns the same account for it every time.
func TestAccountTakeoverOfDeadClaim(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	iss := newTestIssuer(t, s, d, func(c *Config) { c.AccountWait = 100 * time.Millisecond; c.AccountPoll = 10 * time.Millisecond })
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	blob, err := seal.SealPrivateKey(ctx, testKeyring(t), key, iss.accountAAD("t"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Pool().Exec(ctx, `INSERT INTO acme_accounts (ca_directory, tenant, account_url, sealed_key) VALUES ($1, 't', '', $2)`, s.ACMEDirectory, blob); err != nil {
		t.Fatal(err)
	}
	acct, err := iss.Account(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	if !key.Public().(*ecdsa.PublicKey).Equal(acct.PrivateKey.Public()) {
		t.Fatal("took over with a different key")
	}
	// Registering the same key again (a second late worker) yields the same account.
	again, err := iss.register(ctx, "t", key)
	if err != nil || again.Location != acct.Location {
		t.Fatalf("re-registering the same key: %q vs %q, %v", again.Location, acct.Location, err)
	}
	var url string
	if err := d.Pool().QueryRow(ctx, `SELECT account_url FROM acme_accounts WHERE tenant = 't'`).Scan(&url); err != nil || url != acct.Location {
		t.Fatalf("stored url %q, %v", url, err)
	}
}

// A context that ends while waiting for another worker's registration
// returns promptly with the context's error.
func TestAccountWaitHonoursContext(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	iss := newTestIssuer(t, s, d, func(c *Config) { c.AccountWait = time.Hour })
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ctx := context.Background()
	blob, _ := seal.SealPrivateKey(ctx, testKeyring(t), key, iss.accountAAD("slow"))
	if _, err := d.Pool().Exec(ctx, `INSERT INTO acme_accounts (ca_directory, tenant, account_url, sealed_key) VALUES ($1, 'slow', '', $2)`, s.ACMEDirectory, blob); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := iss.Account(short, "slow"); err == nil {
		t.Fatal("no error")
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("took %v", el)
	}
}

// A CA that no longer knows the stored account (it lost its state, as a
// restarted Pebble does) answers accountDoesNotExist: the issuer registers
// the tenant's key again, records the new URL for the fleet and issues,
// instead of failing every request of the tenant for good.
func TestObtainRegistersAgainWhenTheCALostTheAccount(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	first := newTestIssuer(t, s, d, nil)
	if _, err := first.Obtain(ctx, Request{Tenant: "t", SANs: []string{"lost1-" + randomSuffix() + ".certfleet.test"}}); err != nil {
		t.Fatal(err)
	}
	// An account URL the CA never issued stands for one it forgot.
	var old string
	if err := d.Pool().QueryRow(ctx, `UPDATE acme_accounts SET account_url = account_url || 'gone'
		WHERE tenant = 't' RETURNING account_url`).Scan(&old); err != nil {
		t.Fatal(err)
	}
	second := newTestIssuer(t, s, d, nil) // another process: reads the row
	res, err := second.Obtain(ctx, Request{Tenant: "t", SANs: []string{"lost2-" + randomSuffix() + ".certfleet.test"}})
	if err != nil {
		t.Fatalf("after the CA lost the account: %v", err)
	}
	var now string
	if err := d.Pool().QueryRow(ctx, `SELECT account_url FROM acme_accounts WHERE tenant = 't'`).Scan(&now); err != nil {
		t.Fatal(err)
	}
	if now == old || now != res.AccountURL {
		t.Errorf("row holds %q (was %q), the certificate was ordered as %q", now, old, res.AccountURL)
	}
	if n := second.registrations.Load(); n != 1 {
		t.Errorf("%d registrations, want 1", n)
	}
}
