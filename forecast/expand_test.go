package forecast

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/ratelimit"
)

var start = time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)

const day = 24 * time.Hour

func perDay(n int64) func(string) (ratelimit.Limit, bool) {
	return func(ca string) (ratelimit.Limit, bool) {
		return ratelimit.Limit{Count: n, Period: day, Burst: n}, ca != "unknown"
	}
}

// Renewals per bucket: the planned one in its hour, the next ones every two
// thirds of the lifetime (the certificate's or --lifetime's) spread over the
// scheduler's jitter, none beyond the window; herds are the buckets above
// the budget, and the spread each needs is its renewals at the budget.
func TestExpand(t *testing.T) {
	for _, tc := range []struct {
		name       string
		groups     []Group
		opt        Options
		wantTotal  int64
		wantDays   map[int]int64 // bucket index -> renewals (only those listed)
		wantHerds  []Herd
		wantOver   int64
		wantBudget bool
	}{
		{name: "90-day certificates in a 30-day window renew once",
			groups:    []Group{{CA: "le", Hour: 5, Lifetime: 90 * day, Count: 10}, {CA: "le", Hour: 49, Lifetime: 90 * day, Count: 7}},
			opt:       Options{Hours: 30 * 24, Budget: perDay(1000)},
			wantTotal: 17, wantDays: map[int]int64{0: 10, 1: 0, 2: 7}, wantBudget: true},
		{name: "overdue renewals count at the start",
			groups:    []Group{{CA: "le", Hour: 0, Lifetime: 90 * day, Count: 4, Overdue: 3}},
			opt:       Options{Hours: 48, Budget: perDay(1000)},
			wantTotal: 4, wantDays: map[int]int64{0: 4}, wantOver: 3, wantBudget: true},
		{name: "a planned renewal after the window is not counted",
			groups: []Group{{CA: "le", Hour: 24 * 31, Lifetime: 90 * day, Count: 4}},
			opt:    Options{Hours: 30 * 24, Budget: perDay(1000)}, wantTotal: 0, wantBudget: true},
		{name: "6-day certificates renew every 4 days, jittered over ±4.8 hours",
			groups:    []Group{{CA: "le", Hour: 12, Lifetime: 6 * day, Count: 240}},
			opt:       Options{Hours: 12 * 24, Budget: perDay(1000)},
			wantTotal: 720, wantDays: map[int]int64{0: 240, 1: 0, 3: 0, 4: 240, 8: 240, 11: 0}, wantBudget: true},
		{name: "--lifetime 45d: 90-day certificates renewed at 30 and 60 days (80-day window)",
			groups:    []Group{{CA: "le", Hour: 0, Lifetime: 90 * day, Count: 300}},
			opt:       Options{Hours: 80 * 24, Lifetime: 45 * day, Budget: perDay(1000)},
			wantTotal: 900, wantBudget: true},
		{name: "the same without --lifetime: once more at 60 days",
			groups:    []Group{{CA: "le", Hour: 0, Lifetime: 90 * day, Count: 300}},
			opt:       Options{Hours: 80 * 24, Budget: perDay(1000)},
			wantTotal: 600, wantBudget: true},
		{name: "a herd above 100 a day needs 5 days",
			groups:    []Group{{CA: "le", Hour: 30, Lifetime: 90 * day, Count: 500}, {CA: "le", Hour: 60, Lifetime: 90 * day, Count: 50}},
			opt:       Options{Hours: 10 * 24, Budget: perDay(100)},
			wantTotal: 550, wantDays: map[int]int64{1: 500, 2: 50},
			wantHerds: []Herd{{Start: start.Add(day), End: start.Add(2 * day), Renewals: 500, Peak: 500, Spread: 5 * day}}, wantBudget: true},
		{name: "an hourly chart: 100 a day is 4.17 an hour",
			groups:    []Group{{CA: "le", Hour: 3, Lifetime: 90 * day, Count: 5}, {CA: "le", Hour: 4, Lifetime: 90 * day, Count: 4}},
			opt:       Options{Hours: 24, Bucket: time.Hour, Budget: perDay(100)},
			wantTotal: 9, wantDays: map[int]int64{3: 5, 4: 4},
			wantHerds: []Herd{{Start: start.Add(3 * time.Hour), End: start.Add(4 * time.Hour), Renewals: 5, Peak: 5, Spread: 2 * time.Hour}}, wantBudget: true},
		{name: "an unknown budget marks no herd",
			groups:    []Group{{CA: "unknown", Hour: 1, Lifetime: 90 * day, Count: 500}},
			opt:       Options{Hours: 48, Budget: perDay(1)},
			wantTotal: 500},
		{name: "a SAN set without a certificate renews at the default lifetime: now, then every 20 days",
			groups:    []Group{{CA: "le", Hour: 0, Count: 10}},
			opt:       Options{Hours: 90 * 24, DefaultLifetime: 30 * day, Budget: perDay(1000)},
			wantTotal: 50, wantBudget: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opt.Start = start
			f := Expand(tc.groups, tc.opt)
			if len(f.CAs) != 1 {
				t.Fatalf("%d CAs; want 1", len(f.CAs))
			}
			ca := f.CAs[0]
			if ca.Total != tc.wantTotal || ca.Overdue != tc.wantOver || ca.Known != tc.wantBudget {
				t.Errorf("total %d overdue %d known %v; want %d, %d, %v", ca.Total, ca.Overdue, ca.Known, tc.wantTotal, tc.wantOver, tc.wantBudget)
			}
			var sum int64
			for _, b := range ca.Buckets {
				sum += b.Renewals
			}
			if sum != ca.Total {
				t.Errorf("buckets sum to %d, total says %d", sum, ca.Total)
			}
			for i, want := range tc.wantDays {
				if got := ca.Buckets[i].Renewals; got != want {
					t.Errorf("bucket %d (%s): %d renewals; want %d", i, ca.Buckets[i].Start.Format(time.RFC3339), got, want)
				}
			}
			if len(ca.Herds) != len(tc.wantHerds) {
				t.Fatalf("herds %+v; want %+v", ca.Herds, tc.wantHerds)
			}
			for i := range ca.Herds {
				if ca.Herds[i] != tc.wantHerds[i] {
					t.Errorf("herd %+v; want %+v", ca.Herds[i], tc.wantHerds[i])
				}
			}
		})
	}
}

