package ratelimit

import (
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

func TestSpend(t *testing.T) {
	// 10 per second, burst 10: interval 100 ms, burst offset 1 s.
	tenPerSec := Limit{Count: 10, Period: time.Second, Burst: 10}
	// 5 per 7 days with burst 5: interval 33h36m.
	fqdnSet := Limit{Count: 5, Period: 7 * 24 * time.Hour, Burst: 5}
	tests := []struct {
		name      string
		limit     Limit
		tat       time.Time
		now       time.Time
		cost      int64
		want      Decision
		wantNewTA time.Time
	}{
		{"fresh bucket", tenPerSec, time.Time{}, at(0), 1,
			Decision{Allowed: true, Remaining: 9, ResetIn: 100 * time.Millisecond}, at(100 * time.Millisecond)},
		{"stale TAT counts as now", tenPerSec, at(-time.Hour), at(0), 1,
			Decision{Allowed: true, Remaining: 9, ResetIn: 100 * time.Millisecond}, at(100 * time.Millisecond)},
		{"whole burst at once", tenPerSec, time.Time{}, at(0), 10,
			Decision{Allowed: true, Remaining: 0, ResetIn: time.Second}, at(time.Second)},
		{"empty bucket denies", tenPerSec, at(time.Second), at(0), 1,
			Decision{Allowed: false, Remaining: 0, RetryIn: 100 * time.Millisecond, ResetIn: time.Second}, at(time.Second)},
		{"partly refilled", tenPerSec, at(time.Second), at(300 * time.Millisecond), 3,
			Decision{Allowed: true, Remaining: 0, ResetIn: time.Second}, at(1300 * time.Millisecond)},
		{"cost larger than what is left", tenPerSec, at(time.Second), at(300 * time.Millisecond), 4,
			Decision{Allowed: false, Remaining: 3, RetryIn: 100 * time.Millisecond, ResetIn: 700 * time.Millisecond}, at(time.Second)},
		{"zero cost on empty bucket is allowed", tenPerSec, at(time.Second), at(0), 0,
			Decision{Allowed: true, Remaining: 0, ResetIn: time.Second}, at(time.Second)},
		{"weekly limit sixth in a row denied", fqdnSet, at(7 * 24 * time.Hour), at(0), 1,
			Decision{Allowed: false, Remaining: 0, RetryIn: 7 * 24 * time.Hour / 5, ResetIn: 7 * 24 * time.Hour}, at(7 * 24 * time.Hour)},
		{"weekly limit after one interval", fqdnSet, at(7 * 24 * time.Hour), at(7 * 24 * time.Hour / 5), 1,
			Decision{Allowed: true, Remaining: 0, ResetIn: 7 * 24 * time.Hour}, at(7*24*time.Hour + 7*24*time.Hour/5)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Spend(tt.limit, tt.tat, tt.now, tt.cost)
			if !got.NewTAT().Equal(tt.wantNewTA) {
				t.Errorf("NewTAT = %v, want %v", got.NewTAT().UTC(), tt.wantNewTA)
			}
			got.newTAT = 0
			if got != tt.want {
				t.Errorf("Spend = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestCheckNeverMovesTAT(t *testing.T) {
	l := Limit{Count: 10, Period: time.Second, Burst: 10}
	tests := []struct {
		name string
		tat  time.Time
		cost int64
		want Decision
	}{
		{"fits", at(500 * time.Millisecond), 5, Decision{Allowed: true, Remaining: 5, ResetIn: 500 * time.Millisecond}},
		{"does not fit", at(500 * time.Millisecond), 6, Decision{Allowed: false, Remaining: 5, RetryIn: 100 * time.Millisecond, ResetIn: 500 * time.Millisecond}},
		{"fresh", time.Time{}, 10, Decision{Allowed: true, Remaining: 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Check(l, tt.tat, at(0), tt.cost)
			want := tt.tat
			if want.Before(at(0)) {
				want = at(0)
			}
			if !got.NewTAT().Equal(want) {
				t.Errorf("NewTAT = %v, want %v", got.NewTAT(), want)
			}
			got.newTAT = 0
			if got != tt.want {
				t.Errorf("Check = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestSpendNoCheckGoesIntoDebt(t *testing.T) {
	l := Limit{Count: 50, Period: 7 * 24 * time.Hour, Burst: 50}
	full := at(7 * 24 * time.Hour) // bucket empty
	d := SpendNoCheck(l, full, at(0), 1)
	if !d.Allowed || d.Remaining != 0 {
		t.Fatalf("SpendNoCheck = %+v, want allowed with nothing remaining", d)
	}
	if got, want := d.NewTAT(), full.Add(time.Duration(l.Interval())); !got.Equal(want) {
		t.Fatalf("NewTAT = %v, want %v", got, want)
	}
	// A checked spend now has to wait two intervals: the debt plus its own.
	c := Spend(l, d.NewTAT(), at(0), 1)
	if c.Allowed || c.RetryIn != 2*time.Duration(l.Interval()) {
		t.Fatalf("Spend after debt = %+v, want denied for two intervals", c)
	}
}

func TestRefund(t *testing.T) {
	l := Limit{Count: 10, Period: time.Second, Burst: 10}
	tests := []struct {
		name string
		tat  time.Time
		cost int64
		want time.Time
	}{
		{"gives back", at(time.Second), 3, at(700 * time.Millisecond)},
		{"never fuller than full", at(200 * time.Millisecond), 5, at(0)},
		{"stale TAT", at(-time.Second), 1, at(0)},
		{"zero cost", at(time.Second), 0, at(time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Refund(l, tt.tat, at(0), tt.cost); !got.Equal(tt.want) {
				t.Errorf("Refund = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSpendThenRefundRestores(t *testing.T) {
	l := Limit{Count: 300, Period: 3 * time.Hour, Burst: 300}
	tat := at(time.Hour)
	d := Spend(l, tat, at(0), 7)
	if !d.Allowed {
		t.Fatalf("Spend = %+v", d)
	}
	if got := Refund(l, d.NewTAT(), at(0), 7); !got.Equal(tat) {
		t.Fatalf("Refund after Spend = %v, want %v", got, tat)
	}
}

func TestWithPenalty(t *testing.T) {
	l := Limit{Count: 10, Period: time.Second, Burst: 10}
	now := nanos(at(0))
	until := nanos(at(5 * time.Second))
	allowed := decide(l, 0, now, 1, 0, true)
	got := withPenalty(allowed, 0, now, until)
	if got.Allowed || got.RetryIn != 5*time.Second || got.NewTAT().UnixNano() != now {
		t.Fatalf("penalised = %+v, want denied for 5s and nothing spent", got)
	}
	if got := withPenalty(allowed, 0, now, now); got != allowed {
		t.Fatalf("expired penalty changed decision: %+v", got)
	}
	denied := decide(l, nanos(at(time.Second)), now, 1, 0, true)
	if got := withPenalty(denied, nanos(at(time.Second)), now, until); got.RetryIn != 5*time.Second {
		t.Fatalf("penalty on denied = %+v, want RetryIn 5s", got)
	}
}

func TestLimitValidate(t *testing.T) {
	tests := []struct {
		name string
		l    Limit
		ok   bool
	}{
		{"lets encrypt orders", Limit{300, 3 * time.Hour, 300}, true},
		{"zero count", Limit{0, time.Hour, 1}, false},
		{"negative period", Limit{1, -time.Hour, 1}, false},
		{"zero burst", Limit{1, time.Hour, 0}, false},
		{"interval rounds to zero", Limit{1000, time.Microsecond / 2, 1}, false},
		{"burst offset overflows", Limit{1, 200 * 365 * 24 * time.Hour, 1}, false},
		{"huge burst", Limit{1, time.Hour, 1 << 50}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.l.Validate(); (err == nil) != tt.ok {
				t.Errorf("Validate(%v) = %v, want ok=%v", tt.l, err, tt.ok)
			}
		})
	}
}

func TestSpendAhead(t *testing.T) {
	tenPerSec := Limit{Count: 10, Period: time.Second, Burst: 10} // interval 100 ms
	const ms = time.Millisecond
	tests := []struct {
		name    string
		tat     time.Time
		cost    int64
		lead    time.Duration
		allowed bool
		newTAT  time.Time
	}{
		{"full bucket: recorded at now+lead", time.Time{}, 1, 300 * ms, true, at(400 * ms)},
		{"TAT within the lead: recorded at now+lead", at(200 * ms), 1, 300 * ms, true, at(400 * ms)},
		{"TAT beyond the lead: as without a lead", at(500 * ms), 1, 300 * ms, true, at(600 * ms)},
		{"zero lead is Spend", at(200 * ms), 2, 0, true, at(400 * ms)},
		{"checked at now, not at now+lead: denied", at(time.Second), 1, 300 * ms, false, at(time.Second)},
		{"a lead longer than the burst still allows the first", time.Time{}, 10, 5 * time.Second, true, at(6 * time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := SpendAhead(tenPerSec, tt.tat, at(0), tt.cost, tt.lead)
			if got.Allowed != tt.allowed || !got.NewTAT().Equal(tt.newTAT) {
				t.Fatalf("SpendAhead = %+v (TAT %v), want allowed %v, TAT %v", got, got.NewTAT(), tt.allowed, tt.newTAT)
			}
			if plain := Spend(tenPerSec, tt.tat, at(0), tt.cost); plain.Allowed != got.Allowed {
				t.Fatalf("a lead changed the decision: Spend %+v, SpendAhead %+v", plain, got)
			}
		})
	}
}

// TestSpendAheadNeverBehindCA: the worker spends with lead L and the CA
// counts the same certificates at issuance, L later; at equal limits the
// CA allows every certificate the worker allowed, and the worker's TAT is
// the CA's.
func TestSpendAheadNeverBehindCA(t *testing.T) {
	l := Limit{Count: 5, Period: time.Second, Burst: 3}
	const lead = 450 * time.Millisecond
	var worker, ca time.Time
	now := at(0)
	for i := range 200 {
		now = now.Add(time.Duration(i*37%190) * time.Millisecond)
		w := SpendAhead(l, worker, now, 1, lead)
		if !w.Allowed {
			continue
		}
		worker = w.NewTAT()
		c := Spend(l, ca, now.Add(lead), 1)
		if !c.Allowed {
			t.Fatalf("spend %d at %v: the worker allowed it, the CA counting at issuance refuses it", i, now)
		}
		ca = c.NewTAT()
		if !worker.Equal(ca) {
			t.Fatalf("spend %d: worker TAT %v, CA TAT %v", i, worker, ca)
		}
	}
}

func TestDecideBatchBooking(t *testing.T) {
	l := Limit{Count: 10, Period: time.Second, Burst: 10} // interval 100 ms
	const ms = int64(time.Millisecond)
	now := nanos(at(0))
	full := bucketState{}
	empty := bucketState{tat: now + 1000*ms}         // next slot at now+100ms
	emptier := bucketState{tat: now + 1300*ms}       // next slot at now+400ms
	penalised := bucketState{penaltyUntil: now + ms} // full but blocked
	r := func(mode Mode, lead time.Duration) Request {
		return Request{Key: "k", Limit: l, Cost: 1, Mode: mode, Lead: lead}
	}
	tests := []struct {
		name    string
		reqs    []Request
		st      []bucketState
		book    bool
		latest  int64
		at      int64 // 0: nothing written
		newTATs []int64
	}{
		{"spend that fits", []Request{r(ModeSpend, 0)}, []bucketState{full}, false, 0, now, []int64{now + 100*ms}},
		{"spend denied: nothing", []Request{r(ModeSpend, 0)}, []bucketState{empty}, false, 0, 0, nil},
		{"book that fits is a spend", []Request{r(ModeSpend, 0)}, []bucketState{full}, true, 0, now, []int64{now + 100*ms}},
		{"book the next slot", []Request{r(ModeSpend, 0)}, []bucketState{empty}, true, 0, now + 100*ms, []int64{now + 1100*ms}},
		{"slot of the fullest bucket, all advanced as at that slot",
			[]Request{r(ModeSpend, 0), r(ModeSpend, 0), r(ModeSpendNoCheck, 0)}, []bucketState{full, emptier, full}, true, 0,
			now + 400*ms, []int64{now + 500*ms, now + 1400*ms, now + 500*ms}},
		{"a check bucket sets the slot and is not written", []Request{r(ModeSpend, 0), r(ModeCheck, 0)}, []bucketState{full, emptier}, true, 0,
			now + 400*ms, []int64{now + 500*ms, 0}},
		{"lead after the slot", []Request{r(ModeSpend, 250*time.Millisecond), r(ModeSpend, 0)}, []bucketState{full, empty}, true, 0,
			now + 100*ms, []int64{now + 450*ms, now + 1100*ms}},
		{"penalised bucket: no booking", []Request{r(ModeSpend, 0), r(ModeCheck, 0)}, []bucketState{empty, penalised}, true, 0, 0, nil},
		{"slot after latest: no booking", []Request{r(ModeSpend, 0)}, []bucketState{emptier}, true, now + 399*ms, 0, nil},
		{"slot at latest: booked", []Request{r(ModeSpend, 0)}, []bucketState{emptier}, true, now + 400*ms, now + 400*ms, []int64{now + 1400*ms}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds, at, write := decideBatch(tt.reqs, tt.st, now, tt.book, tt.latest)
			if at != tt.at || write != (tt.at != 0) {
				t.Fatalf("at %d write %v, want at %d", at-now, write, tt.at-now)
			}
			for i, want := range tt.newTATs {
				if tt.reqs[i].Mode != ModeCheck && ds[i].newTAT != want {
					t.Errorf("request %d: TAT now+%s, want now+%s", i, time.Duration(ds[i].newTAT-now), time.Duration(want-now))
				}
			}
		})
	}
}
