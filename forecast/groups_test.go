package forecast

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/internal/dbtest"
	"github.com/certfleet/certfleet/testenv"
)

func freshDB(t testing.TB) *db.DB {
	t.Helper()
	return dbtest.Migrated(t, 4)
}

// The database groups the plans by CA, hour after the start (overdue ones
// at 0, counted as overdue) and lifetime (0 without a certificate), and
// leaves out what is planned after the end.
func TestGroups(t *testing.T) {
	testenv.Require(t)
	d := freshDB(t)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Hour)
	type row struct {
		ca       string
		next     time.Duration
		lifetime time.Duration // 0: no certificate yet
	}
	for i, r := range []row{
		{"le", -2 * time.Hour, 90 * day}, {"le", -30 * time.Minute, 90 * day}, {"le", 90 * time.Minute, 90 * day},
		{"le", 90 * time.Minute, 6 * day}, {"zs", 25 * time.Hour, 0}, {"le", 31 * day, 90 * day},
	} {
		var nb, na *time.Time
		if r.lifetime > 0 {
			b, a := now.Add(-day), now.Add(-day+r.lifetime)
			nb, na = &b, &a
		}
		name := fmt.Sprintf("g%d.example.com", i)
		if _, err := d.Pool().Exec(ctx, `INSERT INTO managed_certificates (identity, sans, tenant, ca_directory, next_renewal_at, cert_not_before, cert_not_after)
			VALUES ($1, ARRAY[$2::TEXT], 't', $3, $4, $5, $6)`, name, name, r.ca, now.Add(r.next), nb, na); err != nil {
			t.Fatal(err)
		}
	}
	got, err := Groups(ctx, d, now, now.Add(30*day))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, g := range got {
		lines = append(lines, fmt.Sprintf("%s h%d %v n%d overdue%d", g.CA, g.Hour, g.Lifetime, g.Count, g.Overdue))
	}
	slices.Sort(lines)
	want := []string{"le h0 2160h0m0s n2 overdue2", "le h1 144h0m0s n1 overdue0", "le h1 2160h0m0s n1 overdue0", "zs h25 0s n1 overdue0"}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("groups:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}
