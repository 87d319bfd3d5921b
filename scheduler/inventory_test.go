package scheduler_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/names"
	"github.com/certfleet/certfleet/scheduler"
)

const testCA = "https://ca.example.net/directory"

func TestNormalize(t *testing.T) {
	m, err := scheduler.Normalize(scheduler.Spec{SANs: []string{"WWW.Example.com", "EXAMPLE.com", "www.example.com"}, CA: testCA})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(m.SANs, " "); got != "example.com www.example.com" {
		t.Errorf("sans %q", got)
	}
	if m.Identity != events.Identity([]string{"www.example.com", "example.com"}) || m.Tenant != scheduler.DefaultTenant || m.KeyType != events.KeyECDSAP256 {
		t.Errorf("got %+v", m)
	}
	for _, tc := range []struct {
		spec  scheduler.Spec
		field string
	}{
		{scheduler.Spec{CA: testCA}, "sans"},
		{scheduler.Spec{SANs: []string{"com"}, CA: testCA}, "sans[0]"},
		{scheduler.Spec{SANs: []string{"a.example.com", "bad_name.example.com"}, CA: testCA}, "sans[1]"},
		{scheduler.Spec{SANs: []string{"a.example.com"}}, "ca"},
		{scheduler.Spec{SANs: []string{"a.example.com"}, CA: "http://insecure.example/dir"}, "ca"},
		{scheduler.Spec{SANs: []string{"a.example.com"}, CA: testCA, Tenant: "has space"}, "tenant"},
		{scheduler.Spec{SANs: []string{"a.example.com"}, CA: testCA, Profile: "Upper"}, "profile"},
		{scheduler.Spec{SANs: []string{"a.example.com"}, CA: testCA, KeyType: "dsa"}, "key_type"},
	} {
		_, err := scheduler.Normalize(tc.spec)
		if !errors.Is(err, scheduler.ErrInvalidSpec) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%+v: error %v does not name %s", tc.spec, err, tc.field)
		}
	}
	if _, err := scheduler.Normalize(scheduler.Spec{SANs: []string{"com"}, CA: testCA}); !errors.Is(err, names.ErrSingleLabel) {
		t.Errorf("want names.ErrSingleLabel wrapped, got %v", err)
	}
}

func TestManageIdempotent(t *testing.T) {
	d, _ := freshDB(t)
	ctx := ctxT(t, 30*time.Second)
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	inv := scheduler.NewInventory(d, clock.NewFake(now))
	m, err := scheduler.Normalize(scheduler.Spec{SANs: []string{"b.example.com", "a.example.com"}, Tenant: "t1", CA: testCA, Profile: "shortlived"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := inv.Manage(ctx, m, m)
	if err != nil || res.Added != 1 || res.Already != 1 {
		t.Fatalf("first manage: %+v %v", res, err)
	}
	row, err := inv.Get(ctx, m.Identity)
	if err != nil {
		t.Fatal(err)
	}
	if !row.NextRenewalAt.Equal(now) || row.Basis != scheduler.BasisNew || row.Tenant != "t1" || row.Profile != "shortlived" ||
		strings.Join(row.SANs, ",") != "a.example.com,b.example.com" {
		t.Errorf("row %+v", row)
	}
	// Managing the same SAN set again, in another order and for another
	// tenant, changes nothing.
	now = now.Add(time.Hour)
	m2, _ := scheduler.Normalize(scheduler.Spec{SANs: []string{"A.example.com", "b.example.com"}, Tenant: "t2", CA: testCA})
	res, err = inv.Manage(ctx, m2)
	if err != nil || res.Added != 0 || res.Already != 1 {
		t.Fatalf("second manage: %+v %v", res, err)
	}
	row2, _ := inv.Get(ctx, m.Identity)
	if !row2.NextRenewalAt.Equal(row.NextRenewalAt) || row2.Tenant != "t1" {
		t.Errorf("re-manage changed the row: %+v", row2)
	}
	n, err := inv.Unmanage(ctx, m.Identity, "0000")
	if err != nil || n != 1 {
		t.Fatalf("unmanage: %d %v", n, err)
	}
	if _, err := inv.Get(ctx, m.Identity); !errors.Is(err, scheduler.ErrNotManaged) {
		t.Errorf("after unmanage: %v", err)
	}
}

func TestImport(t *testing.T) {
	d, _ := freshDB(t)
	ctx := ctxT(t, 60*time.Second)
	inv := scheduler.NewInventory(d, nil)
	const n = 5000
	var b strings.Builder
	b.WriteString("# fleet\n\n")
	for i := range n {
		fmt.Fprintf(&b, "s%d.example.com, www.s%d.example.com\n", i, i)
	}
	b.WriteString("s0.example.com www.s0.example.com\n") // duplicate line
	start := time.Now()
	res, err := inv.Import(ctx, strings.NewReader(b.String()), scheduler.Spec{CA: testCA, Tenant: "bulk"})
	el := time.Since(start)
	if err != nil || res.Lines != n+1 || res.Added != n || res.Already != 1 {
		t.Fatalf("import: %+v %v", res, err)
	}
	t.Logf("imported %d SAN sets in %v (%.0f rows/s)", n, el, n/el.Seconds())
	// Again: nothing changes.
	res, err = inv.Import(ctx, strings.NewReader(b.String()), scheduler.Spec{CA: testCA, Tenant: "bulk"})
	if err != nil || res.Added != 0 || res.Already != n+1 {
		t.Fatalf("re-import: %+v %v", res, err)
	}
	// A bad line fails everything, naming the line.
	_, err = inv.Import(ctx, strings.NewReader("ok.example.com\nnot_ok.example.com\n"), scheduler.Spec{CA: testCA})
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("bad import: %v", err)
	}
	if c, _ := inv.Count(ctx); c != n {
		t.Errorf("count %d", c)
	}
}
