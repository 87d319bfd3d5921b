package certstore_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/certfleet/certfleet/certstore"
)

// Parked records come out once due, oldest due first, to one relay at a
// time; a relay that dies without Unpark gives them back after its lease;
// a request parked again while being relayed stays parked.
func TestParkedRecordsComeOutWhenDue(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	now := time.Now()
	for _, p := range []certstore.Parked{
		{RequestID: "late", Identity: "i1", Due: now.Add(-1 * time.Second), Record: []byte("late")},
		{RequestID: "early", Identity: "i2", Due: now.Add(-3 * time.Second), Record: []byte("early")},
		{RequestID: "future", Identity: "i3", Due: now.Add(time.Hour), Record: []byte("future")},
	} {
		if err := s.Park(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	due, err := s.Due(ctx, "relay-a", time.Minute, 10)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(due); !slices.Equal(got, []string{"early", "late"}) {
		t.Fatalf("due %v, want [early late] (oldest due first, nothing not yet due)", got)
	}
	if again, err := s.Due(ctx, "relay-b", time.Minute, 10); err != nil || len(again) != 0 {
		t.Fatalf("a second relay got %v, %v; want nothing while the first holds them", ids(again), err)
	}
	// "late" is parked again (a new decision) before the relay removes it.
	if err := s.Park(ctx, certstore.Parked{RequestID: "late", Identity: "i1", Due: now.Add(-time.Second), Record: []byte("late-2")}); err != nil {
		t.Fatal(err)
	}
	for _, p := range due {
		if err := s.Unpark(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	again, err := s.Due(ctx, "relay-b", time.Minute, 10)
	if err != nil || !slices.Equal(ids(again), []string{"late"}) || string(again[0].Record) != "late-2" {
		t.Fatalf("after unpark: %v, %v; want the re-parked late-2 only", ids(again), err)
	}
	// relay-b dies holding it: its lease lapses and the next relay gets it.
	if err := s.Park(ctx, certstore.Parked{RequestID: "x", Identity: "i4", Due: now.Add(-time.Second), Record: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Due(ctx, "relay-c", -time.Second, 10); err != nil || !slices.Equal(ids(got), []string{"x"}) {
		t.Fatalf("%v, %v; want x", ids(got), err)
	}
	if got, err := s.Due(ctx, "relay-d", time.Minute, 10); err != nil || !slices.Equal(ids(got), []string{"x"}) {
		t.Fatalf("after relay-c's lease lapsed: %v, %v; want x again", ids(got), err)
	}
}

// Eight relays polling at once: every due record goes to exactly one.
func TestParkedRecordsGoToOneRelay(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	for i := range 50 {
		id := string(rune('a'+i/26)) + string(rune('a'+i%26))
		if err := s.Park(ctx, certstore.Parked{RequestID: id, Identity: id, Due: time.Now().Add(-time.Second), Record: []byte(id)}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for r := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				got, err := s.Due(ctx, "relay-"+string(rune('0'+r)), time.Minute, 7)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for _, p := range got {
					seen[p.RequestID]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != 50 {
		t.Errorf("%d of 50 records relayed", len(seen))
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s went to %d relays", id, n)
		}
	}
}

// A booking released with the claim reaches the next owner; a plain
// release or the request's end forgets it.
func TestBookingGoesToTheNextOwner(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	at := time.Now().Add(time.Minute).UTC().Truncate(time.Microsecond)
	if _, err := s.Claim(ctx, "r6", "id-r6", "a", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseBooked(ctx, "r6", "b", certstore.Booking{CA: "https://ca/dir", At: at}); err == nil {
		t.Fatal("a non-owner released with a booking")
	}
	if err := s.ReleaseBooked(ctx, "r6", "a", certstore.Booking{CA: "https://ca/dir", At: at}); err != nil {
		t.Fatal(err)
	}
	r, err := s.Claim(ctx, "r6", "id-r6", "b", time.Minute)
	if err != nil || !r.Acquired || r.Booking == nil || r.Booking.CA != "https://ca/dir" || !r.Booking.At.Equal(at) {
		t.Fatalf("claim after a booked release: %+v (booking %+v), %v", r, r.Booking, err)
	}
	if err := s.Release(ctx, "r6", "b"); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Claim(ctx, "r6", "id-r6", "c", time.Minute); err != nil || !r.Acquired || r.Booking != nil {
		t.Fatalf("claim after a plain release: %+v, %v; want no booking", r, err)
	}
}

func ids(ps []certstore.Parked) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.RequestID)
	}
	return out
}

// ParkMany parks like Park, in one statement: a request parked twice in
// the batch keeps the last; one parked before is replaced (and its relay
// claim dropped); a record claimed by a relay comes out again only when
// due.
func TestParkManyParksLikePark(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	now := time.Now()
	if err := s.Park(ctx, certstore.Parked{RequestID: "before", Identity: "i0", Due: now.Add(-time.Second), Record: []byte("old")}); err != nil {
		t.Fatal(err)
	}
	if claimed, err := s.Due(ctx, "relay-a", time.Hour, 10); err != nil || len(claimed) != 1 {
		t.Fatalf("claiming the first park: %v, %v", ids(claimed), err)
	}
	if err := s.ParkMany(ctx, nil); err != nil {
		t.Fatalf("ParkMany of nothing: %v", err)
	}
	err := s.ParkMany(ctx, []certstore.Parked{
		{RequestID: "a", Identity: "i1", Due: now.Add(-2 * time.Second), Record: []byte("a-1")},
		{RequestID: "before", Identity: "i0", Due: now.Add(-3 * time.Second), Record: []byte("new")},
		{RequestID: "a", Identity: "i1", Due: now.Add(-time.Second), Record: []byte("a-2")},
		{RequestID: "later", Identity: "i2", Due: now.Add(time.Hour), Record: []byte("later")},
	})
	if err != nil {
		t.Fatal(err)
	}
	due, err := s.Due(ctx, "relay-b", time.Minute, 10)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(due); !slices.Equal(got, []string{"before", "a"}) {
		t.Fatalf("due %v, want [before a]: oldest due first, the re-parked one free of relay-a's claim, nothing not yet due", got)
	}
	if string(due[0].Record) != "new" || string(due[1].Record) != "a-2" {
		t.Errorf("records %q and %q, want the latest parks: new and a-2", due[0].Record, due[1].Record)
	}
	if due[0].Version == due[1].Version {
		t.Error("two parks share a version")
	}
}
