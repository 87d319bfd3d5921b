package delivery

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/schema"
	"github.com/certfleet/certfleet/seal"
	"github.com/certfleet/certfleet/testenv"
)

func migrated(t *testing.T) *db.DB {
	t.Helper()
	testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := db.Open(ctx, db.Config{URL: testenv.FreshDatabase(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	if _, err := schema.Migrate(ctx, d, schema.Options{}); err != nil {
		t.Fatal(err)
	}
	return d
}

// Recipients in the database: only the public key is stored; add, rotate
// and remove are audited with their actor; names are unique; a removed
// recipient is gone from List at once and its history stays.
func TestStore(t *testing.T) {
	d := migrated(t)
	ctx := context.Background()
	s := NewStore(d)
	k1, k2 := mustKey(t), mustKey(t)
	r, err := s.Add(ctx, Recipient{Name: "edge-eu", Key: k1.Public(), Tenants: []string{"eu"}, SANsPatterns: []string{"*.example.eu"}}, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if r.Version != 1 || !r.BackfillPending || r.CreatedBy != "alice" || r.Key.KeyID() != k1.Public().KeyID() {
		t.Fatalf("added %+v", r)
	}
	if _, err := s.Add(ctx, Recipient{Name: "edge-eu", Key: k2.Public(), Tenants: []string{"eu"}}, "bob"); !errors.Is(err, ErrExists) {
		t.Errorf("second add of a name: %v", err)
	}
	var fe *FieldError
	if _, err := s.Add(ctx, Recipient{Name: "edge-x", Key: k2.Public(), Tenants: []string{"eu"}}, "has space"); !errors.As(err, &fe) || fe.Field != "actor" {
		t.Errorf("bad actor: %v", err)
	}
	var stored []byte
	if err := d.Pool().QueryRow(ctx, `SELECT public_key FROM delivery_recipients WHERE name = 'edge-eu'`).Scan(&stored); err != nil || len(stored) != 65 {
		t.Fatalf("stored key of %d bytes (%v): want the 65-byte public point only", len(stored), err)
	}
	if _, err := s.Rotate(ctx, "edge-eu", k1.Public(), "bob"); !errors.Is(err, ErrSameKey) {
		t.Errorf("rotate to the same key: %v", err)
	}
	r, err = s.Rotate(ctx, "edge-eu", k2.Public(), "bob")
	if err != nil || r.Version != 2 || r.Key.KeyID() != k2.Public().KeyID() {
		t.Fatalf("rotated %+v, %v", r, err)
	}
	if _, err := s.Rotate(ctx, "nobody", k2.Public(), "bob"); !errors.Is(err, ErrNotFound) {
		t.Errorf("rotate unknown: %v", err)
	}
	if _, err := s.Remove(ctx, "edge-eu", "carol"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Remove(ctx, "edge-eu", "carol"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second remove: %v", err)
	}
	if all, err := s.List(ctx); err != nil || len(all) != 0 {
		t.Errorf("list after remove: %v, %v", all, err)
	}
	h, err := s.History(ctx, "edge-eu")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range h {
		got = append(got, e.Action+"/"+e.Actor)
	}
	if !slices.Equal(got, []string{"add/alice", "rotate/bob", "remove/carol"}) || h[1].KeyID != k2.Public().KeyID() {
		t.Errorf("history %v", got)
	}
}

// Backfill: a recipient added after certificates were stored receives the
// current one of each identity it matches (not an expired or superseded
// one, not another tenant's), once; a rotation backfills the new key; the
// stored keys open with the fleet keyring only on the worker, the
// deliveries only with the recipient's key.
func TestBackfill(t *testing.T) {
	d := migrated(t)
	ctx := context.Background()
	keyring, err := seal.NewKeyring("k1", map[string][]byte{"k1": []byte("0123456789abcdef0123456789ABCDEF")})
	if err != nil {
		t.Fatal(err)
	}
	certs := certstore.New(d)
	store := func(c Certificate) {
		t.Helper()
		sealed, err := seal.SealPrivateKey(ctx, keyring, c.Key, seal.AAD(seal.PurposeCertKey, c.Identity, c.RequestID))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := certs.Claim(ctx, c.RequestID, c.Identity, "w", time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := certs.Complete(ctx, "w", certstore.Issued{Identity: c.Identity, RequestID: c.RequestID, Serial: c.Serial, ARICertID: "a.b",
			NotBefore: c.NotBefore, NotAfter: c.NotAfter, ChainPEM: c.ChainPEM, SealedKey: sealed, Issuer: "CN=test", Tenant: c.Tenant}, []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	old := testCertificate(t, "eu", time.Hour, "a.example.eu")
	cur := testCertificate(t, "eu", 2*time.Hour, "a.example.eu")
	other := testCertificate(t, "us", 2*time.Hour, "b.example.us")
	second := testCertificate(t, "eu", 2*time.Hour, "c.example.eu", "www.c.example.eu")
	for _, c := range []Certificate{old, cur, other, second} {
		store(c)
	}
	expired := testCertificate(t, "eu", time.Hour, "d.example.eu")
	expired.NotAfter = time.Now().Add(-time.Minute) // stored as expired; the chain is not read for the query
	store(expired)

	rs := NewStore(d)
	k := mustKey(t)
	if _, err := rs.Add(ctx, Recipient{Name: "edge-eu", Key: k.Public(), Tenants: []string{"eu"}}, "alice"); err != nil {
		t.Fatal(err)
	}
	w := &memWriter{}
	b := &Backfill{Store: rs, Certs: certs, Sealer: keyring, Owner: "worker-1", PageSize: 1,
		Deliverer: &Deliverer{Recipients: rs, Writer: w, Metrics: NewMetrics(nil)}}
	opened := func(key *PrivateKey) []string {
		var serials []string
		for _, m := range w.msgs {
			r, err := Decode(m)
			if err != nil {
				t.Fatal(err)
			}
			if r.Reason != ReasonRecipientAdded {
				t.Errorf("reason %s", r.Reason)
			}
			if _, err := Open(key, r); err == nil {
				serials = append(serials, r.Serial)
			}
			if _, err := keyring.Open(ctx, r.Ciphertext, nil); err == nil {
				t.Error("a delivery opens with the fleet keyring")
			}
		}
		slices.Sort(serials)
		return serials
	}
	want := []string{cur.Serial, second.Serial}
	slices.Sort(want)
	if did, err := b.Once(ctx); !did || err != nil {
		t.Fatalf("Once = %v, %v", did, err)
	}
	if got := opened(k); !slices.Equal(got, want) {
		t.Fatalf("backfilled %v, want the current eu certificates %v", got, want)
	}
	if did, err := b.Once(ctx); did || err != nil {
		t.Fatalf("a second Once found work: %v, %v", did, err)
	}
	r, _ := rs.Get(ctx, "edge-eu")
	if r.BackfillPending || r.BackfilledAt.IsZero() {
		t.Errorf("backfill not recorded: %+v", r)
	}

	k2 := mustKey(t)
	if _, err := rs.Rotate(ctx, "edge-eu", k2.Public(), "bob"); err != nil {
		t.Fatal(err)
	}
	w.msgs = nil
	if did, err := b.Once(ctx); !did || err != nil {
		t.Fatalf("Once after rotate = %v, %v", did, err)
	}
	if got := opened(k2); !slices.Equal(got, want) {
		t.Errorf("after rotation backfilled %v to the new key, want %v", got, want)
	}
	if got := opened(k); len(got) != 0 {
		t.Errorf("the old key opens %v after rotation", got)
	}
}
