package forecast

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Chart writes a terminal bar chart of f: per CA, one line per bucket with
// its renewals as a bar scaled to the larger of the peak and the budget, the
// budget as a '|' on the bar's scale, "HERD" on buckets above it; then the
// herds and the spread each needs. width is the bar's width in characters.
func (f Forecast) Chart(w io.Writer, width int) error {
	if width < 10 {
		width = 10
	}
	const layout = "2006-01-02 15:04" // days start at the forecast's hour
	life := "each certificate's own lifetime"
	if f.Lifetime > 0 {
		life = "certificates of " + days(f.Lifetime) + " from now on"
	}
	fmt.Fprintf(w, "renewals per %s from %s to %s UTC (%s)\n", unit(f.Bucket), f.Start.UTC().Format(layout), f.End.UTC().Format(layout), life)
	if len(f.CAs) == 0 {
		_, err := fmt.Fprintln(w, "no managed certificate renews in this window")
		return err
	}
	for _, ca := range f.CAs {
		budget := "budget unknown (CA not in --cas)"
		if ca.Known {
			budget = fmt.Sprintf("fleet budget %.4g orders/s = %s per %s", float64(ca.Budget.Count)/ca.Budget.Period.Seconds(), thousands(int64(ca.PerBucket)), unit(f.Bucket))
		}
		fmt.Fprintf(w, "\nCA %s: %s renewals, %s overdue; %s\n", ca.Name, thousands(ca.Total), thousands(ca.Overdue), budget)
		scale := ca.PerBucket
		for _, b := range ca.Buckets {
			scale = max(scale, float64(b.Renewals))
		}
		if scale <= 0 {
			scale = 1
		}
		mark := -1
		if ca.Known {
			mark = min(int(ca.PerBucket/scale*float64(width)), width-1)
		}
		for _, b := range ca.Buckets {
			n := int(float64(b.Renewals) / scale * float64(width))
			if n == 0 && b.Renewals > 0 {
				n = 1
			}
			bar := []rune(strings.Repeat("#", n) + strings.Repeat(" ", width-n))
			if mark >= 0 && bar[mark] == ' ' {
				bar[mark] = '|'
			}
			flag := ""
			if b.Over {
				flag = "  HERD"
			}
			fmt.Fprintf(w, "%s %s %10s%s\n", b.Start.UTC().Format(layout), string(bar), thousands(b.Renewals), flag)
		}
		for _, h := range ca.Herds {
			fmt.Fprintf(w, "herd %s to %s: %s renewals (peak %s per %s) above the budget: spread them over at least %s (the scheduler's jitter at least ±%s around them)\n",
				h.Start.UTC().Format(layout), h.End.UTC().Format(layout), thousands(h.Renewals), thousands(h.Peak), unit(f.Bucket), days(h.Spread), days(h.Spread/2))
		}
	}
	return nil
}

func unit(bucket time.Duration) string {
	if bucket < 24*time.Hour {
		return "hour"
	}
	return "day"
}

// days prints a duration in days when it is at least two, else hours.
func days(d time.Duration) string {
	if d >= 48*time.Hour {
		return fmt.Sprintf("%.3gd", d.Hours()/24)
	}
	return fmt.Sprintf("%.3gh", d.Hours())
}

// thousands prints n with thousands separators: 1,234,567.
func thousands(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

// JSON is f as the forecast command's --json prints it.
func (f Forecast) JSON() any {
	type bucket struct {
		Start    time.Time `json:"start"`
		Renewals int64     `json:"renewals"`
		Over     bool      `json:"over_budget"`
	}
	type herd struct {
		Start         time.Time `json:"start"`
		End           time.Time `json:"end"`
		Renewals      int64     `json:"renewals"`
		Peak          int64     `json:"peak"`
		SpreadSeconds float64   `json:"spread_needed_seconds"`
	}
	type ca struct {
		Name      string   `json:"ca"`
		Budget    string   `json:"budget,omitempty"`
		PerBucket float64  `json:"budget_per_bucket,omitempty"`
		Total     int64    `json:"renewals"`
		Overdue   int64    `json:"overdue"`
		Buckets   []bucket `json:"buckets"`
		Herds     []herd   `json:"herds"`
	}
	out := struct {
		Start           time.Time `json:"start"`
		End             time.Time `json:"end"`
		Bucket          string    `json:"bucket"`
		LifetimeSeconds float64   `json:"lifetime_seconds,omitempty"`
		CAs             []ca      `json:"cas"`
	}{Start: f.Start.UTC(), End: f.End.UTC(), Bucket: unit(f.Bucket), LifetimeSeconds: f.Lifetime.Seconds(), CAs: []ca{}}
	for _, c := range f.CAs {
		j := ca{Name: c.Name, Total: c.Total, Overdue: c.Overdue, Buckets: []bucket{}, Herds: []herd{}}
		if c.Known {
			j.Budget, j.PerBucket = c.Budget.String(), c.PerBucket
		}
		for _, b := range c.Buckets {
			j.Buckets = append(j.Buckets, bucket{b.Start.UTC(), b.Renewals, b.Over})
		}
		for _, h := range c.Herds {
			j.Herds = append(j.Herds, herd{h.Start.UTC(), h.End.UTC(), h.Renewals, h.Peak, h.Spread.Seconds()})
		}
		out.CAs = append(out.CAs, j)
	}
	return out
}
