package incident

import (
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/ratelimit"
)

var t0 = time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)

var (
	perAccount = ratelimit.Limit{Count: 300, Period: 3 * time.Hour, Burst: 300}
	perDomain  = ratelimit.Limit{Count: 50, Period: 7 * 24 * time.Hour, Burst: 50}
	fleet      = ratelimit.Limit{Count: 10, Period: time.Second, Burst: 10}
)

// When the last order of a bucket can go: the burst at once, then one per
// emission interval, from the stored TAT, never before a penalty ends.
func TestLoadFinish(t *testing.T) {
	for _, tc := range []struct {
		name string
		load Load
		want time.Duration // after t0
	}{
		{"within the burst", Load{Limit: perAccount, Orders: 300}, 0},
		{"no orders", Load{Limit: perAccount}, 0},
		{"100 beyond the burst at 36 s each", Load{Limit: perAccount, Orders: 400}, time.Hour},
		{"half spent already", Load{Limit: perAccount, Orders: 400, TAT: t0.Add(90 * time.Minute)}, 150 * time.Minute},
		{"an old TAT is a full bucket", Load{Limit: perAccount, Orders: 400, TAT: t0.Add(-24 * time.Hour)}, time.Hour},
		{"the fleet budget: 2,000 at 10/s", Load{Limit: fleet, Orders: 2000}, 199 * time.Second},
		{"a penalty first", Load{Limit: perAccount, Orders: 10, PenaltyUntil: t0.Add(10 * time.Minute)}, 10 * time.Minute},
		{"a penalty then the rate", Load{Limit: perAccount, Orders: 400, PenaltyUntil: t0.Add(10 * time.Minute)}, 70 * time.Minute},
		{"a spent domain: a week of 50", Load{Limit: perDomain, Orders: 51, TAT: t0.Add(7 * 24 * time.Hour)}, 7*24*time.Hour + 7*24*time.Hour/50},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.load.Finish(t0).Sub(t0); got != tc.want {
				t.Errorf("finish after %v; want %v", got, tc.want)
			}
		})
	}
}

// The estimate is the latest bucket; every bucket that misses the deadline
// gets the smallest limit that meets it (checked by running Finish with
// it), accounts for a tenant's account limit, and advice naming the
// override or the catalogue.
func TestPlan(t *testing.T) {
	acct := Load{Key: "pebble:NewOrdersPerAccount:t1", Name: ratelimit.NewOrdersPerAccount, Value: "t1", CA: "pebble", Limit: perAccount, Orders: 1000}
	dom := Load{Key: "pebble:CertificatesPerDomain:a.example", Name: ratelimit.CertificatesPerDomain, Value: "a.example", CA: "pebble", Limit: perDomain, Orders: 60}
	flt := Load{Key: "pebble:FleetOrdersPerSecond:*", Name: ratelimit.FleetOrdersPerSecond, Value: "*", CA: "pebble", Limit: fleet, Orders: 1000}
	for _, tc := range []struct {
		name         string
		loads        []Load
		deadline     time.Duration // after t0; 0: none
		wantFinish   time.Duration
		wantMeets    bool
		wantChanges  []string // bucket keys, latest first
		wantAccounts int64
		wantAdvice   []string
	}{
		{name: "no deadline", loads: []Load{flt}, wantFinish: 99 * time.Second, wantMeets: true},
		{name: "the fleet budget alone meets a day", loads: []Load{flt}, deadline: 24 * time.Hour, wantFinish: 99 * time.Second, wantMeets: true},
		{name: "the account binds", loads: []Load{flt, acct}, deadline: time.Hour, wantFinish: 7 * time.Hour,
			wantChanges: []string{acct.Key}, wantAccounts: 3,
			wantAdvice: []string{"certfleet override set --limit NewOrdersPerAccount --key t1 --count 750 --period 3h", "spread the tenant over 3 accounts"}},
		{name: "the domain and the fleet miss a minute", loads: []Load{flt, dom}, deadline: time.Minute, wantFinish: 7 * 24 * time.Hour / 5,
			wantChanges: []string{dom.Key, flt.Key},
			wantAdvice:  []string{"--limit CertificatesPerDomain --key a.example --count 60 --period 7d", "raise FleetOrdersPerSecond of CA pebble to 17/1s"}},
		{name: "a penalty beyond the deadline", loads: []Load{{Key: "k", Name: ratelimit.CertificatesPerFQDNSet, Value: "h", Limit: perDomain, Orders: 1,
			PenaltyUntil: t0.Add(2 * time.Hour)}}, deadline: time.Hour, wantFinish: 2 * time.Hour, wantChanges: []string{"k"},
			wantAdvice: []string{"penalised by the CA until"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var deadline time.Time
			if tc.deadline > 0 {
				deadline = t0.Add(tc.deadline)
			}
			e := Plan(t0, 1000, tc.loads, deadline)
			if got := e.Duration(); got != tc.wantFinish {
				t.Errorf("finish after %v; want %v", got, tc.wantFinish)
			}
			if e.Meets != tc.wantMeets {
				t.Errorf("meets %v; want %v", e.Meets, tc.wantMeets)
			}
			if len(e.Binding) != len(tc.loads) || e.Binding[0].Finish != e.Finish {
				t.Errorf("binding %+v: want every bucket, latest first", e.Binding)
			}
			var keys []string
			for _, c := range e.Changes {
				keys = append(keys, c.Key)
				if c.Need.Count > 0 {
					fixed := c.Load
					fixed.Limit, fixed.TAT = c.Need, time.Time{}
					if f := fixed.Finish(t0); f.After(deadline) {
						t.Errorf("%s with the suggested %v finishes at %v, after the deadline %v", c.Key, c.Need, f, deadline)
					}
					smaller := fixed
					smaller.Limit = ratelimit.Limit{Count: c.Need.Count - 1, Period: c.Need.Period, Burst: c.Need.Count - 1}
					if smaller.Limit.Count > c.Limit.Count && !smaller.Finish(t0).After(deadline) {
						t.Errorf("%s: %v is not the smallest limit that meets the deadline", c.Key, c.Need)
					}
				}
				if c.Name == ratelimit.NewOrdersPerAccount && c.Accounts != tc.wantAccounts {
					t.Errorf("accounts %d; want %d", c.Accounts, tc.wantAccounts)
				}
			}
			if strings.Join(keys, ",") != strings.Join(tc.wantChanges, ",") {
				t.Errorf("changes %v; want %v", keys, tc.wantChanges)
			}
			var advice []string
			for _, c := range e.Changes {
				advice = append(advice, c.Advice())
			}
			all := strings.Join(advice, "\n")
			for _, want := range tc.wantAdvice {
				if !strings.Contains(all, want) {
					t.Errorf("advice lacks %q:\n%s", want, all)
				}
			}
		})
	}
}

