package lanesignal_test

import (
	"context"
	"testing"
	"time"

	"github.com/certfleet/certfleet/internal/dbtest"
	"github.com/certfleet/certfleet/internal/lanesignal"
)

func TestMarksOnTheDatabase(t *testing.T) {
	s := lanesignal.New(dbtest.Migrated(t, 0))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
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
