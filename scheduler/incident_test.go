package scheduler_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/scheduler"
	"github.com/certfleet/certfleet/testenv"
)

// toIncidentLane puts rows where an ARI re-check puts a certificate whose
// window moved into the past, with a current certificate each.
func (r *rig) toIncidentLane(ms []scheduler.Managed) {
	r.t.Helper()
	now := r.clk.Now()
	for i, m := range ms {
		ari := fmt.Sprintf("AAAA.%02X", i+1)
		insertIssued(r.t, r.d, m.Identity, ari, now.Add(-24*time.Hour), now.Add(60*24*time.Hour))
		if _, err := r.d.Pool().Exec(context.Background(), `UPDATE managed_certificates
			SET next_renewal_at = $2, planned_at = $3, renewal_basis = 'incident', cert_ari_id = $4 WHERE identity = $1`,
			m.Identity, scheduler.IncidentDue, now, ari); err != nil {
			r.t.Fatal(err)
		}
	}
}

// routine makes rows ordinary renewals due now.
func (r *rig) routine(ms []scheduler.Managed) {
	r.t.Helper()
	now := r.clk.Now()
	for _, m := range ms {
		insertIssued(r.t, r.d, m.Identity, "BBBB."+m.Identity[:4], now.Add(-60*24*time.Hour), now.Add(30*24*time.Hour))
		if _, err := r.d.Pool().Exec(context.Background(), `UPDATE managed_certificates
			SET next_renewal_at = $2, planned_at = $2, renewal_basis = 'lifetime' WHERE identity = $1`, m.Identity, now.Add(-time.Hour)); err != nil {
			r.t.Fatal(err)
		}
	}
}

// The incident lane goes first, whatever the tenants: within the fleet
// budget, every certificate whose CA asked for a replacement now is emitted
// before any routine renewal, as a reissue at the highest priority naming
// the certificate it replaces.
func TestTickIncidentLaneFirst(t *testing.T) {
	for _, tc := range []struct {
		budget                  int64
		wantIncident, wantOther int
		remaining               bool
	}{
		{budget: 2, wantIncident: 2, wantOther: 0, remaining: true},
		{budget: 4, wantIncident: 4, wantOther: 0, remaining: true},
		{budget: 7, wantIncident: 4, wantOther: 3, remaining: true},
		{budget: 100, wantIncident: 4, wantOther: 12, remaining: false},
	} {
		t.Run(fmt.Sprintf("budget %d", tc.budget), func(t *testing.T) {
			metrics := scheduler.NewMetrics(nil)
			r := newRig(t, func(c *scheduler.Config) {
				c.Budget = ratelimit.Limit{Count: tc.budget, Period: time.Hour, Burst: tc.budget}
				c.Metrics = metrics
			})
			// Routine renewals in two tenants, overdue for an hour; the
			// incident rows in a third tenant (and one in a routine tenant).
			r.routine(r.manage("a", 6))
			b := r.manage("b", 7)
			r.routine(b[1:])
			inc := append(r.manage("z", 3), b[0])
			r.toIncidentLane(inc)
			incident := map[string]bool{}
			for _, m := range inc {
				incident[events.Identity(m.SANs)] = true
			}

			res := r.tick()
			if res.Emitted != tc.wantIncident+tc.wantOther || res.Remaining != tc.remaining {
				t.Fatalf("tick %+v, want %d emitted, remaining %v", res, tc.wantIncident+tc.wantOther, tc.remaining)
			}
			// Measured before the tick emitted: the lane, and the routine
			// rows' hour overdue (the lane's placeholder time is not a due time).
			if got := value(metrics.IncidentBacklog); got != float64(len(inc)) {
				t.Errorf("incident backlog %v, want %d", got, len(inc))
			}
			if got := value(metrics.MostOverdue); got != 3600 {
				t.Errorf("most overdue %v s, want 3600", got)
			}
			gotIncident := 0
			for i, q := range r.w.requests(t) {
				isInc := incident[events.Identity(q.SANs)]
				switch {
				case isInc:
					gotIncident++
					if i >= tc.wantIncident {
						t.Errorf("incident job %d came after a routine one", i)
					}
					if q.Reason != events.ReasonReissue || q.Priority != events.MaxPriority || q.Replaces == "" {
						t.Errorf("incident job %+v: want reissue, priority %d, replaces", q, events.MaxPriority)
					}
				case q.Reason != events.ReasonRenewal || q.Priority >= events.MaxPriority:
					t.Errorf("routine job %+v", q)
				}
			}
			if gotIncident != tc.wantIncident {
				t.Errorf("%d incident jobs, want %d", gotIncident, tc.wantIncident)
			}
			// An emitted incident row leaves the lane: its job is in flight
			// under the watchdog, like any other.
			row, _ := r.inv.Get(context.Background(), inc[0].Identity)
			if gotIncident == len(inc) && (row.RequestID == "" || !row.NextRenewalAt.After(r.clk.Now())) {
				t.Errorf("emitted incident row %+v", row)
			}
		})
	}
}

