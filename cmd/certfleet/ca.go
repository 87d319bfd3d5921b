package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/certfleet/certfleet/cahealth"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/caconfig"
)

const caUsage = `usage: certfleet ca <command> [flags]

commands:
  status  each CA's circuit breaker as the workers share it: closed, open (no new
          orders until a probe), half-open (one probe at a time)
  reset   close one CA's breaker now                 certfleet ca reset <CA name>

Run 'certfleet ca <command> -h' for its flags.
`

func caCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, caUsage)
		return fmt.Errorf("%w: ca: missing command (status, reset)", errUsage)
	}
	switch args[0] {
	case "status":
		return caStatus(ctx, args[1:], stdout, stderr)
	case "reset":
		return caReset(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, caUsage)
		return nil
	}
	fmt.Fprint(stderr, caUsage)
	return fmt.Errorf("%w: ca: unknown command %q", errUsage, args[0])
}

type caStatusJSON struct {
	CA         string     `json:"ca"`
	State      string     `json:"state"` // closed, open, half_open
	Failures   int        `json:"failures"`
	Opens      int        `json:"opens"`
	OpenUntil  *time.Time `json:"open_until,omitempty"`
	ProbeOwner string     `json:"probe_owner,omitempty"`
	ProbeUntil *time.Time `json:"probe_until,omitempty"`
	FailedAt   *time.Time `json:"failed_at,omitempty"`
	LastError  string     `json:"last_error,omitempty"`
	ClosedAt   *time.Time `json:"closed_at,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func caStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const cmd = "ca status"
	f := newAdminFlags(cmd, "[flags]", "Shows each CA's circuit breaker, which every issuer-worker reads and writes (table ca_health):\n"+
		"closed (orders go to it), open (no new orders until its time, then one probe), half-open (one\n"+
		"probe at a time; its success closes the breaker). The CAs of --ca that never failed are listed closed.", stdout, stderr, true)
	cas := f.fs.String("ca", os.Getenv("CERTFLEET_CAS"), "the workers' CAs, NAME=URL comma separated, as their -ca (env CERTFLEET_CAS): listed even without a failure")
	if _, err := f.parse(args, 0, 0, "only flags"); err != nil {
		return err
	}
	configured, err := caconfig.Parse(*cas)
	if err != nil {
		return fmt.Errorf("%w: %s: --ca %v", errUsage, cmd, err)
	}
	b, ctx, done, err := openBreaker(ctx, f)
	if err != nil {
		return err
	}
	defer done()
	list, err := b.List(ctx)
	if err != nil {
		return explainCA(cmd, err)
	}
	seen := map[string]bool{}
	for _, s := range list {
		seen[s.CA] = true
	}
	for _, c := range configured {
		if !seen[c.Name] {
			list = append(list, cahealth.Status{CA: c.Name})
			seen[c.Name] = true
		}
	}
	now := time.Now()
	if *f.json {
		out := make([]caStatusJSON, 0, len(list))
		for _, s := range list {
			out = append(out, caStatusJSON{CA: s.CA, State: string(s.State(now)), Failures: s.Failures, Opens: s.Opens,
				OpenUntil: timePtr(s.OpenUntil), ProbeOwner: s.ProbeOwner, ProbeUntil: timePtr(s.ProbeUntil), FailedAt: timePtr(s.FailedAt),
				LastError: events.Sanitize(s.LastError, 300), ClosedAt: timePtr(s.ClosedAt)})
		}
		return writeJSON(stdout, out)
	}
	if len(list) == 0 {
		fmt.Fprintln(stdout, "no CA has failed: every breaker is closed (--ca lists the workers' CAs)")
		return nil
	}
	rows := [][]string{{"CA", "STATE", "FAILURES", "OPEN UNTIL", "PROBE", "LAST FAILURE", "LAST ERROR"}}
	for _, s := range list {
		state := string(s.State(now))
		switch s.State(now) {
		case cahealth.Open:
			state = fmt.Sprintf("open (%s left)", fmtDuration(s.OpenUntil.Sub(now)))
		case cahealth.HalfOpen:
			state = "half-open"
		}
		probe := "-"
		if s.ProbeOwner != "" && now.Before(s.ProbeUntil) {
			probe = s.ProbeOwner
		}
		lastErr := events.Sanitize(s.LastError, 80)
		if lastErr == "" {
			lastErr = "-"
		}
		rows = append(rows, []string{s.CA, state, fmt.Sprint(s.Failures), fmtTime(s.OpenUntil), probe, fmtTime(s.FailedAt), lastErr})
	}
	return table(stdout, rows...)
}

func caReset(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const cmd = "ca reset"
	f := newAdminFlags(cmd, "<CA name> [flags]", "Closes one CA's circuit breaker now (when you know the CA is back): workers send it new orders again at once.", stdout, stderr, false)
	pos, err := f.parse(args, 1, 1, "one CA name, as 'certfleet ca status' shows it")
	if err != nil {
		return err
	}
	b, ctx, done, err := openBreaker(ctx, f)
	if err != nil {
		return err
	}
	defer done()
	reset, err := b.Reset(ctx, pos[0])
	if err != nil {
		return explainCA(cmd, err)
	}
	if !reset {
		fmt.Fprintf(stdout, "the breaker of %s is closed already; nothing to reset\n", pos[0])
		return nil
	}
	fmt.Fprintf(stdout, "closed the breaker of %s; workers order from it again (if it still fails, its breaker opens again)\n", pos[0])
	return nil
}

// openBreaker connects to the database (f.open) and returns the CAs'
// breakers over it.
func openBreaker(ctx context.Context, f *adminFlags) (*cahealth.Breaker, context.Context, func(), error) {
	d, ctx, done, err := f.open(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	b, err := cahealth.New(cahealth.Config{DB: d})
	if err != nil {
		done()
		return nil, nil, nil, err
	}
	return b, ctx, done, nil
}

// explainCA says to migrate when ca_health does not exist.
func explainCA(cmd string, err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42P01" { // undefined_table
		return fmt.Errorf("%s: the table ca_health does not exist (%s): run 'certfleet migrate' against this database first", cmd, pe.Message)
	}
	return fmt.Errorf("%s: %w", cmd, err)
}
