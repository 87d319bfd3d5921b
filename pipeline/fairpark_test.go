package pipeline

import (
	"testing"
	"time"
)

var fh0 = time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)

func admitN(f *fairHold, lane Lane, tenant string, n int) (held int, dues []time.Time) {
	for range n {
		hold, due := f.admit(lane, tenant, fh0, false)
		if hold {
			held++
		} else {
			dues = append(dues, due)
		}
	}
	return held, dues
}

func TestFairHoldSharesTheCapacity(t *testing.T) {
	f := newFairHold(12, 2)
	// Alone, a group keeps half the capacity; the other half is left for
	// whoever comes behind it.
	if held, _ := admitN(f, LaneNew, "a", 20); held != 6 {
		t.Fatalf("a lone group held %d records, want 6 of capacity 12", held)
	}
	// The next group keeps 12/(1+2) = 4; the first keeps what it has.
	if held, _ := admitN(f, LaneNew, "b", 20); held != 4 {
		t.Errorf("a second tenant held %d, want 4", held)
	}
	// Lanes are groups of their own: a's emergencies are not parked behind
	// its new issuance: 12/(2+2) = 3.
	if held, _ := admitN(f, LaneEmergency, "a", 5); held != 3 {
		t.Errorf("a's emergencies held %d, want 3", held)
	}
	// Never fewer than minQuota.
	for i := range 10 {
		admitN(f, LaneRenewal, string(rune('c'+i)), 1)
	}
	if held, _ := admitN(f, LaneRenewal, "z", 5); held != 2 {
		t.Errorf("with many groups a newcomer held %d, want minQuota 2", held)
	}
	// A released hold goes to the group's next record.
	f.release(LaneRenewal, "z", fh0, true)
	if hold, _ := f.admit(LaneRenewal, "z", fh0, false); !hold {
		t.Error("a freed hold was not given to the group's next record")
	}
}

func TestFairHoldSpacesReturnsByTheGrantedRate(t *testing.T) {
	f := newFairHold(8, 1)
	f.quickWait = 0 // every record beyond the share is parked
	admitN(f, LaneRenewal, "a", 4)
	// 3 held records got slots at 10 per second, 1 stays held.
	for i := range 3 {
		f.release(LaneRenewal, "a", fh0.Add(-300*time.Millisecond+time.Duration(i)*100*time.Millisecond), true)
	}
	admitN(f, LaneRenewal, "a", 3) // holds back up to 4
	_, dues := admitN(f, LaneRenewal, "a", 5)
	if len(dues) != 5 {
		t.Fatalf("%d of 5 records beyond the quota parked", len(dues))
	}
	// The first parked record comes back after the 4 held ones (0.4 s at
	// about 10/s, raised to the 1 s minimum), each next one a slot later.
	if got := dues[0].Sub(fh0); got != time.Second {
		t.Errorf("first parked record due in %v, want the 1 s minimum", got)
	}
	for i := 1; i < len(dues); i++ {
		if gap := dues[i].Sub(dues[i-1]); gap < 90*time.Millisecond || gap > 160*time.Millisecond {
			t.Errorf("parked record %d due %v after the one before, want about 100-150 ms (the granted rate)", i, gap)
		}
	}
}

func TestFairHoldCapsTheWait(t *testing.T) {
	f := newFairHold(2, 1)
	_, dues := admitN(f, LaneNew, "a", 20001) // at the default 20/s, the last would be 16 min away
	if got := dues[len(dues)-1].Sub(fh0); got != f.maxWait {
		t.Errorf("last parked record due in %v, want the cap %v", got, f.maxWait)
	}
}

func TestFairHoldForgetsIdleGroups(t *testing.T) {
	f := newFairHold(4, 1)
	for i := range 100 {
		tenant := string(rune('a'+i%26)) + string(rune('a'+i/26))
		admitN(f, LaneNew, tenant, 1)
		f.release(LaneNew, tenant, fh0, true)
	}
	if n := len(f.groups); n != 0 || f.active != 0 {
		t.Errorf("after every record was released: %d groups kept, %d active; want none", n, f.active)
	}
}

func TestFairHoldHoldsAReturningRecord(t *testing.T) {
	f := newFairHold(4, 1)
	admitN(f, LaneNew, "a", 5)
	if hold, _ := f.admit(LaneNew, "a", fh0, false); hold {
		t.Fatal("a new record beyond the share was held")
	}
	if hold, _ := f.admit(LaneNew, "a", fh0, true); !hold {
		t.Error("a record back from its turn's parking was parked again")
	}
	// Up to 1.5 times the share (2 for a lone group of capacity 4), not more.
	if hold, _ := f.admit(LaneNew, "a", fh0, true); hold {
		t.Error("returning records were held beyond twice the group's share")
	}
}

// A group served fast enough is held beyond its share while the worker has
// room: its records' turns come within quickWait anyway.
func TestFairHoldHoldsAFastGroup(t *testing.T) {
	f := newFairHold(20, 1)
	admitN(f, LaneRenewal, "a", 1)
	for i := range 40 { // 40 slots a second
		f.release(LaneRenewal, "a", fh0.Add(-time.Second+time.Duration(i)*25*time.Millisecond), true)
		admitN(f, LaneRenewal, "a", 1)
	}
	// Share alone: 10 of 20. At 40/s, 20 held is half a second of work.
	if held, _ := admitN(f, LaneRenewal, "a", 30); held != 19 {
		t.Errorf("a group served at 40/s held %d more records, want 19 (up to the capacity of 20)", held)
	}
	f.quickWait = 100 * time.Millisecond // 4 records' worth at 40/s
	g := newFairHold(20, 1)
	g.quickWait = f.quickWait
	g.all = f.all
	if held, _ := admitN(g, LaneRenewal, "b", 30); held != 10 {
		t.Errorf("with a short quickWait a fast group held %d, want its share 10 (the quick rule only adds while a turn is near)", held)
	}
}
