package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"
	"time"

	"github.com/certfleet/certfleet/audit"
	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/ratelimit"
)

const overrideUsage = `usage: certfleet override <command> [flags]

commands:
  set       create an override, or update one (--id with --expect-version)
  get       show an override's state and history       certfleet override get <id>
  list      list overrides                              certfleet override list [--limit NAME]
  disable   turn an override off (the default applies)  certfleet override disable <id>
  delete    remove an override (its history stays)      certfleet override delete <id>

Every change is versioned, audited and announced to the workers, which obey
it within seconds. Run 'certfleet override <command> -h' for its flags.
`

func override(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, overrideUsage)
		return fmt.Errorf("%w: override: missing command (set, get, list, disable, delete)", errUsage)
	}
	switch args[0] {
	case "set":
		return overrideSet(ctx, args[1:], stdout, stderr)
	case "get":
		return overrideGet(ctx, args[1:], stdout, stderr)
	case "list":
		return overrideList(ctx, args[1:], stdout, stderr)
	case "disable", "delete":
		return overrideRemove(ctx, args[0], args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, overrideUsage)
		return nil
	}
	fmt.Fprint(stderr, overrideUsage)
	return fmt.Errorf("%w: override: unknown command %q", errUsage, args[0])
}

// overrideJSON is the --json form of an override.
type overrideJSON struct {
	ID         string      `json:"id"`
	Limit      string      `json:"limit_name"`
	Key        string      `json:"key"`
	Count      int64       `json:"count"`
	Period     string      `json:"period"` // Go duration syntax
	Burst      int64       `json:"burst"`
	ValidFrom  time.Time   `json:"valid_from"`
	ValidUntil *time.Time  `json:"valid_until"` // null: open ended
	Enabled    bool        `json:"enabled"`
	State      string      `json:"state"` // active | scheduled | expired | disabled
	Comment    string      `json:"comment"`
	CreatedBy  string      `json:"created_by"`
	Version    int64       `json:"version"`
	UpdatedAt  time.Time   `json:"updated_at"`
	History    []auditJSON `json:"history,omitempty"`
}

type auditJSON struct {
	Action  string    `json:"action"`
	Actor   string    `json:"actor"`
	Version int64     `json:"version"`
	At      time.Time `json:"at"`
}

func toJSON(o *ratelimit.Override, now time.Time) overrideJSON {
	j := overrideJSON{ID: o.ID, Limit: string(o.Name), Key: o.Key, Count: o.Limit.Count, Period: o.Limit.Period.String(),
		Burst: o.Limit.Burst, ValidFrom: o.ValidFrom.UTC(), Enabled: o.Enabled, State: state(o, now), Comment: o.Comment,
		CreatedBy: o.CreatedBy, Version: o.Version, UpdatedAt: o.UpdatedAt.UTC()}
	if !o.ValidUntil.IsZero() {
		u := o.ValidUntil.UTC()
		j.ValidUntil = &u
	}
	return j
}

// state says whether an override applies now, and if not why.
func state(o *ratelimit.Override, now time.Time) string {
	switch {
	case !o.Enabled:
		return "disabled"
	case now.Before(o.ValidFrom):
		return "scheduled"
	case !o.ValidUntil.IsZero() && !now.Before(o.ValidUntil):
		return "expired"
	}
	return "active"
}

func rate(l ratelimit.Limit) string {
	return fmt.Sprintf("%d/%s", l.Count, fmtDuration(l.Period))
}

