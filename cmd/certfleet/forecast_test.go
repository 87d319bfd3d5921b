package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/db"
)

// certfleet forecast reads the plans and charts them per day against the
// fleet budget of the workers' catalogue (--limits, for the CA of --cas):
// 30 renewals tomorrow against 1 order an hour (24 a day) is a herd, with
// the spread it needs; the JSON carries the same; --lifetime and --hourly
// change the buckets; bad flags are usage errors.
func TestForecastCommand(t *testing.T) {
	url := migratedDatabase(t)
	ctx := context.Background()
	d, err := db.Open(ctx, db.Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	now := time.Now().UTC().Truncate(time.Hour)
	tomorrow := now.Add(24*time.Hour + 2*time.Hour)
	for i := range 33 {
		next := tomorrow
		if i >= 30 {
			next = now.Add(-time.Hour) // overdue
		}
		name := fmt.Sprintf("fc%d.example.com", i)
		if _, err := d.Pool().Exec(ctx, `INSERT INTO managed_certificates (identity, sans, tenant, ca_directory, next_renewal_at, cert_not_before, cert_not_after)
			VALUES ($1, ARRAY[$1::TEXT], 't', 'pebble', $2, $3::TIMESTAMPTZ, $3::TIMESTAMPTZ + INTERVAL '90 days')`, name, next, now.Add(-30*24*time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	limits := filepath.Join(t.TempDir(), "limits.json")
	if err := os.WriteFile(limits, []byte(`{"cas":[{"id":"pebble","directory":"https://pebble.test/dir","limits":{"FleetOrdersPerSecond":{"count":1,"period":"1h"}}}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"forecast", "--database-url", url, "--cas", "pebble=https://pebble.test/dir", "--limits", limits, "--days", "3"}
	code, out, errOut := cli(ctx, base...)
	if code != exitOK {
		t.Fatalf("forecast: %d %s%s", code, out, errOut)
	}
	t.Logf("certfleet forecast:\n%s", out)
	lines := strings.Split(out, "\n")
	want := []string{"renewals per day", "CA pebble: 33 renewals, 3 overdue; fleet budget 0.0002778 orders/s = 24 per day",
		"herd " + now.Add(24*time.Hour).Format("2006-01-02 15:04") + " to " + now.Add(48*time.Hour).Format("2006-01-02 15:04") + ": 30 renewals",
		"spread them over at least 2d"}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q", w)
		}
	}
	herdLines := 0
	for _, l := range lines {
		if strings.HasSuffix(l, "HERD") {
			herdLines++
			if !strings.Contains(l, " 30  HERD") {
				t.Errorf("herd line %q; want 30 renewals", l)
			}
		}
	}
	if herdLines != 1 {
		t.Errorf("%d HERD lines; want 1", herdLines)
	}

	code, out, errOut = cli(ctx, append(base, "--json", "--hourly", "--lifetime", "45d")...)
	if code != exitOK {
		t.Fatalf("forecast --json: %d %s%s", code, out, errOut)
	}
	var j struct {
		Bucket   string  `json:"bucket"`
		Lifetime float64 `json:"lifetime_seconds"`
		CAs      []struct {
			CA      string                     `json:"ca"`
			Total   int64                      `json:"renewals"`
			Overdue int64                      `json:"overdue"`
			PerB    float64                    `json:"budget_per_bucket"`
			Buckets []struct{ Renewals int64 } `json:"buckets"`
			Herds   []struct{ Renewals int64 } `json:"herds"`
		} `json:"cas"`
	}
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if j.Bucket != "hour" || j.Lifetime != 45*24*3600 || len(j.CAs) != 1 || j.CAs[0].Total != 33 || j.CAs[0].Overdue != 3 ||
		j.CAs[0].PerB != 1 || len(j.CAs[0].Buckets) != 72 || j.CAs[0].Buckets[26].Renewals != 30 || len(j.CAs[0].Herds) != 2 {
		t.Errorf("--json --hourly: %+v", j)
	}

	for _, bad := range [][]string{{"--days", "0"}, {"--lifetime", "soon"}, {"--cas", "pebble"}} {
		if code, _, _ := cli(ctx, append(base, bad...)...); code != exitUsage {
			t.Errorf("forecast %v: exit %d; want %d", bad, code, exitUsage)
		}
	}
}
