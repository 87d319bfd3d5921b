package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/certfleet/certfleet/forecast"
	"github.com/certfleet/certfleet/ratelimit"
)

const forecastAbout = `Prints how many renewals fall in each day (--hourly: hour) of the next --days
against each CA's fleet budget (its FleetOrdersPerSecond: --limits, the workers'
catalogue, for the CAs in --cas; Let's Encrypt's 10/s for the others), from the
managed inventory and the scheduler's renewal plans: the planned renewal of each
SAN set (an overdue one counts at the start), then one every two thirds of the
lifetime, spread over the scheduler's jitter (±1/30 of the lifetime). --lifetime
asks what certificates of that lifetime from now on would do (e.g. 45d). Buckets
above the budget are marked HERD, with how long each herd would have to be spread.
The database aggregates (one GROUP BY), so it answers in seconds on a million
certificates.`

// forecastCmd prints the renewal forecast.
func forecastCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a := newAdminFlags("forecast", "[--days N] [--hourly] [--lifetime D] [--json] [flags]", forecastAbout, stdout, stderr, true)
	days := a.fs.Int("days", 30, "how many days ahead")
	hourly := a.fs.Bool("hourly", false, "one bucket per hour instead of per day")
	lifetimeText := a.fs.String("lifetime", "", "lifetime of the certificates issued from now on, e.g. 45d (default: each certificate's own; 90d before the first)")
	width := a.fs.Int("width", 50, "width of the chart's bars")
	limitsFile := a.fs.String("limits", os.Getenv("CERTFLEET_LIMITS_FILE"), "the workers' rate-limit catalogue (their -limits; env CERTFLEET_LIMITS_FILE); empty: Let's Encrypt's limits")
	cf := addCAFlags(a.fs)
	*a.timeout = time.Minute
	if _, err := a.parse(args, 0, 0, "no arguments"); err != nil {
		return err
	}
	if *days < 1 || *days > 366 {
		return fmt.Errorf("%w: forecast: --days %d: want 1 to 366", errUsage, *days)
	}
	var lifetime time.Duration
	if *lifetimeText != "" {
		var err error
		if lifetime, err = parseDuration(*lifetimeText); err != nil || lifetime < time.Hour {
			return fmt.Errorf("%w: forecast: --lifetime %q: want a duration of an hour or more, such as 45d", errUsage, *lifetimeText)
		}
	}
	cat, dirs, err := cf.limits("forecast", *limitsFile)
	if err != nil {
		return err
	}
	budget := func(name string) (ratelimit.Limit, bool) {
		dir, ok := dirs[name]
		if !ok && strings.HasPrefix(name, "https://") {
			dir = name
		}
		if l, ok := cat.Default(dir, ratelimit.FleetOrdersPerSecond); ok {
			return l, true
		}
		return ratelimit.LetsEncryptLimits()[ratelimit.FleetOrdersPerSecond].Limit, true
	}
	d, ctx, done, err := a.open(ctx)
	if err != nil {
		return err
	}
	defer done()
	now := time.Now().UTC().Truncate(time.Hour)
	opt := forecast.Options{Start: now, Hours: *days * 24, Lifetime: lifetime, Budget: budget}
	if *hourly {
		opt.Bucket = time.Hour
	}
	groups, err := forecast.Groups(ctx, d, now, now.Add(time.Duration(opt.Hours)*time.Hour))
	if err != nil {
		return fmt.Errorf("forecast: %w", err)
	}
	f := forecast.Expand(groups, opt)
	if *a.json {
		return writeJSON(stdout, f.JSON())
	}
	return f.Chart(stdout, *width)
}
