package scheduler

import (
	"math"
	"testing"
	"time"
)

var t0 = time.Date(2030, 6, 1, 0, 0, 0, 0, time.UTC)

func TestPlanRenewal(t *testing.T) {
	day := 24 * time.Hour
	c90 := &certLife{NotBefore: t0, NotAfter: t0.Add(90 * day)}
	c6 := &certLife{NotBefore: t0, NotAfter: t0.Add(6 * day)}
	win := &Window{Start: t0.Add(60 * day), End: t0.Add(62 * day)}
	for _, tc := range []struct {
		name  string
		now   time.Time
		cert  *certLife
		ari   *Window
		r     float64
		want  time.Time
		basis Basis
	}{
		{"new certificate is due at once", t0, nil, nil, 0.7, t0, BasisNew},
		{"two thirds, centre draw", t0, c90, nil, 0.5, t0.Add(60 * day), BasisLifetime},
		{"two thirds, earliest jitter", t0, c90, nil, 0, t0.Add(57 * day), BasisLifetime},
		{"two thirds, latest jitter", t0, c90, nil, math.Nextafter(1, 0), t0.Add(63 * day), BasisLifetime},
		{"short-lived two thirds", t0, c6, nil, 0.5, t0.Add(4 * day), BasisLifetime},
		{"ARI window start", t0, c90, win, 0, win.Start, BasisARI},
		{"ARI window middle", t0, c90, win, 0.5, t0.Add(61 * day), BasisARI},
		{"ARI window wins over lifetime", t0, c90, &Window{t0.Add(10 * day), t0.Add(10*day + 2*time.Hour)}, 0.5, t0.Add(10*day + time.Hour), BasisARI},
		{"ARI window started, point passed: now", t0.Add(61 * day), c90, win, 0.2, t0.Add(61 * day), BasisARI},
		{"ARI window in the past (incident): now", t0.Add(70 * day), c90, win, 0.5, t0.Add(70 * day), BasisIncident},
		{"ARI window ending now: incident", win.End, c90, win, 0.99, win.End, BasisIncident},
		{"ARI window moved before issuance: incident", t0.Add(time.Hour), c90, &Window{t0.Add(-2 * day), t0.Add(-day)}, 0.5, t0.Add(time.Hour), BasisIncident},
		{"incident wins over emergency", t0.Add(85 * day), c90, win, 0.5, t0.Add(85 * day), BasisIncident},
		{"incident on an expired certificate", t0.Add(100 * day), c90, win, 0.5, t0.Add(100 * day), BasisIncident},
		{"invalid ARI window falls back to lifetime", t0, c90, &Window{win.End, win.Start}, 0.5, t0.Add(60 * day), BasisLifetime},
		{"ARI window past expiry: emergency point", t0, c90, &Window{t0.Add(88 * day), t0.Add(95 * day)}, 0.5, t0.Add(81 * day), BasisEmergency},
		{"overdue lifetime plan: now", t0.Add(70 * day), c90, nil, 0.5, t0.Add(70 * day), BasisLifetime},
		{"near expiry: emergency now", t0.Add(85 * day), c90, nil, 0.5, t0.Add(85 * day), BasisEmergency},
		{"expired: emergency now", t0.Add(100 * day), c90, nil, 0.5, t0.Add(100 * day), BasisEmergency},
		{"zero lifetime counts as none", t0, &certLife{NotBefore: t0, NotAfter: t0}, nil, 0.5, t0, BasisNew},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := planRenewal(Policy{}, tc.now, tc.cert, tc.ari, tc.r)
			if !got.RenewAt.Equal(tc.want) || got.Basis != tc.basis {
				t.Errorf("got %v %s, want %v %s", got.RenewAt, got.Basis, tc.want, tc.basis)
			}
			if got.RenewAt.Before(tc.now) {
				t.Errorf("plan %v before now %v", got.RenewAt, tc.now)
			}
		})
	}
}

// A batch issued together must not renew together: with per-certificate
// draws, 1,000 certificates spread over the whole jitter range.
func TestPlanSpreadsABatch(t *testing.T) {
	c := &certLife{NotBefore: t0, NotAfter: t0.Add(90 * 24 * time.Hour)}
	buckets := make([]int, 10) // 10 slices of the ±3-day range
	for i := range 1000 {
		p := planRenewal(Policy{}, t0, c, nil, draw("identity", string(rune(i)), "serial"))
		off := p.RenewAt.Sub(t0.Add(57 * 24 * time.Hour))
		b := int(off * 10 / (6 * 24 * time.Hour))
		if b < 0 || b >= 10 {
			t.Fatalf("renewal %v outside the jitter range", p.RenewAt)
		}
		buckets[b]++
	}
	for i, n := range buckets {
		if n < 60 || n > 140 {
			t.Errorf("slice %d holds %d of 1000: not spread (%v)", i, n, buckets)
		}
	}
}