// overrideDetail prints one override as name/value lines and its history.
func overrideDetail(w io.Writer, o *ratelimit.Override, hist []ratelimit.AuditEntry, now time.Time) error {
	rows := [][]string{
		{"id", o.ID},
		{"limit", string(o.Name)},
		{"key", o.Key},
		{"rate", fmt.Sprintf("%s (count %d, period %s, burst %d)", rate(o.Limit), o.Limit.Count, o.Limit.Period, o.Limit.Burst)},
		{"state", state(o, now)},
		{"valid from", fmtTime(o.ValidFrom)},
		{"valid until", fmtTime(o.ValidUntil)},
		{"comment", o.Comment},
		{"created by", o.CreatedBy},
		{"version", strconv.FormatInt(o.Version, 10)},
		{"updated at", fmtTime(o.UpdatedAt)},
	}
	if err := table(w, rows...); err != nil {
		return err
	}
	if len(hist) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\nhistory:")
	hrows := [][]string{{"  VERSION", "ACTION", "ACTOR", "AT"}}
	for _, h := range hist {
		hrows = append(hrows, []string{"  " + strconv.FormatInt(h.Version, 10), h.Action, h.Actor, fmtTime(h.At)})
	}
	return table(w, hrows...)
}

func overrideSet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const cmd = "override set"
	f := newAdminFlags(cmd, "--limit NAME --key KEY --count N --period D [flags]  (create)\n       certfleet override set --id ID --expect-version V [flags]          (update)",
		`Creates an override, or updates the one named by --id (only the flags given
change). The burst defaults to the count; on update, a burst that equalled the
old count follows a new --count, and a burst set apart from the count stays
(pass --burst to change it).`, stdout, stderr, true)
	id := f.fs.String("id", "", "update this override instead of creating one (needs --expect-version)")
	expect := f.fs.Int64("expect-version", 0, "the version you read; the update fails if the override has changed since")
	name := f.fs.String("limit", "", "limit name: "+fmt.Sprint(ratelimit.Names)+" (required to create)")
	key := f.fs.String("key", "", "exact key (account id, domain, bucket value) or wildcard *.example.com (required to create)")
	count := f.fs.Int64("count", 0, "events allowed per period (required to create)")
	period := f.fs.String("period", "", "period, e.g. 3h or 7d (required to create)")
	burst := f.fs.Int64("burst", 0, "events allowed at once (default: the count; on update, follows --count when it equalled the old count)")
	from := f.fs.String("valid-from", "now", "start: RFC 3339, now, or +/- a duration (+2h)")
	until := f.fs.String("valid-until", "", "end: RFC 3339 or +duration; empty or 'none' for open ended")
	comment := f.fs.String("comment", "", "why (shown in listings and kept in the history)")
	by := f.fs.String("created-by", defaultActor(), "who makes the change: the creator on create, the actor on update ("+actorDefaultHelp+")")
	quiet := f.fs.Bool("quiet", false, "print only the override id (for scripts: id=$(certfleet override set ... --quiet))")
	if _, err := f.parse(args, 0, 0, "only flags"); err != nil {
		return err
	}
	now := time.Now()
	updating := *id != ""
	if !updating && f.set("expect-version") {
		return fmt.Errorf("%w: %s: --expect-version needs --id (without --id, set creates a new override)", errUsage, cmd)
	}
	if updating {
		if err := checkID(cmd, *id); err != nil {
			return err
		}
		if !f.set("expect-version") {
			return fmt.Errorf("%w: %s: updating needs --expect-version: run 'certfleet override get %s' and pass the version it shows", errUsage, cmd, *id)
		}
	} else {
		for _, req := range []string{"limit", "key", "count", "period"} {
			if !f.set(req) {
				return fmt.Errorf("%w: %s: --%s is required to create an override (to update one, pass --id and --expect-version)", errUsage, cmd, req)
			}
		}
	}

	// Build the new state: flags given override the current (or empty) one.
	var o ratelimit.Override
	var prev ratelimit.Limit // the limit before an update
	d, ctx, done, err := f.open(ctx)
	if err != nil {
		return err
	}
	defer done()
	store := ratelimit.NewOverrideStore(d, nil)
	if updating {
		cur, err := store.Get(ctx, *id)
		if err != nil {
			return explain(cmd, err)
		}
		o, prev = *cur, cur.Limit
		if f.set("limit") && ratelimit.Name(*name) != cur.Name || f.set("key") && *key != cur.Key {
			return fmt.Errorf("%w: %s: the limit name and key of an override cannot change (it is %s %s); create a new override and delete this one", errUsage, cmd, cur.Name, cur.Key)
		}
		o.Version = *expect
	} else {
		n, err := parseName(cmd, *name)
		if err != nil {
			return err
		}
		o.Name, o.Key = n, *key
	}
	if f.set("count") {
		o.Limit.Count = *count
	}
	if f.set("period") {
		p, err := parseDuration(*period)
		if err != nil {
			return fmt.Errorf("%w: %s: invalid --period: %v", errUsage, cmd, err)
		}
		o.Limit.Period = p
	}
	switch {
	case f.set("burst"):
		o.Limit.Burst = *burst
	case !updating:
		o.Limit.Burst = o.Limit.Count
	case f.set("count") && prev.Burst == prev.Count:
		// The burst had its default, the count: it follows the new count.
		o.Limit.Burst = o.Limit.Count
	case f.set("count") && o.Limit.Count != prev.Count:
		fmt.Fprintf(stderr, "note: the burst stays %d (it was set apart from the count, %d); pass --burst to change it\n", prev.Burst, prev.Count)
	}
	if f.set("valid-from") || !updating {
		if o.ValidFrom, err = parseTime(*from, now); err != nil {
			return fmt.Errorf("%w: %s: invalid --valid-from: %v", errUsage, cmd, err)
		}
	}
	if f.set("valid-until") {
		o.ValidUntil = time.Time{}
		if *until != "" && *until != "none" {
			if o.ValidUntil, err = parseTime(*until, now); err != nil {
				return fmt.Errorf("%w: %s: invalid --valid-until: %v", errUsage, cmd, err)
			}
		}
	}
	if f.set("comment") || !updating {
		o.Comment = *comment
	}
	var res *ratelimit.Override
	if updating {
		res, err = store.Update(ctx, o, *by)
	} else {
		o.CreatedBy = *by
		res, err = store.Create(ctx, o)
	}
	if err != nil {
		return explain(cmd, err)
	}
	act := audit.OverrideCreate
	if updating {
		act = audit.OverrideUpdate
	}
	if err := recordOverride(ctx, d, act, res, *by); err != nil {
		return err
	}
	switch {
	case *quiet:
		fmt.Fprintln(stdout, res.ID)
		return nil
	case *f.json:
		return writeJSON(stdout, toJSON(res, now))
	}
	verb := "created"
	if updating {
		verb = "updated"
	}
	fmt.Fprintf(stdout, "%s override %s, now at version %d; workers pick it up within seconds\n\n", verb, res.ID, res.Version)
	return overrideDetail(stdout, res, nil, now)
}

