package certstore_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/schema"
	"github.com/certfleet/certfleet/testenv"
)

func newStore(t *testing.T) (*certstore.Store, *db.DB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := db.Open(ctx, db.Config{URL: testenv.FreshDatabase(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	if _, err := schema.Migrate(ctx, d, schema.Options{}); err != nil {
		t.Fatal(err)
	}
	return certstore.New(d), d
}

func issued(req string) certstore.Issued {
	now := time.Now().UTC().Truncate(time.Microsecond)
	return certstore.Issued{Identity: "id-" + req, RequestID: req, Serial: "abc", ARICertID: "aki.serial",
		NotBefore: now, NotAfter: now.Add(90 * 24 * time.Hour), ChainPEM: "-----BEGIN CERTIFICATE-----", SealedKey: []byte{1, 2, 3}, Issuer: "CN=Pebble"}
}

func TestRequestLifeCycle(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()

	r, err := s.Claim(ctx, "r1", "id-r1", "worker-a", time.Minute)
	if err != nil || !r.Acquired || r.Attempt != 1 {
		t.Fatalf("first claim: %+v, %v", r, err)
	}
	r, err = s.Claim(ctx, "r1", "id-r1", "worker-b", time.Minute)
	if err != nil || r.Acquired || !r.Busy || r.LeaseUntil.Before(time.Now()) {
		t.Fatalf("claim while another worker orders: %+v, %v; want Busy with a future lease", r, err)
	}
	if err := s.Complete(ctx, "worker-a", issued("r1"), []byte("event-1")); err != nil {
		t.Fatal(err)
	}
	r, err = s.Claim(ctx, "r1", "id-r1", "worker-b", time.Minute)
	if err != nil || !r.Done || r.State != certstore.StateSucceeded || string(r.Outcome) != "event-1" {
		t.Fatalf("redelivery after success: %+v, %v; want Done with the same outcome", r, err)
	}
	c, err := s.Latest(ctx, "id-r1")
	if err != nil || c.RequestID != "r1" || string(c.SealedKey) != "\x01\x02\x03" {
		t.Fatalf("Latest: %+v, %v", c, err)
	}
	if c, err := s.ByARICertID(ctx, "aki.serial"); err != nil || c.RequestID != "r1" {
		t.Fatalf("ByARICertID: %+v, %v", c, err)
	}
	if _, err := s.ByARICertID(ctx, "other"); !errors.Is(err, certstore.ErrNotFound) {
		t.Fatalf("ByARICertID(missing) = %v", err)
	}
	if _, err := s.Latest(ctx, "nope"); !errors.Is(err, certstore.ErrNotFound) {
		t.Fatalf("Latest(missing) = %v", err)
	}
}

func TestReleaseAndFail(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	if _, err := s.Claim(ctx, "r2", "id", "a", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(ctx, "r2", "b"); !errors.Is(err, certstore.ErrNotOwner) {
		t.Fatalf("release by a non-owner: %v", err)
	}
	if err := s.Release(ctx, "r2", "a"); err != nil {
		t.Fatal(err)
	}
	r, err := s.Claim(ctx, "r2", "id", "b", time.Minute)
	if err != nil || !r.Acquired || r.Attempt != 2 {
		t.Fatalf("claim after release: %+v, %v; want acquired, attempt 2", r, err)
	}
	if err := s.Fail(ctx, "r2", "b", []byte("failed-event")); err != nil {
		t.Fatal(err)
	}
	r, err = s.Claim(ctx, "r2", "id", "c", time.Minute)
	if err != nil || !r.Done || r.State != certstore.StateFailed || string(r.Outcome) != "failed-event" {
		t.Fatalf("claim after permanent failure: %+v, %v", r, err)
	}
}

// A worker that died holding a request loses it when its lease expires; its
// late result is refused so it cannot overwrite the new owner's.
func TestExpiredLeaseIsTakenOver(t *testing.T) {
	s, d := newStore(t)
	ctx := context.Background()
	if _, err := s.Claim(ctx, "r3", "id-r3", "dead", -time.Second); err != nil { // already expired
		t.Fatal(err)
	}
	r, err := s.Claim(ctx, "r3", "id-r3", "alive", time.Minute)
	if err != nil || !r.Acquired || r.Attempt != 2 {
		t.Fatalf("takeover: %+v, %v", r, err)
	}
	if err := s.Complete(ctx, "dead", issued("r3"), []byte("late")); !errors.Is(err, certstore.ErrNotOwner) {
		t.Fatalf("late completion by the old owner: %v; want ErrNotOwner", err)
	}
	var n int
	if err := d.Pool().QueryRow(ctx, `SELECT count(*) FROM issued_certificates WHERE request_id = 'r3'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("old owner's certificate stored (%d rows, %v)", n, err)
	}
	if err := s.Complete(ctx, "alive", issued("r3"), []byte("ok")); err != nil {
		t.Fatal(err)
	}
}

// Eight workers receiving the same request at once: exactly one orders.
func TestConcurrentClaimsOneWinner(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	for round := 0; round < 10; round++ {
		req := "race-" + string(rune('a'+round))
		var mu sync.Mutex
		winners := 0
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := s.Claim(ctx, req, "id", "w"+string(rune('0'+w)), time.Minute)
				if err != nil {
					t.Error(err)
					return
				}
				if r.Acquired {
					mu.Lock()
					winners++
					mu.Unlock()
				} else if !r.Busy {
					t.Errorf("loser got %+v; want Busy", r)
				}
			}()
		}
		wg.Wait()
		if winners != 1 {
			t.Fatalf("round %d: %d workers acquired the request, want 1", round, winners)
		}
	}
}

// The order a dead (or releasing) owner recorded reaches the next owner's
// claim; only the current owner can record one; an ended request forgets it.
func TestRecordedOrderGoesToTheNextOwner(t *testing.T) {
	s, d := newStore(t)
	ctx := context.Background()
	first, err := s.Claim(ctx, "r5", "id-r5", "dead", -time.Second) // its lease has already run out
	if err != nil || !first.Acquired || first.Order != nil {
		t.Fatalf("first claim: %+v, %v", first, err)
	}
	o := certstore.Order{URL: "https://ca.test/order/1", SealedKey: []byte("sealed"), CA: "https://ca.test/dir"}
	if err := s.RecordOrder(ctx, "r5", "dead", o); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordOrder(ctx, "r5", "stranger", certstore.Order{URL: "https://ca.test/order/2", SealedKey: []byte("x")}); !errors.Is(err, certstore.ErrNotOwner) {
		t.Fatalf("RecordOrder by a non-owner: %v; want ErrNotOwner", err)
	}

	next, err := s.Claim(ctx, "r5", "id-r5", "alive", time.Minute)
	if err != nil || !next.Acquired || next.Order == nil || next.Order.URL != o.URL || string(next.Order.SealedKey) != "sealed" || next.Order.CA != o.CA {
		t.Fatalf("takeover claim: %+v, %v; want the recorded order, at its CA", next, err)
	}
	if err := s.Release(ctx, "r5", "alive"); err != nil {
		t.Fatal(err)
	}
	again, err := s.Claim(ctx, "r5", "id-r5", "third", time.Minute)
	if err != nil || again.Order == nil || again.Order.URL != o.URL {
		t.Fatalf("claim after a release: %+v, %v; want the recorded order", again, err)
	}
	if err := s.Complete(ctx, "third", issued("r5"), []byte("ok")); err != nil {
		t.Fatal(err)
	}
	var url, ca *string
	var key []byte
	if err := d.Pool().QueryRow(ctx, `SELECT order_url, order_key, order_ca FROM issuance_requests WHERE request_id = 'r5'`).Scan(&url, &key, &ca); err != nil || url != nil || key != nil || ca != nil {
		t.Fatalf("ended request keeps its order (%v, %d key bytes, CA %v, %v)", url, len(key), ca, err)
	}
	// An order recorded without its CA (as before schema 0009) comes back
	// with an empty CA: the request's own.
	if _, err := s.Claim(ctx, "r6", "id-r6", "dead", -time.Second); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordOrder(ctx, "r6", "dead", certstore.Order{URL: "https://ca.test/order/3", SealedKey: []byte("k")}); err != nil {
		t.Fatal(err)
	}
	if c, err := s.Claim(ctx, "r6", "id-r6", "alive", time.Minute); err != nil || c.Order == nil || c.Order.CA != "" {
		t.Fatalf("claim of an order without its CA: %+v, %v", c, err)
	}
}

// The heartbeat: a renewed short lease keeps the request from other
// workers; one not renewed frees it; a renewal by anyone but the owner, or
// after the owner lost or ended the claim, changes nothing.
func TestRenewKeepsTheClaim(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	if _, err := s.Claim(ctx, "r5", "id-r5", "a", -time.Second); err != nil { // lapsed at once
		t.Fatal(err)
	}
	if err := s.Renew(ctx, "r5", "a", time.Minute); err != nil {
		t.Fatalf("renewal by the owner of a lapsed, untaken lease: %v", err)
	}
	if r, err := s.Claim(ctx, "r5", "id-r5", "b", time.Minute); err != nil || !r.Busy || r.LeaseUntil.Before(time.Now().Add(30*time.Second)) {
		t.Fatalf("claim after the renewal: %+v, %v; want Busy until about a minute from now", r, err)
	}
	if err := s.Renew(ctx, "r5", "b", time.Minute); !errors.Is(err, certstore.ErrNotOwner) {
		t.Fatalf("renewal by a non-owner: %v; want ErrNotOwner", err)
	}
	if err := s.Renew(ctx, "r5", "a", -time.Second); err != nil { // the owner stops renewing: the lease lapses
		t.Fatal(err)
	}
	if r, err := s.Claim(ctx, "r5", "id-r5", "b", time.Minute); err != nil || !r.Acquired {
		t.Fatalf("claim after the lease lapsed: %+v, %v; want Acquired", r, err)
	}
	if err := s.Renew(ctx, "r5", "a", time.Minute); !errors.Is(err, certstore.ErrNotOwner) {
		t.Fatalf("renewal by the old owner after a takeover: %v; want ErrNotOwner", err)
	}
	if err := s.Release(ctx, "r5", "b"); err != nil {
		t.Fatal(err)
	}
	if err := s.Renew(ctx, "r5", "b", time.Minute); !errors.Is(err, certstore.ErrNotOwner) {
		t.Fatalf("renewal after release: %v; want ErrNotOwner", err)
	}
}

// Two certificates of a SAN set with the same validity to the second (a
// replacement issued within a second of the original): Current lists one,
// the later stored.
func TestCurrentIsOnePerSANSet(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	nb := time.Now().UTC().Truncate(time.Second)
	for _, serial := range []string{"old", "new"} {
		if _, err := s.Claim(ctx, "r-"+serial, "same-identity", "o", time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := s.Complete(ctx, "o", certstore.Issued{Identity: "same-identity", RequestID: "r-" + serial, Serial: serial, ARICertID: "x." + serial,
			NotBefore: nb, NotAfter: nb.Add(90 * 24 * time.Hour), ChainPEM: "-", SealedKey: []byte{1}}, []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Current(ctx, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Serial != "new" {
		var serials []string
		for _, c := range got {
			serials = append(serials, c.Serial)
		}
		t.Fatalf("Current = %v, want only the later stored [new]", serials)
	}
}
