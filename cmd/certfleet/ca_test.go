package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/cahealth"
	"github.com/certfleet/certfleet/db"
)

// certfleet ca status shows each CA's breaker as the workers share it (the
// CAs of --ca without a row as closed), ca reset closes one.
func TestCAStatusAndReset(t *testing.T) {
	a := newAdmin(t)
	ctx := context.Background()
	d, err := db.Open(ctx, db.Config{URL: a.url})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	b, err := cahealth.New(cahealth.Config{DB: d, Threshold: 2, Cooldown: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if out := a.ok("ca", "status"); !strings.Contains(out, "no CA has failed") {
		t.Fatalf("status of a fleet without failures:\n%s", out)
	}
	for range 2 {
		if _, err := b.Failure(ctx, "le", "Post https://le.test/new-order: dial tcp: connect: connection refused"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Failure(ctx, "zs", "HTTP 503"); err != nil {
		t.Fatal(err)
	}
	out := a.ok("ca", "status", "--ca", "le=https://le.test/dir,zs=https://zs.test/dir,gts=https://gts.test/dir")
	for _, want := range []string{"le ", "open (1h left)", "connection refused", "zs ", "gts ", "closed"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	var rows []caStatusJSON
	a.json(&rows, "ca", "status", "--ca", "le=https://le.test/dir,gts=https://gts.test/dir")
	states := map[string]string{}
	for _, r := range rows {
		states[r.CA] = r.State
	}
	if states["le"] != "open" || states["zs"] != "closed" || states["gts"] != "closed" || len(rows) != 3 {
		t.Fatalf("status --json: %+v", rows)
	}
	if out := a.ok("ca", "reset", "le"); !strings.Contains(out, "closed the breaker of le") {
		t.Fatalf("reset: %s", out)
	}
	if out := a.ok("ca", "reset", "le"); !strings.Contains(out, "closed already") {
		t.Fatalf("second reset: %s", out)
	}
	a.json(&rows, "ca", "status")
	for _, r := range rows {
		if r.CA == "le" && (r.State != "closed" || r.Failures != 0 || r.ClosedAt == nil) {
			t.Fatalf("after reset: %+v", r)
		}
	}
	if code, _, errs := a.run("ca", "reset"); code != exitUsage || !strings.Contains(errs, "one CA name") {
		t.Fatalf("reset without a name: %d %s", code, errs)
	}
}