func overrideGet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const cmd = "override get"
	f := newAdminFlags(cmd, "<id> [flags]", "Shows one override and its history; for a deleted override, its history.", stdout, stderr, true)
	pos, err := f.parse(args, 1, 1, "one override id")
	if err != nil {
		return err
	}
	if err := checkID(cmd, pos[0]); err != nil {
		return err
	}
	d, ctx, done, err := f.open(ctx)
	if err != nil {
		return err
	}
	defer done()
	store := ratelimit.NewOverrideStore(d, nil)
	o, err := store.Get(ctx, pos[0])
	if errors.Is(err, ratelimit.ErrNotFound) {
		// Deleted overrides keep their history in the audit table.
		hist, herr := store.History(ctx, pos[0])
		if herr == nil && len(hist) > 0 {
			return deletedDetail(stdout, pos[0], hist, *f.json)
		}
	}
	if err != nil {
		return explain(cmd, err)
	}
	hist, err := store.History(ctx, o.ID)
	if err != nil {
		return explain(cmd, err)
	}
	now := time.Now()
	if *f.json {
		j := toJSON(o, now)
		for _, h := range hist {
			j.History = append(j.History, auditJSON{Action: h.Action, Actor: h.Actor, Version: h.Version, At: h.At.UTC()})
		}
		return writeJSON(stdout, j)
	}
	return overrideDetail(stdout, o, hist, now)
}

