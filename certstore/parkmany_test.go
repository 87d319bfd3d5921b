package certstore_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/certfleet/certfleet/certstore"
)

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
