package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/audit"
	"github.com/certfleet/certfleet/db"
)

// auditEvents returns the audit events of action in the database at url
// (oldest first) and the session user a connection there has.
func auditEvents(t *testing.T, url string, action audit.Action) ([]audit.Event, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := db.Open(ctx, db.Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	evs, err := audit.List(ctx, d.Pool(), audit.Filter{Action: action, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var who string
	if err := d.Pool().QueryRow(ctx, `SELECT session_user`).Scan(&who); err != nil {
		t.Fatal(err)
	}
	for i, j := 0, len(evs)-1; i < j; i, j = i+1, j-1 {
		evs[i], evs[j] = evs[j], evs[i]
	}
	return evs, who
}

// wantOneAudit checks that action left exactly one event, about subject,
// naming the database session rather than the $USER the operator claims.
func wantOneAudit(t *testing.T, url string, action audit.Action, subject string) audit.Event {
	t.Helper()
	evs, who := auditEvents(t, url, action)
	if len(evs) != 1 {
		t.Fatalf("%s: %d audit events, want 1: %+v", action, len(evs), evs)
	}
	e := evs[0]
	if e.Subject != subject || e.DBUser != who || e.DBUser == "mallory" || !strings.Contains(e.OSUser, "@") {
		t.Errorf("%s event %+v; want subject %q, db_user %q (the session), os_user user@host", action, e, subject, who)
	}
	return e
}

// Each override change and a penalty clear leave one audit event with the
// session's identity; audit list shows them, filtered by action and time.
func TestAuditTrail(t *testing.T) {
	a := newAdmin(t)
	t.Setenv("USER", "mallory")
	id := strings.TrimSpace(a.ok("override", "set", "--limit", "NewOrdersPerAccount", "--key", "acct-9", "--count", "5", "--period", "1h", "--created-by", "mallory", "--quiet"))
	e := wantOneAudit(t, a.url, audit.OverrideCreate, id)
	if e.Detail["actor"] != "mallory" || e.Detail["count"] != "5" || e.Detail["version"] != "1" {
		t.Errorf("create detail %v; want the claimed actor beside the session, count 5, version 1", e.Detail)
	}
	a.ok("override", "set", "--id", id, "--expect-version", "1", "--count", "6")
	if e := wantOneAudit(t, a.url, audit.OverrideUpdate, id); e.Detail["count"] != "6" || e.Detail["version"] != "2" {
		t.Errorf("update detail %v", e.Detail)
	}
	a.ok("override", "disable", id)
	if e := wantOneAudit(t, a.url, audit.OverrideDisable, id); e.Detail["enabled"] != "false" {
		t.Errorf("disable detail %v", e.Detail)
	}
	a.ok("override", "delete", id)
	wantOneAudit(t, a.url, audit.OverrideDelete, id)

	// A penalty cleared is audited; clearing one that is not there is not.
	d, err := db.Open(context.Background(), db.Config{URL: a.url})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	key := "letsencrypt:NewOrdersPerAccount:acct-9"
	if _, err := d.Pool().Exec(context.Background(), `INSERT INTO ratelimit_buckets (bucket_key, tat_ns, penalty_until_ns) VALUES ($1, 0, $2)`,
		key, time.Now().Add(time.Hour).UnixNano()); err != nil {
		t.Fatal(err)
	}
	a.ok("penalty", "clear", key)
	a.ok("penalty", "clear", key)
	wantOneAudit(t, a.url, audit.PenaltyClear, key)

	// audit list: every event, one action, none after now, the table.
	var all []auditJSONEvent
	a.json(&all, "audit", "list")
	if len(all) != 5 || all[0].Action != string(audit.PenaltyClear) || all[4].Action != string(audit.OverrideCreate) {
		t.Fatalf("audit list --json: %+v; want the 5 events, newest first", all)
	}
	var one []auditJSONEvent
	a.json(&one, "audit", "list", "--action", "override_update")
	if len(one) != 1 || one[0].Subject != id || one[0].DBUser == "" {
		t.Errorf("audit list --action override_update: %+v", one)
	}
	a.json(&one, "audit", "list", "--since", "+1h")
	if len(one) != 0 {
		t.Errorf("audit list --since +1h: %+v", one)
	}
	a.json(&one, "audit", "list", "--since", "-1h", "--action", "penalty_clear")
	if len(one) != 1 {
		t.Errorf("audit list --since -1h --action penalty_clear: %+v", one)
	}
	if out := a.ok("audit", "list"); !strings.Contains(out, "WHO") || !strings.Contains(out, "override_delete") || !strings.Contains(out, all[0].DBUser) {
		t.Errorf("audit list table:\n%s", out)
	}
	a.fails(exitUsage, []string{"--action", "key_import"}, "audit", "list", "--action", "key_import")
	a.fails(exitUsage, []string{"--since"}, "audit", "list", "--since", "yesterday")
}