func overrideList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const cmd = "override list"
	f := newAdminFlags(cmd, "[flags]", "Lists the overrides. Deleted ones are not listed; 'certfleet override get ID' shows their history.", stdout, stderr, true)
	name := f.fs.String("limit", "", "only overrides of this limit name")
	maxRows := f.fs.Int("max", 1000, "list at most this many")
	if _, err := f.parse(args, 0, 0, "only flags"); err != nil {
		return err
	}
	if *name != "" {
		if _, err := parseName(cmd, *name); err != nil {
			return err
		}
	}
	if *maxRows < 1 {
		return fmt.Errorf("%w: %s: --max must be at least 1", errUsage, cmd)
	}
	d, ctx, done, err := f.open(ctx)
	if err != nil {
		return err
	}
	defer done()
	list, err := ratelimit.NewOverrideStore(d, nil).List(ctx, ratelimit.Name(*name), *maxRows)
	if err != nil {
		return explain(cmd, err)
	}
	now := time.Now()
	if *f.json {
		out := make([]overrideJSON, 0, len(list))
		for _, o := range list {
			out = append(out, toJSON(o, now))
		}
		return writeJSON(stdout, out)
	}
	if len(list) == 0 {
		fmt.Fprintln(stdout, "no overrides; create one with 'certfleet override set'")
		return nil
	}
	rows := [][]string{{"ID", "VERSION", "LIMIT", "KEY", "RATE", "BURST", "STATE", "VALID FROM", "VALID UNTIL", "COMMENT"}}
	for _, o := range list {
		rows = append(rows, []string{o.ID, strconv.FormatInt(o.Version, 10), string(o.Name), o.Key, rate(o.Limit),
			strconv.FormatInt(o.Limit.Burst, 10), state(o, now), fmtTime(o.ValidFrom), fmtTime(o.ValidUntil), o.Comment})
	}
	if err := table(stdout, rows...); err != nil {
		return err
	}
	if len(list) == *maxRows {
		fmt.Fprintf(stderr, "showing the first %d; raise --max or filter with --limit to see more\n", *maxRows)
	}
	return nil
}

// overrideRemove is disable and delete.
func overrideRemove(ctx context.Context, action string, args []string, stdout, stderr io.Writer) error {
	cmd := "override " + action
	about := "Turns an override off: the catalogue default applies again. Its history stays."
	if action == "delete" {
		about = "Removes an override; 'certfleet override get ID' still shows its history."
	}
	f := newAdminFlags(cmd, "<id> [flags]", about, stdout, stderr, false)
	expect := f.fs.Int64("expect-version", 0, "the version you read; fails if the override changed since (default: its current version)")
	actor := f.fs.String("actor", defaultActor(), "who makes the change ("+actorDefaultHelp+")")
	pos, err := f.parse(args, 1, 1, "one override id")
	if err != nil {
		return err
	}
	if err := checkID(cmd, pos[0]); err != nil {
		return err
	}
	d, ctx, done, err := f.open(ctx)
	if err != nil {
		return err
	}
	defer done()
	store := ratelimit.NewOverrideStore(d, nil)
	version := *expect
	if !f.set("expect-version") {
		cur, err := store.Get(ctx, pos[0])
		if errors.Is(err, ratelimit.ErrNotFound) {
			if hist, herr := store.History(ctx, pos[0]); herr == nil && len(hist) > 0 {
				last := hist[len(hist)-1]
				return fmt.Errorf("%s: override %s was deleted (version %d, by %s at %s); 'certfleet override get %s' shows its history",
					cmd, pos[0], last.Version, last.Actor, fmtTime(last.At), pos[0])
			}
		}
		if err != nil {
			return explain(cmd, err)
		}
		version = cur.Version
	}
	if action == "disable" {
		o, err := store.Disable(ctx, pos[0], version, *actor)
		if err != nil {
			return explain(cmd, err)
		}
		if err := recordOverride(ctx, d, audit.OverrideDisable, o, *actor); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "disabled override %s (%s %s), now at version %d; workers fall back within seconds\n", o.ID, o.Name, o.Key, o.Version)
		return nil
	}
	if err := store.Delete(ctx, pos[0], version, *actor); err != nil {
		return explain(cmd, err)
	}
	if err := recordAudit(context.WithoutCancel(ctx), d, audit.Event{Action: audit.OverrideDelete, Subject: pos[0],
		Detail: map[string]string{"version": strconv.FormatInt(version, 10), "actor": *actor}}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "deleted override %s (was version %d); its history stays in the audit table\n", pos[0], version)
	return nil
}

