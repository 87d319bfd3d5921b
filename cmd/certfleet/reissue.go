package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/incident"
	"github.com/certfleet/certfleet/ratelimit"
)

const reissueAbout = `Replaces certificates of the inventory against a deadline: selects the current
certificate of each SAN set (--ca, --issued-before, --serials FILE, --tenant, ...),
prints up front when the replacements can all be ordered at the CA's allowed rate
(each bucket they spend: the fleet budget, the account per tenant, the registered
domain, the SAN set; the limits in force with overrides, the buckets as spent now)
and, when that misses --deadline, what would have to change (overrides to request,
more accounts, the fleet budget). Then it publishes one replacement request per
certificate (reason reissue, priority 9: the emergency lane) and follows the
events topic, printing progress and the time left, until every replacement has
ended or it is interrupted (the replacements go on; running it again publishes the
same request ids, which the workers order once). --dry-run stops after the estimate.
A reissue is a new order for the limits: every limit is checked.`

// reissue publishes replacements of the selected certificates and follows
// them. Exit status 1 when any replacement failed for good.
func reissue(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("reissue", "(--ca NAME | --issued-before T | --serials FILE | --tenant T ...) --deadline D [flags]", reissueAbout)
	sf := addSelectionFlags(fs, 10000)
	deadlineText := fs.String("deadline", "", "when every replacement must be issued: RFC 3339 or +DURATION (+24h, +5d)")
	dryRun := fs.Bool("dry-run", false, "print the selection's size and the estimate, publish nothing")
	noFollow := fs.Bool("no-follow", false, "publish and return without following the progress")
	interval := fs.Duration("progress-every", 5*time.Second, "print a progress line this often (and at the end)")
	limitsFile := fs.String("limits", os.Getenv("CERTFLEET_LIMITS_FILE"), "the workers' rate-limit catalogue (their -limits; env CERTFLEET_LIMITS_FILE); empty: Let's Encrypt's limits")
	cf := addCAFlags(fs)
	dbURL, dbInsecure := addDatabaseFlags(fs)
	kf := addKafkaFlags(fs)
	sel, now, err := parseIncident("reissue", fs, kf, sf, args, stdout, stderr)
	if err != nil {
		return err
	}
	sel.CurrentOnly = true
	var deadline time.Time
	if *deadlineText != "" {
		if deadline, err = parseTime(*deadlineText, now); err != nil || !deadline.After(now) {
			return fmt.Errorf("%w: reissue: --deadline %q: want a time after now (RFC 3339 or +24h)", errUsage, *deadlineText)
		}
	}
	if *dbURL == "" {
		return fmt.Errorf("%w: reissue: no database: set --database-url or CERTFLEET_DATABASE_URL (with testenv: set -a; . ./.testenv/env; set +a)", errUsage)
	}
	cat, dirs, err := cf.limits("reissue", *limitsFile)
	if err != nil {
		return err
	}

	sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	d, certs, err := openAndSelect(sctx, "reissue", *dbURL, *dbInsecure, sel, now, *sf.max)
	if err != nil {
		return err
	}
	defer d.Close()
	if len(certs) == 0 {
		fmt.Fprintln(stdout, "no current certificate matches the selection")
		return nil
	}
	loads, unread, err := incident.Loads(sctx, incident.Limits{Catalogue: cat, Overrides: ratelimit.NewOverrideStore(d, nil),
		Buckets: ratelimit.NewDBStore(d), Directory: dirs}, certs, now)
	if err != nil {
		return fmt.Errorf("reissue: %w", err)
	}
	est := incident.Plan(now, len(certs), loads, deadline)
	printEstimate(stdout, est, unread)
	if *dryRun {
		return nil
	}

	conn, err := kf.connect(ctx, "reissue", kf.topics.Requests, kf.topics.Events)
	if err != nil {
		return err
	}
	defer conn.Close()
	prod, err := kf.producer(conn, kf.topics.Requests)
	if err != nil {
		return fmt.Errorf("reissue: %w", err)
	}
	defer prod.Close()
	fctx, stopFollow := context.WithCancel(ctx)
	defer stopFollow()
	var msgs <-chan kafka.Message
	if !*noFollow {
		// From the end of the events topic, before publishing: no outcome
		// can slip past.
		if msgs, err = events.Follow(fctx, conn.DialerContext(fctx), conn.Brokers(), kf.topics.Events); err != nil {
			return fmt.Errorf("reissue: %w", conn.Explain(err, "read the end of topic "+kf.topics.Events))
		}
	}
	start := time.Now()
	ids, err := incident.PublishReplacements(ctx, prod, "//certfleet/cli", start, certs, 500)
	if err != nil {
		return fmt.Errorf("reissue: %w (%d published; run again: the same ids are ordered once)", err, len(ids))
	}
	fmt.Fprintf(stdout, "published %d replacement requests (reason reissue, priority %d)\n", len(ids), incident.EmergencyPriority)
	if *noFollow {
		return nil
	}
	tr := incident.NewTracker(ids, start)
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				msgs = nil
				continue
			}
			if e, err := events.Decode(m); err == nil && tr.Observe(e, time.Now()) && tr.Snapshot(time.Now()).Done {
				snap := tr.Snapshot(time.Now())
				fmt.Fprintln(stdout, snap)
				fmt.Fprintf(stdout, "took %s; estimated at least %s at the allowed rate\n", fmtTenths(snap.Elapsed), fmtTenths(est.Duration()))
				if snap.Failed > 0 {
					return fmt.Errorf("reissue: %d of %d replacements failed for good (see their cert_failed)", snap.Failed, snap.Total)
				}
				return nil
			}
		case <-tick.C:
			fmt.Fprintln(stdout, tr.Snapshot(time.Now()))
		case <-ctx.Done():
			fmt.Fprintln(stdout, tr.Snapshot(time.Now()))
			fmt.Fprintln(stdout, "interrupted: the replacements go on; run the same command again to follow them")
			return ctx.Err()
		}
	}
}