// A fleet-wide shift, against Pebble's ARI: the CA moves every window into
// the past at once, while the fleet's re-checks are spread over the poll
// period (Pebble's Retry-After is 6 h). The first re-check that sees a past
// window brings forward the re-check of every certificate of that issuer,
// so the whole fleet is in the incident lane after the next pass, long
// before the others' own re-check times; it is metered and the next tick
// emits the reissues ahead of a routine renewal, within the budget.
func TestARIIncidentShiftFromPebble(t *testing.T) {
	s := testenv.Require(t)
	metrics := scheduler.NewMetrics(nil)
	r := newRig(t, func(c *scheduler.Config) {
		c.Metrics = metrics
		c.Budget = ratelimit.Limit{Count: 3, Period: time.Hour, Burst: 3}
	})
	ctx := ctxT(t, 120*time.Second)
	hc := pebbleHTTP(t, s)
	ari := &scheduler.ARIClient{HTTP: hc, Directories: map[string]string{"pebble": s.ACMEDirectory}}
	sched, err := scheduler.New(scheduler.Config{DB: r.d, Writer: r.w, Holder: r.holder, Logger: quiet, Clock: r.clk, ARI: ari,
		Metrics: metrics, Budget: ratelimit.Limit{Count: 3, Period: time.Hour, Burst: 3}})
	if err != nil {
		t.Fatal(err)
	}
	const fleet = 3
	type cert struct {
		m     scheduler.Managed
		chain string
	}
	var certs []cert
	for i := range fleet {
		name := fmt.Sprintf("shift-%d-%d.certfleet.test", i, time.Now().UnixNano())
		m, err := scheduler.Normalize(scheduler.Spec{SANs: []string{name}, Tenant: fmt.Sprintf("t%d", i), CA: s.ACMEDirectory})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.inv.Manage(ctx, m); err != nil {
			t.Fatal(err)
		}
		chain, leaf := obtainFromPebble(t, ctx, s, hc, name)
		req := fmt.Sprintf("shift-r%d", i)
		ariID := events.ARICertID(leaf)
		storeIssued(t, r.d, m.Identity, req, leaf.SerialNumber.Text(16), ariID, leaf.NotBefore, leaf.NotAfter)
		handle(t, sched, &events.CertObtained{RequestID: req, SANs: m.SANs, Tenant: m.Tenant, CA: s.ACMEDirectory,
			Serial: leaf.SerialNumber.Text(16), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, ChainPEM: chain,
			ARICertID: ariID, Issuer: leaf.Issuer.String(), Attempts: 1})
		certs = append(certs, cert{m, chain})
	}
	// The fleet's re-checks are spread: the first at Retry-After (6 h), the
	// others half a day later.
	if _, err := r.d.Pool().Exec(ctx, `UPDATE managed_certificates SET ari_retry_at = ari_retry_at + interval '12 hours'
		WHERE identity = ANY($1)`, []string{certs[1].m.Identity, certs[2].m.Identity}); err != nil {
		t.Fatal(err)
	}
	routine := r.manage("routine", 1)
	r.routine(routine)

	// The CA moves every window into the past.
	for _, c := range certs {
		if err := s.SetRenewalInfo(ctx, c.chain, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	r.clk.Advance(6*time.Hour + time.Second)
	if n, err := sched.RecheckARI(ctx, 100); err != nil || n != 1 {
		t.Fatalf("first re-check pass: %d %v (want the one certificate due)", n, err)
	}
	if got := value(metrics.ARIIncidents.WithLabelValues(s.ACMEDirectory)); got != 1 {
		t.Errorf("incident windows metered %v, want 1", got)
	}
	if got := value(metrics.ARIShift.WithLabelValues(s.ACMEDirectory)); got != 1 {
		t.Errorf("shift gauge %v, want 1", got)
	}
	// The next pass (the next tick's) reads the rest of the issuer's fleet,
	// though their own re-check times are 12 h away.
	if n, err := sched.RecheckARI(ctx, 100); err != nil || n != fleet-1 {
		t.Fatalf("second re-check pass: %d %v (want the %d brought forward)", n, err, fleet-1)
	}
	for _, c := range certs {
		row, _ := r.inv.Get(ctx, c.m.Identity)
		if row.Basis != scheduler.BasisIncident || !row.NextRenewalAt.Equal(scheduler.IncidentDue) {
			t.Fatalf("after the shift: %+v", row)
		}
	}
	if got := value(metrics.ARIIncidents.WithLabelValues(s.ACMEDirectory)); got != fleet {
		t.Errorf("incident windows metered %v, want %d", got, fleet)
	}
	res, err := sched.Tick(ctx, func() scheduler.LeaseState { return r.lease })
	if err != nil || res.Emitted != fleet || !res.Remaining {
		t.Fatalf("tick: %+v %v (want the %d reissues within a budget of 3, the routine renewal left)", res, err, fleet)
	}
	for _, q := range r.w.requests(t) {
		if q.Reason != events.ReasonReissue || q.Priority != events.MaxPriority || q.Replaces == "" || q.Tenant == "routine" {
			t.Errorf("job %+v: want only the reissues", q)
		}
	}
}
