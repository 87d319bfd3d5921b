package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/ratelimit"
)

// This file holds what the admin commands (override, bucket, penalty) share:
// database flags, argument parsing, time and duration syntax, output, and
// turning library errors into messages that say what to do next.

// adminFlags are the flags every admin command has.
type adminFlags struct {
	fs             *flag.FlagSet
	stdout, stderr io.Writer
	url            *string
	insecure       *bool
	timeout        *time.Duration
	json           *bool // nil for commands without --json
}

// newAdminFlags starts the flags of the command name; synopsis and about
// make its usage text (see newFlagSet).
func newAdminFlags(name, synopsis, about string, stdout, stderr io.Writer, withJSON bool) *adminFlags {
	fs := newFlagSet(name, synopsis, about)
	fs.SetOutput(stderr)
	url, insecure := addDatabaseFlags(fs)
	a := &adminFlags{fs: fs, stdout: stdout, stderr: stderr, url: url, insecure: insecure,
		timeout: fs.Duration("timeout", 30*time.Second, "give up after this long"),
	}
	if withJSON {
		a.json = fs.Bool("json", false, "print JSON instead of a table")
	}
	return a
}

// addDatabaseFlags adds --database-url and --database-insecure. To a host
// that is not loopback the URL must say sslmode=verify-full with
// sslrootcert (db.Open); --database-insecure lifts that.
func addDatabaseFlags(fs *flag.FlagSet) (url *string, insecure *bool) {
	url = fs.String("database-url", os.Getenv("CERTFLEET_DATABASE_URL"), "database URL; to a host that is not loopback it needs sslmode=verify-full&sslrootcert=FILE, and for certificate auth sslcert=FILE&sslkey=FILE (env CERTFLEET_DATABASE_URL)")
	on, _ := strconv.ParseBool(os.Getenv("CERTFLEET_DATABASE_INSECURE"))
	insecure = fs.Bool("database-insecure", on, "allow a database that is not loopback without verify-full: no server verification (env CERTFLEET_DATABASE_INSECURE)")
	return url, insecure
}

// parse parses flags and positional arguments in any order and checks the
// number of positional arguments.
func (a *adminFlags) parse(args []string, minPos, maxPos int, synopsis string) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(a.fs, args, a.stdout, a.stderr); err != nil {
			return nil, err
		}
		args = a.fs.Args()
		if len(args) == 0 {
			break
		}
		pos, args = append(pos, args[0]), args[1:]
	}
	if len(pos) < minPos || len(pos) > maxPos {
		return nil, fmt.Errorf("%w: %s takes %s (got %d arguments)", errUsage, a.fs.Name(), synopsis, len(pos))
	}
	return pos, nil
}

// set reports whether a flag was given on the command line.
func (a *adminFlags) set(name string) bool {
	found := false
	a.fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	return found
}

// open connects to the database; the returned context carries --timeout.
func (a *adminFlags) open(ctx context.Context) (*db.DB, context.Context, context.CancelFunc, error) {
	if *a.url == "" {
		return nil, nil, nil, fmt.Errorf("%w: %s: no database: set --database-url or CERTFLEET_DATABASE_URL (with testenv: set -a; . ./.testenv/env; set +a)", errUsage, a.fs.Name())
	}
	ctx, cancel := context.WithTimeout(ctx, *a.timeout)
	d, err := db.Open(ctx, db.Config{URL: *a.url, Insecure: *a.insecure, MaxConns: 2})
	if err != nil {
		cancel()
		return nil, nil, nil, fmt.Errorf("%s: cannot reach the database: %w (check --database-url or CERTFLEET_DATABASE_URL)", a.fs.Name(), err)
	}
	return d, ctx, func() { d.Close(); cancel() }, nil
}