func printEstimate(w io.Writer, e incident.Estimate, unread int) {
	fmt.Fprintf(w, "%d certificates to replace; at the allowed rate the last order can go at %s (in %s)\n",
		e.Orders, fmtTime(e.Finish), fmtDuration(e.Duration()))
	if !e.Deadline.IsZero() {
		verdict := "the deadline can be met"
		if !e.Meets {
			verdict = "the deadline CANNOT be met at the current limits"
		}
		fmt.Fprintf(w, "deadline %s (in %s): %s\n", fmtTime(e.Deadline), fmtDuration(e.Deadline.Sub(e.Now)), verdict)
	}
	rows := [][]string{{"BUCKET", "ORDERS", "LIMIT", "", "DONE IN"}}
	for i, b := range e.Binding {
		if i == 5 {
			rows = append(rows, []string{fmt.Sprintf("... %d more", len(e.Binding)-5)})
			break
		}
		src := "catalogue"
		if b.Overridden {
			src = "override"
		}
		rows = append(rows, []string{b.Key, fmt.Sprint(b.Orders), fmt.Sprintf("%d/%s burst %d", b.Limit.Count, incident.FormatPeriod(b.Limit.Period), b.Limit.Burst), src, fmtDuration(b.Finish.Sub(e.Now))})
	}
	_ = table(w, rows...)
	if unread > 0 {
		fmt.Fprintf(w, "(%d buckets' current state not read: taken as full)\n", unread)
	}
	for _, c := range e.Changes {
		fmt.Fprintln(w, "to meet the deadline: "+c.Advice())
	}
}

// fmtTenths is fmtDuration to a tenth of a second below an hour, so that
// the closing comparison of a short run is not lost to rounding.
func fmtTenths(d time.Duration) string {
	if d <= 0 || d >= time.Hour {
		return fmtDuration(d)
	}
	return d.Round(100 * time.Millisecond).String()
}