func TestKeepARIPoint(t *testing.T) {
	c := &certLife{NotBefore: t0, NotAfter: t0.Add(90 * 24 * time.Hour)}
	w := Window{t0.Add(60 * 24 * time.Hour), t0.Add(62 * 24 * time.Hour)}
	prev := w.Start.Add(time.Hour)
	if got := keepARIPoint(Policy{}, t0, c, w, prev, 0.9); !got.RenewAt.Equal(prev) || got.Basis != BasisARI {
		t.Errorf("point inside the unchanged window moved: %v", got)
	}
	// The CA moved the window to now (e.g. revocation ahead): a new point inside it.
	w2 := Window{t0, t0.Add(time.Hour)}
	if got := keepARIPoint(Policy{}, t0, c, w2, prev, 0.5); !got.RenewAt.Equal(t0.Add(30*time.Minute)) || got.Basis != BasisARI {
		t.Errorf("moved window: %v", got)
	}
}

func TestRetryAt(t *testing.T) {
	p := Policy{RetryBase: time.Minute, RetryMax: time.Hour}
	for _, tc := range []struct {
		name     string
		failures int
		ca       time.Time
		cert     *certLife
		r        float64
		want     time.Duration
	}{
		{"first failure, full draw", 1, time.Time{}, nil, math.Nextafter(1, 0), time.Minute},
		{"first failure, never below base", 1, time.Time{}, nil, 0, time.Minute},
		{"third failure doubles twice", 3, time.Time{}, nil, math.Nextafter(1, 0), 4 * time.Minute},
		{"third failure, half draw", 3, time.Time{}, nil, 0, 2 * time.Minute},
		{"capped", 30, time.Time{}, nil, math.Nextafter(1, 0), time.Hour},
		{"CA retry-after later wins", 1, t0.Add(3 * time.Hour), nil, 0.5, 3 * time.Hour},
		{"CA retry-after earlier ignored", 3, t0.Add(time.Second), nil, 0, 2 * time.Minute},
		{"close to expiry: shorter", 30, time.Time{}, &certLife{t0.Add(-time.Hour), t0.Add(20 * time.Minute)}, 0.99, 5 * time.Minute},
		{"expiry never pushes below base", 30, time.Time{}, &certLife{t0.Add(-time.Hour), t0.Add(time.Minute)}, 0.99, time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := nextRetryAt(p, t0, tc.failures, tc.ca, tc.cert, tc.r).Sub(t0)
			if got.Round(time.Second) != tc.want {
				t.Errorf("delay %v, want %v", got, tc.want)
			}
		})
	}
	// Escalates monotonically (same draw) until the cap.
	prev := time.Duration(0)
	for f := 1; f < 12; f++ {
		d := nextRetryAt(Policy{}, t0, f, time.Time{}, nil, 0.5).Sub(t0)
		if d < prev {
			t.Fatalf("failure %d waits %v, less than %v", f, d, prev)
		}
		prev = d
	}
}

func TestARIRecheckAt(t *testing.T) {
	for _, tc := range []struct{ in, want time.Duration }{
		{0, 6 * time.Hour}, {time.Second, time.Minute}, {2 * time.Hour, 2 * time.Hour}, {100 * time.Hour, 24 * time.Hour},
	} {
		if got := ariRecheckAt(Policy{}, t0, tc.in).Sub(t0); got != tc.want {
			t.Errorf("Retry-After %v: %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestPolicyValidate(t *testing.T) {
	if err := (Policy{}).Validate(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []Policy{{LifetimeFraction: 1.2}, {LifetimeFraction: 0.95}, {JitterFraction: 0.5}, {RetryBase: time.Hour, RetryMax: time.Minute}} {
		if err := p.Validate(); err == nil {
			t.Errorf("%+v accepted", p)
		}
	}
}

func TestDraw(t *testing.T) {
	a, b := draw("x", "1"), draw("x", "1")
	if a != b || a < 0 || a >= 1 || draw("x1") == a {
		t.Errorf("Draw: %v %v %v", a, b, draw("x1"))
	}
}
