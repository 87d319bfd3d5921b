package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/certfleet/certfleet/audit"
	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/events"
)

const auditUsage = `usage: certfleet audit <command> [flags]

commands:
  list    list audit events, newest first      certfleet audit list [--since T] [--action A] [--json]

Every key export, dead letter replayed, penalty cleared, override change and
certificate issued leaves one event; WHO is the database role the command (or
worker) was connected as, not a name it asserted.
Run 'certfleet audit list -h' for its flags.
`

func auditCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, auditUsage)
		return fmt.Errorf("%w: audit: missing command (list)", errUsage)
	}
	switch {
	case args[0] == "list":
		return auditList(ctx, args[1:], stdout, stderr)
	case isHelp(args[0]):
		fmt.Fprint(stdout, auditUsage)
		return nil
	}
	fmt.Fprint(stderr, auditUsage)
	return fmt.Errorf("%w: audit: unknown command %q", errUsage, args[0])
}

// auditJSONEvent is the --json form of one event.
type auditJSONEvent struct {
	ID      string            `json:"id"`
	At      time.Time         `json:"at"`
	Action  string            `json:"action"`
	DBUser  string            `json:"db_user"`
	DBRole  string            `json:"db_role"`
	OSUser  string            `json:"os_user"`
	Subject string            `json:"subject"`
	Tenant  string            `json:"tenant"`
	SANs    []string          `json:"sans"`
	CA      string            `json:"ca"`
	Account string            `json:"account"`
	Serial  string            `json:"serial"`
	Detail  map[string]string `json:"detail"`
}

func auditList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const cmd = "audit list"
	var actions []string
	for _, a := range audit.Actions {
		actions = append(actions, string(a))
	}
	f := newAdminFlags(cmd, "[--since T] [--action A] [--max N] [--json] [flags]",
		"Lists audit events, newest first. WHO is the database session's role (session_user),\nOS USER what the client said of itself.", stdout, stderr, true)
	since := f.fs.String("since", "", "only events at or after this: RFC 3339, or -DURATION (-24h, -7d)")
	action := f.fs.String("action", "", "only this action: "+strings.Join(actions, ", "))
	maxRows := f.fs.Int("max", 100, "list at most this many")
	if _, err := f.parse(args, 0, 0, "only flags"); err != nil {
		return err
	}
	filter := audit.Filter{Action: audit.Action(*action), Limit: *maxRows}
	if *action != "" && !filter.Action.Valid() {
		return fmt.Errorf("%w: %s: --action %q: want one of %s", errUsage, cmd, *action, strings.Join(actions, ", "))
	}
	if *maxRows < 1 {
		return fmt.Errorf("%w: %s: --max must be at least 1", errUsage, cmd)
	}
	if *since != "" {
		t, err := parseTime(*since, time.Now())
		if err != nil {
			return fmt.Errorf("%w: %s: invalid --since: %v", errUsage, cmd, err)
		}
		filter.Since = t
	}
	d, ctx, done, err := f.open(ctx)
	if err != nil {
		return err
	}
	defer done()
	evs, err := audit.List(ctx, d.Pool(), filter)
	if err != nil {
		return explain(cmd, err)
	}
	if *f.json {
		out := make([]auditJSONEvent, 0, len(evs))
		for _, e := range evs {
			out = append(out, auditJSONEvent{ID: e.ID.String(), At: e.At.UTC(), Action: string(e.Action), DBUser: e.DBUser, DBRole: e.DBRole,
				OSUser: e.OSUser, Subject: e.Subject, Tenant: e.Tenant, SANs: e.SANs, CA: e.CA, Account: e.Account, Serial: e.Serial, Detail: e.Detail})
		}
		return writeJSON(stdout, out)
	}
	if len(evs) == 0 {
		fmt.Fprintln(stdout, "no audit events")
		return nil
	}
	rows := [][]string{{"AT", "ACTION", "WHO", "OS USER", "SUBJECT", "TENANT", "SANS", "CA", "SERIAL"}}
	for _, e := range evs {
		rows = append(rows, []string{fmtTime(e.At), string(e.Action), cell(e.DBUser), cell(e.OSUser), cell(e.Subject), cell(e.Tenant),
			cell(strings.Join(e.SANs, ",")), cell(e.CA), cell(e.Serial)})
	}
	if err := table(stdout, rows...); err != nil {
		return err
	}
	if len(evs) == *maxRows {
		fmt.Fprintf(stderr, "showing the newest %d; raise --max or narrow with --since or --action\n", *maxRows)
	}
	return nil
}

// cell is a table cell: sanitised, "-" when empty.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return events.Sanitize(s, 200)
}

// recordAudit appends one event of this command to the audit trail through
// d, with the operator's user@host as OSUser. An act already done whose
// record fails is reported as such (audit.ErrNotRecorded): the operator
// learns the trail lacks it.
func recordAudit(ctx context.Context, d *db.DB, e audit.Event) error {
	e.OSUser = events.Sanitize(audit.OSUser(), 255)
	if err := audit.Record(ctx, d.Pool(), e); err != nil {
		return fmt.Errorf("%w: %v", audit.ErrNotRecorded, err)
	}
	return nil
}
