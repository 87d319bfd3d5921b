package forecast

import (
	"context"
	"testing"
	"time"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/testenv"
)

// seed fills managed_certificates server-side with n rows over 100 tenants
// and two CAs: 90-day certificates whose renewals are spread over the next
// 60 days, but a tenth of them issued together (a herd renewing on one
// day), and one in a hundred without a certificate yet (due now).
func seed(b *testing.B, d *db.DB, n int) {
	b.Helper()
	ctx := context.Background()
	t0 := time.Now()
	_, err := d.Pool().Exec(ctx, `
INSERT INTO managed_certificates (identity, sans, tenant, ca_directory, next_renewal_at, planned_at, cert_not_before, cert_not_after)
SELECT encode(sha256(convert_to('f' || i || '.bench.example.com', 'UTF8')), 'hex'),
       ARRAY['f' || i || '.bench.example.com'], 't' || (i % 100), CASE WHEN i % 3 = 0 THEN 'zerossl' ELSE 'letsencrypt' END,
       due, due, nb, nb + INTERVAL '90 days'
FROM (SELECT i,
             CASE WHEN i % 100 = 0 THEN now() - INTERVAL '1 hour'
                  WHEN i % 10 = 0 THEN now() + INTERVAL '20 days'
                  ELSE now() + (i % 1440) * INTERVAL '1 hour' END AS due,
             CASE WHEN i % 100 = 0 THEN NULL ELSE now() - INTERVAL '30 days' END AS nb
      FROM generate_series(1, $1::INT) AS i) AS s`, n)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := d.Pool().Exec(ctx, `ANALYZE managed_certificates`); err != nil {
		b.Fatal(err)
	}
	b.Logf("seeded %d rows in %v", n, time.Since(t0).Round(time.Millisecond))
}

// BenchmarkForecast measures the target, a forecast of a
// 1,000,000-certificate inventory (under 10 s), daily over 30 days and
// hourly over 90 with a 45-day lifetime, against a full count of the same
// table in the same run (baseline_count: the scan any answer needs).
func BenchmarkForecast(b *testing.B) {
	testenv.Require(b)
	d := freshDB(b)
	seed(b, d, 1_000_000)
	ctx := context.Background()
	budget := func(string) (ratelimit.Limit, bool) {
		return ratelimit.Limit{Count: 10, Period: time.Second, Burst: 10}, true
	}
	b.Run("baseline_count", func(b *testing.B) {
		for b.Loop() {
			var n int64
			if err := d.Pool().QueryRow(ctx, `SELECT count(*) FROM managed_certificates WHERE next_renewal_at < $1`, time.Now().Add(90*day)).Scan(&n); err != nil || n != 1_000_000 {
				b.Fatalf("count %d %v", n, err)
			}
		}
	})
	for _, tc := range []struct {
		name string
		opt  Options
	}{
		{"daily_30d", Options{Hours: 30 * 24, Budget: budget}},
		{"hourly_90d_lifetime_45d", Options{Hours: 90 * 24, Bucket: time.Hour, Lifetime: 45 * day, Budget: budget}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				now := time.Now()
				tc.opt.Start = now
				groups, err := Groups(ctx, d, now, now.Add(time.Duration(tc.opt.Hours)*time.Hour))
				if err != nil {
					b.Fatal(err)
				}
				f := Expand(groups, tc.opt)
				var total int64
				for _, ca := range f.CAs {
					total += ca.Total
				}
				if len(f.CAs) != 2 || total < 1_000_000/2 {
					b.Fatalf("%d CAs, %d renewals", len(f.CAs), total)
				}
				b.ReportMetric(float64(len(groups)), "groups")
			}
		})
	}
}