// recordOverride audits a change of o (its state after the change); actor
// is the self-asserted --created-by/--actor, kept in the detail beside the
// session's identity.
func recordOverride(ctx context.Context, d *db.DB, act audit.Action, o *ratelimit.Override, actor string) error {
	return recordAudit(context.WithoutCancel(ctx), d, audit.Event{Action: act, Subject: o.ID, Detail: map[string]string{
		"limit": string(o.Name), "key": o.Key, "count": strconv.FormatInt(o.Limit.Count, 10), "period": o.Limit.Period.String(),
		"burst": strconv.FormatInt(o.Limit.Burst, 10), "enabled": strconv.FormatBool(o.Enabled), "version": strconv.FormatInt(o.Version, 10),
		"actor": actor,
	}})
}

// deletedJSON is the --json form of a deleted override: its id and history.
type deletedJSON struct {
	ID        string      `json:"id"`
	State     string      `json:"state"` // "deleted"
	Version   int64       `json:"version"`
	UpdatedAt time.Time   `json:"updated_at"` // when it was deleted
	History   []auditJSON `json:"history"`
}

// deletedDetail shows what is kept of a deleted override: its history.
func deletedDetail(w io.Writer, id string, hist []ratelimit.AuditEntry, asJSON bool) error {
	last := hist[len(hist)-1]
	if asJSON {
		j := deletedJSON{ID: id, State: "deleted", Version: last.Version, UpdatedAt: last.At.UTC()}
		for _, h := range hist {
			j.History = append(j.History, auditJSON{Action: h.Action, Actor: h.Actor, Version: h.Version, At: h.At.UTC()})
		}
		return writeJSON(w, j)
	}
	state := "deleted"
	if last.Action == "delete" {
		state = fmt.Sprintf("deleted by %s at %s", last.Actor, fmtTime(last.At))
	}
	if err := table(w, []string{"id", id}, []string{"state", state}, []string{"version", strconv.FormatInt(last.Version, 10)}); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nhistory:")
	hrows := [][]string{{"  VERSION", "ACTION", "ACTOR", "AT"}}
	for _, h := range hist {
		hrows = append(hrows, []string{"  " + strconv.FormatInt(h.Version, 10), h.Action, h.Actor, fmtTime(h.At)})
	}
	return table(w, hrows...)
}

// actorDefaultHelp documents defaultActor in flag help.
const actorDefaultHelp = "taken from $USER, else $LOGNAME, else the login name of this process's user, else uid-N"

// defaultActor names who runs the command, the default of --created-by and
// --actor: $USER, else $LOGNAME, else the login name of the process's user
// (containers often set neither variable), else "uid-N".
func defaultActor() string {
	return actorFrom(os.Getenv, user.Current, os.Getuid())
}

func actorFrom(getenv func(string) string, current func() (*user.User, error), uid int) string {
	for _, v := range []string{"USER", "LOGNAME"} {
		if name := strings.TrimSpace(getenv(v)); name != "" {
			return name
		}
	}
	if u, err := current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "uid-" + strconv.Itoa(uid)
}