// The chart shows every bucket, the budget's mark, HERD on the buckets
// above it and what each herd needs; the JSON carries the same numbers.
func TestChart(t *testing.T) {
	f := Expand([]Group{{CA: "le", Hour: 30, Lifetime: 90 * day, Count: 500}, {CA: "le", Hour: 60, Lifetime: 90 * day, Count: 50}},
		Options{Start: start, Hours: 4 * 24, Budget: perDay(100)})
	var buf bytes.Buffer
	if err := f.Chart(&buf, 50); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	lines := strings.Split(out, "\n")
	for _, want := range []string{"renewals per day from 2026-12-02 00:00 to 2026-12-06 00:00 UTC", "CA le: 550 renewals, 0 overdue; fleet budget 0.001157 orders/s = 100 per day",
		"2026-12-03 00:00 " + strings.Repeat("#", 50) + "        500  HERD", "2026-12-04 00:00 #####     |", "spread them over at least 5d"} {
		if !strings.Contains(out, want) {
			t.Errorf("chart lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "HERD"); n != 1 {
		t.Errorf("%d HERD marks; want 1:\n%s", n, out)
	}
	if len(lines) < 7 {
		t.Errorf("chart too short:\n%s", out)
	}
	j := f.JSON()
	var jb bytes.Buffer
	if err := writeJSONTo(&jb, j); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"bucket":"day"`, `"renewals":500,"over_budget":true`, `"spread_needed_seconds":432000`, `"budget_per_bucket":100`} {
		if !strings.Contains(jb.String(), want) {
			t.Errorf("JSON lacks %s: %s", want, jb.String())
		}
	}
}

func TestThousands(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -12345: "-12,345"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q; want %q", n, got, want)
		}
	}
}

func writeJSONTo(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }
