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
	allowed := decide(l, 0, now, 1, true)
	got := withPenalty(allowed, 0, now, until)
	if got.Allowed || got.RetryIn != 5*time.Second || got.NewTAT().UnixNano() != now {
		t.Fatalf("penalised = %+v, want denied for 5s and nothing spent", got)
	}
	if got := withPenalty(allowed, 0, now, now); got != allowed {
		t.Fatalf("expired penalty changed decision: %+v", got)
	}
	denied := decide(l, nanos(at(time.Second)), now, 1, true)
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
