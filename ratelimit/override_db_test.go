package ratelimit_test

import (
	"context"
	"errors"
	"sort"
	"testing"
	"time"

	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/ratelimit"
)

const leDir = "https://acme-v02.api.letsencrypt.org/directory"

func catalogue(t testing.TB) *ratelimit.Catalogue {
	t.Helper()
	c, err := ratelimit.NewCatalogue(ratelimit.CA{ID: "le", Directory: leDir, Limits: ratelimit.LetsEncryptLimits()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustTxn(t testing.TB, c *ratelimit.Catalogue, n ratelimit.Name, value, account, domain string) ratelimit.Transaction {
	t.Helper()
	txn, err := c.Transaction(leDir, n, value)
	if err != nil {
		t.Fatal(err)
	}
	txn.Account, txn.Domain = account, domain
	return txn
}

func tctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestOverrideStore(t *testing.T) {
	d := testDB(t)
	ctx := tctx(t)
	now := time.Now().Truncate(time.Microsecond)
	clk := clock.NewFake(now)
	s := ratelimit.NewOverrideStore(d, clk)
	cat := catalogue(t)
	week := 7 * 24 * time.Hour

	dom := mustTxn(t, cat, ratelimit.CertificatesPerDomain, "example.com", "acct-1", "example.com")
	other := mustTxn(t, cat, ratelimit.CertificatesPerDomain, "other.org", "acct-1", "other.org")
	sub := mustTxn(t, cat, ratelimit.FailedAuthorizationsPerDomainPerAccount, "acct-1:a.shop.example.com", "acct-1", "a.shop.example.com")
	find := func(txns ...ratelimit.Transaction) []*ratelimit.Override {
		t.Helper()
		got, err := s.Find(ctx, clk.Now(), txns)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}

	// Wildcard, then a more specific wildcard, then an exact key.
	wild, err := s.Create(ctx, ratelimit.Override{Name: ratelimit.FailedAuthorizationsPerDomainPerAccount, Key: "*.example.com",
		Limit: ratelimit.Limit{Count: 20, Period: time.Hour, Burst: 20}, ValidFrom: now.Add(-time.Minute), CreatedBy: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if got := find(sub)[0]; got == nil || got.ID != wild.ID {
		t.Fatalf("wildcard not found for a.shop.example.com: %+v", got)
	}
	narrow, err := s.Create(ctx, ratelimit.Override{Name: ratelimit.FailedAuthorizationsPerDomainPerAccount, Key: "*.shop.example.com",
		Limit: ratelimit.Limit{Count: 30, Period: time.Hour, Burst: 30}, ValidFrom: now.Add(-time.Minute), CreatedBy: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if got := find(sub)[0]; got == nil || got.ID != narrow.ID {
		t.Fatalf("most specific wildcard not chosen: %+v", got)
	}

	// A lower override replaces a higher default, and the batched lookup
	// answers several keys at once.
	low, err := s.Create(ctx, ratelimit.Override{Name: ratelimit.CertificatesPerDomain, Key: "example.com",
		Limit: ratelimit.Limit{Count: 2, Period: week, Burst: 2}, ValidFrom: now.Add(-time.Minute), Comment: "abuse", CreatedBy: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	got := find(dom, other, sub)
	if got[0] == nil || got[0].Limit.Count != 2 || got[1] != nil || got[2] == nil || got[2].ID != narrow.ID {
		t.Fatalf("batched lookup = %+v %+v %+v", got[0], got[1], got[2])
	}

	// Stale version: typed conflict, nothing written.
	stale := *low
	stale.Limit = ratelimit.Limit{Count: 1000, Period: week, Burst: 1000}
	up, err := s.Update(ctx, stale, "bob")
	if err != nil {
		t.Fatal(err)
	}
	if up.Version != 2 || !up.Enabled || up.Limit.Count != 1000 {
		t.Fatalf("update = %+v, want version 2, still enabled, count 1000", up)
	}
	stale.Limit.Count = 7
	_, err = s.Update(ctx, stale, "carol")
	var ce *ratelimit.ConflictError
	if !errors.Is(err, ratelimit.ErrConflict) || !errors.As(err, &ce) || ce.Current != 2 {
		t.Fatalf("stale update err = %v, want ConflictError at version 2", err)
	}
	if got := find(dom)[0]; got.Limit.Count != 1000 {
		t.Fatalf("stale update overwrote: %+v", got)
	}
	// An update back to a lower value takes effect too.
	lower := *up
	lower.Limit = ratelimit.Limit{Count: 3, Period: week, Burst: 3}
	if up, err = s.Update(ctx, lower, "bob"); err != nil || find(dom)[0].Limit.Count != 3 {
		t.Fatalf("lowering override: %v, %+v", err, find(dom)[0])
	}

	// Disabling the last override makes the default apply.
	if _, err := s.Disable(ctx, up.ID, up.Version, "bob"); err != nil {
		t.Fatal(err)
	}
	if got := find(dom)[0]; got != nil {
		t.Fatalf("disabled override still found: %+v", got)
	}

	// Validity windows: future and expired rows do not apply.
	_, err = s.Create(ctx, ratelimit.Override{Name: ratelimit.NewOrdersPerAccount, Key: "acct-9",
		Limit: ratelimit.Limit{Count: 1, Period: time.Hour, Burst: 1}, ValidFrom: now.Add(time.Hour), CreatedBy: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	acct := mustTxn(t, cat, ratelimit.NewOrdersPerAccount, "acct-9", "acct-9", "")
	if got := find(acct)[0]; got != nil {
		t.Fatalf("future override applies now: %+v", got)
	}
	clk.Advance(2 * time.Hour)
	if got := find(acct)[0]; got == nil {
		t.Fatal("override not applied once valid")
	}

	// Delete, with version check; then audit trail and outbox.
	if err := s.Delete(ctx, wild.ID, 99, "alice"); !errors.Is(err, ratelimit.ErrConflict) {
		t.Fatalf("delete with wrong version: %v", err)
	}
	if err := s.Delete(ctx, wild.ID, 1, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, wild.ID); !errors.Is(err, ratelimit.ErrNotFound) {
		t.Fatalf("Get deleted = %v, want ErrNotFound", err)
	}
	hist, err := s.History(ctx, low.ID)
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, h := range hist {
		actions = append(actions, h.Action)
	}
	sort.Strings(actions)
	if len(actions) != 4 || actions[0] != "create" || actions[1] != "disable" {
		t.Fatalf("audit actions = %v, want create, update x2, disable", actions)
	}
	var pending int
	if err := d.Pool().QueryRow(ctx, `SELECT count(*) FROM ratelimit_outbox WHERE published_at IS NULL`).Scan(&pending); err != nil {
		t.Fatal(err)
	}
	if pending != 8 { // 4 creates, 2 updates, 1 disable, 1 delete
		t.Fatalf("outbox rows = %d, want 8", pending)
	}
	// Validation happens before any SQL.
	if _, err := s.Create(ctx, ratelimit.Override{Name: "Nope", Key: "*.com", ValidFrom: now, CreatedBy: "x"}); err == nil {
		t.Fatal("invalid override created")
	}
}
