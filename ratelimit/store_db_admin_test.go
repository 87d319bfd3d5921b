package ratelimit_test

import (
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/ratelimit"
)

// TestDBStoreAdmin covers the reads and the penalty clearing the admin
// commands use: Bucket, Penalties and ClearPenalty.
func TestDBStoreAdmin(t *testing.T) {
	d := testDB(t)
	ctx := tctx(t)
	s := ratelimit.NewDBStore(d)
	now := time.Now()
	lim := ratelimit.Limit{Count: 10, Period: time.Hour, Burst: 10}
	const key = "le:NewOrdersPerAccount:acct-admin"

	if st, found, err := s.Bucket(ctx, key); err != nil || found || st.Key != key || !st.TAT.IsZero() {
		t.Fatalf("unwritten bucket: %+v, found %v, err %v; want not found", st, found, err)
	}
	if _, err := s.Spend(ctx, now, []ratelimit.Request{{Key: key, Limit: lim, Cost: 3}}); err != nil {
		t.Fatal(err)
	}
	st, found, err := s.Bucket(ctx, key)
	if err != nil || !found {
		t.Fatalf("after spend: found %v, err %v", found, err)
	}
	// A full bucket's TAT is now; three spends move it 3 emission intervals on.
	if want := now.Add(3 * time.Duration(lim.Interval())); !st.TAT.Equal(want) {
		t.Errorf("TAT %s, want %s", st.TAT, want)
	}
	if d := ratelimit.Check(lim, st.TAT, now, 1); d.Remaining != 7 {
		t.Errorf("remaining %d, want 7", d.Remaining)
	}

	until := now.Add(time.Hour).Truncate(time.Microsecond)
	if err := s.Penalize(ctx, key, until); err != nil {
		t.Fatal(err)
	}
	if err := s.Penalize(ctx, "le:CertificatesPerDomain:example.com", now.Add(-time.Minute)); err != nil { // already over
		t.Fatal(err)
	}
	ps, err := s.Penalties(ctx, now, 10)
	if err != nil || len(ps) != 1 || ps[0].Key != key || !ps[0].Until.Equal(until) {
		t.Fatalf("penalties %+v, err %v; want only %s until %s", ps, err, key, until)
	}
	if st, _, _ := s.Bucket(ctx, key); !st.PenaltyUntil.Equal(until) {
		t.Errorf("bucket penalty %s, want %s", st.PenaltyUntil, until)
	}
	if cleared, err := s.ClearPenalty(ctx, now, key); err != nil || !cleared {
		t.Fatalf("ClearPenalty: %v, %v; want true", cleared, err)
	}
	if ps, _ := s.Penalties(ctx, now, 10); len(ps) != 0 {
		t.Errorf("penalties after clear: %+v", ps)
	}
	if cleared, err := s.ClearPenalty(ctx, now, key); err != nil || cleared {
		t.Errorf("second ClearPenalty: %v, %v; want false", cleared, err)
	}
	if cleared, err := s.ClearPenalty(ctx, now, "le:NewOrdersPerAccount:nobody"); err != nil || cleared {
		t.Errorf("ClearPenalty of unknown key: %v, %v; want false", cleared, err)
	}
	ds, err := s.Spend(ctx, now, []ratelimit.Request{{Key: key, Limit: lim, Cost: 1}})
	if err != nil || !ds[0].Allowed {
		t.Fatalf("spend after clearing: %+v, %v", ds, err)
	}
}

func TestDefaultCatalogue(t *testing.T) {
	c := ratelimit.DefaultCatalogue()
	for dir, id := range map[string]string{ratelimit.LetsEncryptDirectory: "letsencrypt", ratelimit.LetsEncryptStagingDirectory: "letsencrypt-staging"} {
		txn, err := c.Transaction(dir, ratelimit.NewOrdersPerAccount, "acct")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(txn.Key(), id+":") {
			t.Errorf("%s: key %s, want prefix %s:", dir, txn.Key(), id)
		}
		if l, _ := c.Default(dir, ratelimit.NewOrdersPerAccount); l != ratelimit.LetsEncryptLimits()[ratelimit.NewOrdersPerAccount].Limit {
			t.Errorf("%s: NewOrdersPerAccount %s", dir, l)
		}
	}
}
