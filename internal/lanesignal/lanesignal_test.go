package lanesignal_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/certfleet/certfleet/internal/dbtest"
	"github.com/certfleet/certfleet/internal/lanesignal"
	"github.com/certfleet/certfleet/pipeline"
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

func TestUsageOnTheDatabase(t *testing.T) {
	s := lanesignal.New(dbtest.Migrated(t, 0))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	t0 := time.Now().Truncate(time.Microsecond)
	u := func(lane, tenant string, usage float64, at time.Time) pipeline.TenantUsage {
		return pipeline.TenantUsage{Lane: lane, Tenant: tenant, Usage: usage, At: at}
	}
	if err := s.Report(ctx, "w1", []pipeline.TenantUsage{u("new", "a", 3, t0), u("new", "b", 1, t0), u("renewal", "a", 2, t0)}); err != nil {
		t.Fatal(err)
	}
	if err := s.Report(ctx, "w2", []pipeline.TenantUsage{u("new", "a", 5, t0)}); err != nil {
		t.Fatal(err)
	}
	// w1 reports again: b is gone from its report, a changed.
	t1 := t0.Add(time.Second)
	if err := s.Report(ctx, "w1", []pipeline.TenantUsage{u("new", "a", 4, t1), u("renewal", "a", 2, t1)}); err != nil {
		t.Fatal(err)
	}
	got := func(owner string, tenants ...string) []string {
		t.Helper()
		rows, err := s.Others(ctx, owner, tenants)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range rows {
			out = append(out, fmt.Sprintf("%s/%s=%g@%s", r.Lane, r.Tenant, r.Usage, r.At.Sub(t0)))
		}
		slices.Sort(out)
		return out
	}
	for _, tc := range []struct {
		owner   string
		tenants []string
		want    []string
	}{
		{"w2", []string{"a", "b"}, []string{"new/a=4@1s", "renewal/a=2@1s"}},
		{"w1", []string{"a", "b"}, []string{"new/a=5@0s"}},
		{"w3", []string{"b"}, nil},
		{"w3", []string{"a"}, []string{"new/a=4@1s", "new/a=5@0s", "renewal/a=2@1s"}},
	} {
		if g := got(tc.owner, tc.tenants...); !slices.Equal(g, tc.want) {
			t.Errorf("Others(%s, %v) = %v, want %v", tc.owner, tc.tenants, g, tc.want)
		}
	}
	// An empty report clears the worker's rows.
	if err := s.Report(ctx, "w2", nil); err != nil {
		t.Fatal(err)
	}
	if g := got("w1", "a"); len(g) != 0 {
		t.Errorf("after w2's empty report, Others(w1, a) = %v, want nothing", g)
	}
}
