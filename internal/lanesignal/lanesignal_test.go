package lanesignal_test

import (
	"context"
	"testing"
	"time"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/internal/lanesignal"
	"github.com/certfleet/certfleet/schema"
	"github.com/certfleet/certfleet/testenv"
)

func TestMarksOnTheDatabase(t *testing.T) {
	testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d, err := db.Open(ctx, db.Config{URL: testenv.FreshDatabase(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	if _, err := schema.Migrate(ctx, d, schema.Options{}); err != nil {
		t.Fatal(err)
	}
	s := lanesignal.New(d)
	if u, err := s.Until(ctx, []string{"emergency", "new"}); err != nil || !u.IsZero() {
		t.Fatalf("Until before any mark = %v, %v; want the zero time", u, err)
	}
	t0 := time.Now().Truncate(time.Microsecond)
	if err := s.Mark(ctx, "emergency", t0.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	// An earlier mark never shortens a later one.
	if err := s.Mark(ctx, "emergency", t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := s.Mark(ctx, "new", t0.Add(3*time.Second)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		lanes []string
		want  time.Time
	}{
		{[]string{"emergency"}, t0.Add(2 * time.Second)},
		{[]string{"emergency", "new"}, t0.Add(3 * time.Second)},
		{[]string{"renewal"}, time.Time{}},
	} {
		got, err := s.Until(ctx, tc.lanes)
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("Until(%v) = %v, %v; want %v", tc.lanes, got, err, tc.want)
		}
	}
}
