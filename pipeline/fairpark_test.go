package pipeline

import (
	"testing"
	"time"
)

func TestFairHoldKeepsAQuotaPerLaneAndTenant(t *testing.T) {
	now := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	f := newFairHold(2)
	for i, want := range []bool{true, true, false, false} {
		if hold, _ := f.admit(LaneNew, "a", now); hold != want {
			t.Fatalf("record %d of tenant a: hold = %v, want %v", i, hold, want)
		}
	}
	// Other tenants and other lanes have quotas of their own.
	if hold, _ := f.admit(LaneNew, "b", now); !hold {
		t.Error("tenant b's first record was parked behind tenant a's backlog")
	}
	if hold, _ := f.admit(LaneEmergency, "a", now); !hold {
		t.Error("tenant a's first emergency was parked behind its own new-issuance backlog")
	}
	f.done(LaneNew, "a", now)
	if hold, _ := f.admit(LaneNew, "a", now); !hold {
		t.Error("a freed hold was not given to the next record")
	}
}

func TestFairHoldSpacesReturnsByTheServedRate(t *testing.T) {
	now := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	f := newFairHold(4)
	for range 4 {
		f.admit(LaneRenewal, "a", now)
	}
	// Held records got slots at 10 per second.
	for i := range 11 {
		f.granted(LaneRenewal, "a", now.Add(-time.Second+time.Duration(i)*100*time.Millisecond))
	}
	var dues []time.Time
	for range 5 {
		hold, due := f.admit(LaneRenewal, "a", now)
		if hold {
			t.Fatal("a record beyond the quota was held")
		}
		dues = append(dues, due)
	}
	// The first parked record comes back after the 4 held ones (0.4 s at
	// 10/s, raised to the 1 s minimum), each next one 0.1 s later.
	if got := dues[0].Sub(now); got < time.Second || got > 1100*time.Millisecond {
		t.Errorf("first parked record due in %v, want about 1 s", got)
	}
	for i := 1; i < len(dues); i++ {
		if gap := dues[i].Sub(dues[i-1]); gap < 90*time.Millisecond || gap > 120*time.Millisecond {
			t.Errorf("parked record %d due %v after the one before, want about 100 ms (the served rate)", i, gap)
		}
	}
}

func TestFairHoldCapsTheWait(t *testing.T) {
	now := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	f := newFairHold(1)
	f.admit(LaneNew, "a", now)
	var due time.Time
	for range 2000 { // at the default 1/s, the 2000th would be 33 min away
		_, due = f.admit(LaneNew, "a", now)
	}
	if due.Sub(now) != f.maxWait {
		t.Errorf("last parked record due in %v, want the cap %v", due.Sub(now), f.maxWait)
	}
}
