package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/certfleet/certfleet/audit"
	"github.com/certfleet/certfleet/ratelimit"
)

const penaltyUsage = `usage: certfleet penalty <command> [flags]

commands:
  list    list the active CA penalties (a CA answered 429 with Retry-After)
  clear   lift the penalty on one bucket now      certfleet penalty clear <bucket key>

Run 'certfleet penalty <command> -h' for its flags.
`

func penalty(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, penaltyUsage)
		return fmt.Errorf("%w: penalty: missing command (list, clear)", errUsage)
	}
	switch args[0] {
	case "list":
		return penaltyList(ctx, args[1:], stdout, stderr)
	case "clear":
		return penaltyClear(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, penaltyUsage)
		return nil
	}
	fmt.Fprint(stderr, penaltyUsage)
	return fmt.Errorf("%w: penalty: unknown command %q", errUsage, args[0])
}

type penaltyJSON struct {
	Bucket    string    `json:"bucket"`
	Until     time.Time `json:"until"`
	Remaining string    `json:"remaining"` // Go duration syntax
}

func penaltyList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const cmd = "penalty list"
	f := newAdminFlags(cmd, "[flags]", "Lists the active CA penalties, soonest ending first.", stdout, stderr, true)
	maxRows := f.fs.Int("max", 1000, "list at most this many")
	if _, err := f.parse(args, 0, 0, "only flags"); err != nil {
		return err
	}
	if *maxRows < 1 {
		return fmt.Errorf("%w: %s: --max must be at least 1", errUsage, cmd)
	}
	d, ctx, done, err := f.open(ctx)
	if err != nil {
		return err
	}
	defer done()
	now := time.Now()
	ps, err := ratelimit.NewDBStore(d).Penalties(ctx, now, *maxRows)
	if err != nil {
		return explain(cmd, err)
	}
	if *f.json {
		out := make([]penaltyJSON, 0, len(ps))
		for _, p := range ps {
			out = append(out, penaltyJSON{Bucket: p.Key, Until: p.Until.UTC(), Remaining: p.Until.Sub(now).Round(time.Millisecond).String()})
		}
		return writeJSON(stdout, out)
	}
	if len(ps) == 0 {
		fmt.Fprintln(stdout, "no active penalties")
		return nil
	}
	rows := [][]string{{"BUCKET", "BLOCKED UNTIL", "REMAINING"}}
	for _, p := range ps {
		rows = append(rows, []string{p.Key, fmtTime(p.Until), fmtDuration(p.Until.Sub(now))})
	}
	if err := table(stdout, rows...); err != nil {
		return err
	}
	if len(ps) == *maxRows {
		fmt.Fprintf(stderr, "showing the first %d (soonest ending); raise --max to see more\n", *maxRows)
	}
	return nil
}

func penaltyClear(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const cmd = "penalty clear"
	f := newAdminFlags(cmd, "<bucket key> [flags]", "Lifts the penalty on one bucket now (the key as 'certfleet penalty list' shows it).", stdout, stderr, false)
	pos, err := f.parse(args, 1, 1, "one bucket key, as shown by 'certfleet penalty list'")
	if err != nil {
		return err
	}
	d, ctx, done, err := f.open(ctx)
	if err != nil {
		return err
	}
	defer done()
	cleared, err := ratelimit.NewDBStore(d).ClearPenalty(ctx, time.Now(), pos[0])
	if err != nil {
		return explain(cmd, err)
	}
	if !cleared {
		fmt.Fprintf(stdout, "no active penalty on %s; nothing to clear ('certfleet penalty list' shows the active ones)\n", pos[0])
		return nil
	}
	fmt.Fprintf(stdout, "cleared the penalty on %s; workers may spend it again now (if the CA still refuses, the next 429 sets a new one)\n", pos[0])
	return recordAudit(context.WithoutCancel(ctx), d, audit.Event{Action: audit.PenaltyClear, Subject: pos[0]})
}