// explain turns a library error into one that says what to do next.
func explain(cmd string, err error) error {
	var fe *ratelimit.FieldError
	var ce *ratelimit.ConflictError
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &fe) && (fe.Field == "created_by" || fe.Field == "actor"):
		// override set names the actor of an update with --created-by too.
		fl := "--actor"
		if cmd == "override set" {
			fl = "--created-by"
		}
		return fmt.Errorf("%w: %s: invalid %s: %v (it names who makes the change; %s): pass %s NAME", errUsage, cmd, fl, fe.Err, actorDefaultHelp, fl)
	case errors.As(err, &fe):
		return fmt.Errorf("%w: %s: invalid %s: %v", errUsage, cmd, flagOf(fe.Field), fe.Err)
	case errors.As(err, &ce):
		if ce.Current < 0 {
			return fmt.Errorf("%s: override %s changed while you were updating it (you gave --expect-version %d); run 'certfleet override get %s' and retry with its current version", cmd, ce.ID, ce.Want, ce.ID)
		}
		return fmt.Errorf("%s: conflict: override %s is at version %d, not %d: someone changed it since you read it; nothing was changed. Run 'certfleet override get %s', check the change, and retry with --expect-version %d",
			cmd, ce.ID, ce.Current, ce.Want, ce.ID, ce.Current)
	case errors.Is(err, ratelimit.ErrNotFound):
		return fmt.Errorf("%s: %w; 'certfleet override list' shows the existing overrides", cmd, err)
	case errors.As(err, &pe) && pe.Code == "42P01": // undefined_table
		return fmt.Errorf("%s: the rate-limit tables do not exist (%s): run 'certfleet migrate' against this database first", cmd, pe.Message)
	}
	return fmt.Errorf("%s: %w", cmd, err)
}

// flagOf names the flag that sets an Override field.
func flagOf(field string) string {
	switch field {
	case "name":
		return "--limit (limit name)"
	case "key", "count", "period", "burst", "comment", "actor":
		return "--" + field
	case "valid_from", "valid_until", "created_by":
		return "--" + strings.ReplaceAll(field, "_", "-")
	}
	return field
}

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func checkID(cmd, id string) error {
	if !uuidPattern.MatchString(id) {
		return fmt.Errorf("%w: %s: %q is not an override id (a UUID as printed by 'certfleet override list')", errUsage, cmd, id)
	}
	return nil
}

func parseName(cmd, s string) (ratelimit.Name, error) {
	n := ratelimit.Name(s)
	if !n.Valid() {
		return "", fmt.Errorf("%w: %s: unknown limit name %q; known: %v", errUsage, cmd, s, ratelimit.Names)
	}
	return n, nil
}

// parseDuration accepts Go durations ("90m", "3h") and whole days ("7d").
func parseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseInt(days, 10, 64)
		if err != nil || n < 0 || n > 100*365 {
			return 0, fmt.Errorf("%q is not a number of days", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration like 90s, 3h or 7d", s)
	}
	return d, nil
}

// parseTime accepts RFC 3339, "now", or a duration from now ("+2h", "-10m", "+7d").
func parseTime(s string, now time.Time) (time.Time, error) {
	switch {
	case s == "now":
		return now, nil
	case strings.HasPrefix(s, "+") || strings.HasPrefix(s, "-"):
		d, err := parseDuration(s[1:])
		if err != nil {
			return time.Time{}, err
		}
		if s[0] == '-' {
			d = -d
		}
		return now.Add(d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not a time: use RFC 3339 (2026-05-01T12:00:00Z), now, or +/- a duration (+2h, +7d)", s)
	}
	return t, nil
}

// fmtTime prints a time in UTC, "-" for none.
func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// fmtDuration prints a duration rounded for people: 3h, 2h59m10s, 7d, 850ms.
func fmtDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d >= 48*time.Hour:
		d = d.Round(time.Minute)
		days, rest := d/(24*time.Hour), d%(24*time.Hour)
		if rest == 0 {
			return fmt.Sprintf("%dd", days)
		}
		return fmt.Sprintf("%dd%s", days, trimZeros(rest.String()))
	}
	return trimZeros(d.Round(time.Second).String())
}

// trimZeros drops zero minutes and seconds: "3h0m0s" -> "3h", "1h30m0s" -> "1h30m".
func trimZeros(s string) string {
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes aligned columns; rows are tab-separated cells.
func table(w io.Writer, rows ...[]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}