func TestFormatPeriod(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Second: "1s", 90 * time.Second: "1m30s", 3 * time.Hour: "3h", 90 * time.Minute: "1h30m",
		7 * 24 * time.Hour: "7d", 36 * time.Hour: "36h", 10 * time.Second: "10s", 100 * time.Millisecond: "100ms",
	} {
		if got := FormatPeriod(d); got != want {
			t.Errorf("FormatPeriod(%v) = %q; want %q", d, got, want)
		}
	}
}

// Progress counts each request once, by its first end; a retryable failure
// is not an end; a deferral counts until the request ends; other requests'
// events change nothing; the ETA is the open requests at the rate so far.
func TestTracker(t *testing.T) {
	ev := func(p events.Payload) events.Event { return events.Event{Data: p} }
	tr := NewTracker([]string{"a", "b", "c", "d", "a"}, t0)
	steps := []struct {
		e       events.Event
		changed bool
	}{
		{ev(&events.IssuanceDeferred{RequestID: "b", RetryAt: t0.Add(time.Minute)}), true},
		{ev(&events.CertObtained{RequestID: "a"}), true},
		{ev(&events.CertObtained{RequestID: "a"}), false},
		{ev(&events.CertObtained{RequestID: "other"}), false},
		{ev(&events.CertFailed{RequestID: "c", Retryable: true}), false},
		{ev(&events.CertFailed{RequestID: "c"}), true},
	}
	for i, s := range steps {
		if got := tr.Observe(s.e, t0.Add(time.Duration(i)*time.Second)); got != s.changed {
			t.Errorf("step %d (%T): changed %v; want %v", i, s.e.Data, got, s.changed)
		}
	}
	snap := tr.Snapshot(t0.Add(10 * time.Second))
	want := Snapshot{Total: 4, Obtained: 1, Failed: 1, Deferred: 1, Elapsed: 10 * time.Second, Rate: 0.2, ETA: 10 * time.Second}
	if snap != want {
		t.Errorf("snapshot %+v; want %+v", snap, want)
	}
	if s := snap.String(); !strings.Contains(s, "1/4 obtained, 1 failed, 1 deferred") || !strings.Contains(s, "about 10s left") {
		t.Errorf("line %q", s)
	}
	tr.Observe(ev(&events.CertObtained{RequestID: "b"}), t0)
	tr.Observe(ev(&events.CertObtained{RequestID: "d"}), t0)
	if snap := tr.Snapshot(t0.Add(20 * time.Second)); !snap.Done || snap.Deferred != 0 || snap.ETA != 0 || !strings.HasSuffix(snap.String(), "done") {
		t.Errorf("after every end: %+v %q", snap, snap.String())
	}
}
