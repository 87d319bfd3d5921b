package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/testenv"
)

// admin is a fresh, migrated database and a way to run commands against it.
type admin struct {
	t   *testing.T
	url string
}

func newAdmin(t *testing.T) admin {
	t.Helper()
	a := admin{t: t, url: testenv.FreshDatabase(t)}
	if code, _, errs := a.run("migrate"); code != exitOK {
		t.Fatalf("migrate: code %d: %s", code, errs)
	}
	t.Setenv("USER", "")
	t.Setenv("LOGNAME", "")
	return a
}

// run runs certfleet with args plus --database-url.
func (a admin) run(args ...string) (code int, stdout, stderr string) {
	a.t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), append(args, "--database-url", a.url), &out, &errb)
	return code, out.String(), errb.String()
}

// ok runs a command that must succeed and returns its output.
func (a admin) ok(args ...string) string {
	a.t.Helper()
	code, out, errs := a.run(args...)
	if code != exitOK {
		a.t.Fatalf("%v: code %d\nstdout: %s\nstderr: %s", args, code, out, errs)
	}
	return out
}

func (a admin) json(v any, args ...string) {
	a.t.Helper()
	out := a.ok(append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		a.t.Fatalf("%v --json: %v\n%s", args, err, out)
	}
}

// fails runs a command that must exit with code and mention every want.
func (a admin) fails(code int, want []string, args ...string) string {
	a.t.Helper()
	got, out, errs := a.run(args...)
	if got != code {
		a.t.Fatalf("%v: code %d, want %d\nstdout: %s\nstderr: %s", args, got, code, out, errs)
	}
	for _, w := range want {
		if !strings.Contains(errs, w) {
			a.t.Errorf("%v: stderr %q does not mention %q", args, errs, w)
		}
	}
	return errs
}

func TestOverrideCommands(t *testing.T) {
	a := newAdmin(t)

	// set (create) -> get -> list
	var created overrideJSON
	a.json(&created, "override", "set", "--limit", "NewOrdersPerAccount", "--key", "acct-42", "--count", "600", "--period", "3h",
		"--valid-until", "+7d", "--comment", "ticket OPS-1: migration week", "--created-by", "alice")
	if created.ID == "" || created.Version != 1 || created.Count != 600 || created.Burst != 600 || created.State != "active" ||
		created.ValidUntil == nil || created.CreatedBy != "alice" || created.Period != "3h0m0s" {
		t.Fatalf("created %+v", created)
	}
	out := a.ok("override", "get", created.ID)
	for _, want := range []string{created.ID, "NewOrdersPerAccount", "acct-42", "600/3h", "ticket OPS-1", "history:", "create", "alice"} {
		if !strings.Contains(out, want) {
			t.Errorf("get output lacks %q:\n%s", want, out)
		}
	}
	var got overrideJSON
	a.json(&got, "override", "get", created.ID)
	if got.ID != created.ID || len(got.History) != 1 || got.History[0].Action != "create" || got.History[0].Actor != "alice" {
		t.Errorf("get --json %+v", got)
	}
	// A second, wildcard override, created with a human period and a future start.
	var wild overrideJSON
	a.json(&wild, "override", "set", "--limit", "CertificatesPerDomain", "--key", "*.example.com", "--count", "100", "--burst", "20",
		"--period", "7d", "--valid-from", "+1h", "--created-by", "bob")
	if wild.State != "scheduled" || wild.Period != "168h0m0s" || wild.Burst != 20 {
		t.Errorf("wildcard %+v", wild)
	}

	out = a.ok("override", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(lines[0], "VALID UNTIL") {
		t.Fatalf("list table:\n%s", out)
	}
	// Columns are aligned: every row has its key where the header has KEY.
	col := strings.Index(lines[0], "KEY")
	for _, l := range lines[1:] {
		if !strings.HasPrefix(l[col:], "*.example.com") && !strings.HasPrefix(l[col:], "acct-42") {
			t.Errorf("misaligned row %q (KEY at column %d)", l, col)
		}
	}
	var list []overrideJSON
	a.json(&list, "override", "list")
	if len(list) != 2 {
		t.Fatalf("list --json: %+v", list)
	}
	a.json(&list, "override", "list", "--limit", "CertificatesPerDomain")
	if len(list) != 1 || list[0].ID != wild.ID {
		t.Fatalf("list --limit: %+v", list)
	}

	// Update with the current version, then with the now stale one.
	var upd overrideJSON
	a.json(&upd, "override", "set", "--id", created.ID, "--expect-version", "1", "--count", "900", "--created-by", "carol")
	// The burst had its default (the count), so it follows the new count.
	if upd.Version != 2 || upd.Count != 900 || upd.Burst != 900 || upd.Comment != created.Comment || upd.CreatedBy != "alice" || upd.ValidUntil == nil {
		t.Fatalf("update changed more or less than --count (and the burst with it): %+v", upd)
	}
	errs := a.fails(exitError, []string{"conflict", "version 2, not 1", "nothing was changed", "override get " + created.ID, "--expect-version 2"},
		"override", "set", "--id", created.ID, "--expect-version", "1", "--count", "1", "--created-by", "mallory")
	t.Logf("stale update: %s", errs)
	a.json(&got, "override", "get", created.ID)
	if got.Count != 900 || got.Version != 2 {
		t.Fatalf("stale update changed the override: %+v", got)
	}
	a.fails(exitUsage, []string{"--expect-version", "override get"}, "override", "set", "--id", created.ID, "--count", "5", "--created-by", "carol")
	a.fails(exitUsage, []string{"cannot change"}, "override", "set", "--id", created.ID, "--expect-version", "2", "--key", "acct-43", "--created-by", "carol")

	// Validation errors name the flag at fault.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--limit", "NoSuchLimit", "--key", "k", "--count", "1", "--period", "1h"}, `unknown limit name "NoSuchLimit"`},
		{[]string{"--limit", "CertificatesPerDomain", "--key", "*.com", "--count", "1", "--period", "1h"}, "invalid --key"},
		{[]string{"--limit", "CertificatesPerDomain", "--key", "example.com", "--count", "-5", "--period", "1h"}, "invalid --count"},
		{[]string{"--limit", "CertificatesPerDomain", "--key", "example.com", "--count", "5", "--period", "1h", "--valid-from", "+2h", "--valid-until", "+1h"}, "invalid --valid-until"},
		{[]string{"--limit", "CertificatesPerDomain", "--key", "example.com", "--count", "5", "--period", "soon"}, "invalid --period"},
		{[]string{"--limit", "CertificatesPerDomain", "--key", "example.com", "--count", "5", "--period", "1h", "--comment", "bad\x1b[31m"}, "invalid --comment"},
		{[]string{"--key", "example.com", "--count", "5", "--period", "1h"}, "--limit is required"},
	} {
		a.fails(exitUsage, []string{tc.want}, append([]string{"override", "set", "--created-by", "alice"}, tc.args...)...)
	}
	// Without --created-by, $USER and $LOGNAME (newAdmin unsets both, as
	// containers do), the creator is the process's login name.
	var anon overrideJSON
	a.json(&anon, "override", "set", "--limit", "CertificatesPerDomain", "--key", "anon.example.com", "--count", "5", "--period", "1h")
	if anon.CreatedBy == "" || anon.CreatedBy != defaultActor() {
		t.Errorf("created_by %q without --created-by, want %q", anon.CreatedBy, defaultActor())
	}
	a.fails(exitUsage, []string{"invalid --created-by", "pass --created-by NAME"}, "override", "set", "--limit", "CertificatesPerDomain", "--key", "example.com", "--count", "5", "--period", "1h", "--created-by", "two words")
	a.ok("override", "delete", anon.ID)

	// disable (version-checked; without --expect-version the current one),
	// then delete.
	a.fails(exitError, []string{"version 2, not 7"}, "override", "disable", created.ID, "--expect-version", "7", "--actor", "dave")
	if out := a.ok("override", "disable", created.ID, "--actor", "dave"); !strings.Contains(out, "disabled override "+created.ID) || !strings.Contains(out, "version 3") {
		t.Errorf("disable output %q", out)
	}
	a.json(&got, "override", "get", created.ID)
	if got.Enabled || got.State != "disabled" || len(got.History) != 3 || got.History[2].Action != "disable" || got.History[2].Actor != "dave" {
		t.Errorf("after disable: %+v", got)
	}
	a.ok("override", "delete", created.ID, "--expect-version", "3", "--actor", "dave")
	// A deleted override's history stays, and get shows it.
	out = a.ok("override", "get", created.ID)
	for _, want := range []string{created.ID, "deleted by dave", "history:", "create", "alice", "update", "carol", "disable", "delete"} {
		if !strings.Contains(out, want) {
			t.Errorf("get of a deleted override lacks %q:\n%s", want, out)
		}
	}
	var gone deletedJSON
	a.json(&gone, "override", "get", created.ID)
	if gone.State != "deleted" || gone.Version != 4 || len(gone.History) != 4 || gone.History[3].Action != "delete" || gone.History[3].Actor != "dave" {
		t.Errorf("get --json of a deleted override: %+v", gone)
	}
	a.fails(exitError, []string{"was deleted", "override get " + created.ID}, "override", "delete", created.ID, "--actor", "dave")
	a.fails(exitError, []string{"not found", "override list"}, "override", "get", "00000000-0000-4000-8000-000000000000")
	a.json(&list, "override", "list")
	if len(list) != 1 || list[0].ID != wild.ID {
		t.Errorf("after delete: %+v", list)
	}
	a.fails(exitUsage, []string{"not an override id"}, "override", "get", "'; DROP TABLE x")
	a.fails(exitUsage, []string{"unknown command"}, "override", "frobnicate")
}

// Raising the count of an override: a burst that had its default follows
// the count; one set apart stays, and the command says so.
func TestOverrideBurstOnUpdate(t *testing.T) {
	a := newAdmin(t)
	var o overrideJSON
	a.json(&o, "override", "set", "--limit", "NewOrdersPerAccount", "--key", "acct-b", "--count", "600", "--period", "3h", "--created-by", "alice")
	for _, tc := range []struct {
		args      []string
		count     int64
		burst     int64
		wantNote  bool
		wantState string
	}{
		{[]string{"--count", "700"}, 700, 700, false, "follows the count"},
		{[]string{"--count", "700", "--burst", "50"}, 700, 50, false, "explicit burst"},
		{[]string{"--count", "800"}, 800, 50, true, "burst set apart stays"},
		{[]string{"--period", "1h"}, 800, 50, false, "count unchanged"},
		{[]string{"--burst", "800"}, 800, 800, false, "burst back to the count"},
		{[]string{"--count", "100"}, 100, 100, false, "lowering follows too"},
	} {
		args := append([]string{"override", "set", "--id", o.ID, "--expect-version", fmt.Sprint(o.Version), "--created-by", "bob", "--json"}, tc.args...)
		code, out, errs := a.run(args...)
		if code != exitOK {
			t.Fatalf("%s: code %d: %s", tc.wantState, code, errs)
		}
		if err := json.Unmarshal([]byte(out), &o); err != nil {
			t.Fatal(err)
		}
		if o.Count != tc.count || o.Burst != tc.burst || strings.Contains(errs, "burst stays") != tc.wantNote {
			t.Errorf("%s (%v): count %d burst %d, stderr %q; want count %d burst %d, note %v", tc.wantState, tc.args, o.Count, o.Burst, errs, tc.count, tc.burst, tc.wantNote)
		}
	}
}

func TestActorFrom(t *testing.T) {
	root := func() (*user.User, error) { return &user.User{Username: "root"}, nil }
	none := func() (*user.User, error) { return nil, errors.New("user: unknown userid 1000") }
	for _, tc := range []struct {
		env     map[string]string
		current func() (*user.User, error)
		want    string
	}{
		{map[string]string{"USER": "alice", "LOGNAME": "bob"}, root, "alice"},
		{map[string]string{"LOGNAME": "bob"}, root, "bob"},
		{map[string]string{"USER": " "}, root, "root"},
		{nil, root, "root"},
		{nil, none, "uid-1000"},
	} {
		if got := actorFrom(func(k string) string { return tc.env[k] }, tc.current, 1000); got != tc.want {
			t.Errorf("env %v: actor %q, want %q", tc.env, got, tc.want)
		}
	}
}

func TestPenaltyAndBucketCommands(t *testing.T) {
	a := newAdmin(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := db.Open(ctx, db.Config{URL: a.url})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	cat := ratelimit.DefaultCatalogue()
	lim := ratelimit.NewLimiter(ratelimit.LimiterConfig{Store: ratelimit.NewDBStore(d), Catalogue: cat})
	txn, err := cat.Transaction(ratelimit.LetsEncryptDirectory, ratelimit.NewOrdersPerAccount, "acct-7")
	if err != nil {
		t.Fatal(err)
	}
	key := txn.Key()

	// An untouched bucket is full.
	var b bucketJSON
	a.json(&b, "bucket", "inspect", "NewOrdersPerAccount", "acct-7")
	if b.Bucket != key || b.Stored || b.Remaining != 300 || b.Source != "default" || !b.AllowedNow {
		t.Fatalf("fresh bucket %+v", b)
	}
	for range 5 {
		if res, err := lim.Spend(ctx, []ratelimit.Transaction{txn}); err != nil || !res.Allowed {
			t.Fatalf("spend: %+v %v", res, err)
		}
	}
	a.json(&b, "bucket", "inspect", "NewOrdersPerAccount", "acct-7")
	if !b.Stored || b.Remaining != 295 || b.TAT == nil || b.PenaltyUntil != nil {
		t.Fatalf("after 5 spends %+v", b)
	}
	// An override for the account is the limit in force. The bucket stores
	// time, not a count: 5 spends at 300/3h took 3 minutes, which is half
	// of one 6-minute interval at 10/1h, so 9 are left.
	var o overrideJSON
	a.json(&o, "override", "set", "--limit", "NewOrdersPerAccount", "--key", "acct-7", "--count", "10", "--period", "1h", "--created-by", "alice")
	a.json(&b, "bucket", "inspect", "NewOrdersPerAccount", "acct-7")
	if b.Source != "override" || b.OverrideID != o.ID || b.Burst != 10 || b.Remaining != 9 {
		t.Fatalf("with override %+v", b)
	}

	// Penalties: none, one, cleared.
	if out := a.ok("penalty", "list"); !strings.Contains(out, "no active penalties") {
		t.Errorf("empty penalty list: %q", out)
	}
	var ps []penaltyJSON
	a.json(&ps, "penalty", "list")
	if ps == nil || len(ps) != 0 {
		t.Errorf("empty penalty list --json: %#v", ps)
	}
	until := time.Now().Add(2 * time.Hour)
	if err := lim.Penalize(ctx, txn, until); err != nil {
		t.Fatal(err)
	}
	out := a.ok("penalty", "list")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], "BUCKET") || !strings.HasPrefix(lines[1], key) {
		t.Fatalf("penalty list:\n%s", out)
	}
	a.json(&ps, "penalty", "list")
	if len(ps) != 1 || ps[0].Bucket != key || ps[0].Until.Sub(until).Abs() > time.Millisecond {
		t.Fatalf("penalty list --json %+v", ps)
	}
	out = a.ok("bucket", "inspect", "NewOrdersPerAccount", "acct-7")
	for _, want := range []string{key, "override " + o.ID, "blocked until", "penalty clear " + key, "no, retry in "} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
	if res, _ := lim.Spend(ctx, []ratelimit.Transaction{txn}); res.Allowed {
		t.Fatal("spend allowed under a penalty")
	}
	if out := a.ok("penalty", "clear", key); !strings.Contains(out, "cleared the penalty on "+key) {
		t.Errorf("clear output %q", out)
	}
	if out := a.ok("penalty", "clear", key); !strings.Contains(out, "no active penalty") {
		t.Errorf("second clear output %q", out)
	}
	a.json(&ps, "penalty", "list")
	if len(ps) != 0 {
		t.Errorf("after clear: %+v", ps)
	}
	if res, err := lim.Spend(ctx, []ratelimit.Transaction{txn}); err != nil || !res.Allowed {
		t.Fatalf("spend after clear: %+v %v", res, err)
	}

	a.fails(exitUsage, []string{"unknown limit name"}, "bucket", "inspect", "Nope", "x")
	a.fails(exitUsage, []string{"takes <limit> <value>"}, "bucket", "inspect", "NewOrdersPerAccount")

	// --ca names the CA as the workers do: a CA the catalogue does not list
	// has Let's Encrypt's limits under its own name.
	pcat, err := ratelimit.DefaultCatalogue().With(ratelimit.CA{ID: "pebble", Directory: "https://127.0.0.1:14000/dir", Limits: ratelimit.LetsEncryptLimits()})
	if err != nil {
		t.Fatal(err)
	}
	plim := ratelimit.NewLimiter(ratelimit.LimiterConfig{Store: ratelimit.NewDBStore(d), Catalogue: pcat})
	pt, err := pcat.Transaction("https://127.0.0.1:14000/dir", ratelimit.NewOrdersPerAccount, "acct-7")
	if err != nil {
		t.Fatal(err)
	}
	if res, err := plim.Spend(ctx, []ratelimit.Transaction{pt}); err != nil || !res.Allowed {
		t.Fatalf("spend at pebble: %+v %v", res, err)
	}
	for _, ca := range []string{"pebble", "pebble=https://127.0.0.1:14000/dir"} {
		a.json(&b, "bucket", "inspect", "NewOrdersPerAccount", "acct-7", "--ca", ca)
		if b.Bucket != "pebble:NewOrdersPerAccount:acct-7" || !b.Stored || b.Source != "override" || b.Remaining != 9 {
			t.Errorf("--ca %s: %+v", ca, b)
		}
	}
	a.json(&b, "bucket", "inspect", "NewOrdersPerAccount", "acct-8", "--ca", "pebble")
	if b.Bucket != "pebble:NewOrdersPerAccount:acct-8" || b.Stored || b.Remaining != 300 || b.Source != "default" {
		t.Errorf("untouched pebble bucket: %+v", b)
	}
	t.Setenv("CERTFLEET_CA", "pebble")
	a.json(&b, "bucket", "inspect", "NewOrdersPerAccount", "acct-8")
	if b.Bucket != "pebble:NewOrdersPerAccount:acct-8" {
		t.Errorf("CERTFLEET_CA=pebble: bucket %s", b.Bucket)
	}
	// A catalogue file naming the directory decides the bucket's name.
	catFile := filepath.Join(t.TempDir(), "limits.json")
	if err := os.WriteFile(catFile, []byte(`{"cas": [{"id": "local", "directory": "https://127.0.0.1:14000/dir",
		"limits": {"NewOrdersPerAccount": {"count": 20, "period": "1h"}, "CertificatesPerDomain": null}}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	a.json(&b, "bucket", "inspect", "NewOrdersPerAccount", "acct-8", "--catalogue", catFile, "--ca", "pebble=https://127.0.0.1:14000/dir")
	if b.Bucket != "local:NewOrdersPerAccount:acct-8" || b.Count != 20 {
		t.Errorf("with a catalogue: %+v", b)
	}
	a.fails(exitUsage, []string{"--ca NAME=URL"}, "bucket", "inspect", "NewOrdersPerAccount", "a", "--catalogue", catFile, "--ca", "pebble")
	a.fails(exitUsage, []string{`--ca "Bad_CA"`}, "bucket", "inspect", "NewOrdersPerAccount", "a", "--ca", "Bad_CA")
	a.fails(exitUsage, []string{"has no limit"}, "bucket", "inspect", "CertificatesPerDomain", "a", "--catalogue", catFile, "--ca", "x=https://127.0.0.1:14000/dir")
}

func TestAdminNeedsDatabaseAndSchema(t *testing.T) {
	t.Setenv("CERTFLEET_DATABASE_URL", "")
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"override", "list"}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "CERTFLEET_DATABASE_URL") {
		t.Errorf("no database: code %d, %q", code, errb.String())
	}
	url := testenv.FreshDatabase(t) // not migrated
	errb.Reset()
	if code := run(context.Background(), []string{"penalty", "list", "--database-url", url}, &out, &errb); code != exitError || !strings.Contains(errb.String(), "certfleet migrate") {
		t.Errorf("unmigrated database: code %d, %q", code, errb.String())
	}
}

func TestFormats(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 850 * time.Millisecond: "850ms", 3 * time.Hour: "3h", 90 * time.Minute: "1h30m", 150 * time.Second: "2m30s",
		7 * 24 * time.Hour: "7d", 7*24*time.Hour + 90*time.Minute: "7d1h30m", 119*time.Minute + 59*time.Second + 999*time.Millisecond: "2h",
	} {
		if got := fmtDuration(d); got != want {
			t.Errorf("fmtDuration(%s) = %q, want %q", d, got, want)
		}
	}
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"now": now, "+2h": now.Add(2 * time.Hour), "-10m": now.Add(-10 * time.Minute), "+7d": now.Add(7 * 24 * time.Hour),
		"2026-06-01T00:00:00Z": time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC),
	} {
		if got, err := parseTime(in, now); err != nil || !got.Equal(want) {
			t.Errorf("parseTime(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "tomorrow", "+", "+7x", "2026-06-01", "+-1d"} {
		if _, err := parseTime(bad, now); err == nil {
			t.Errorf("parseTime(%q) accepted", bad)
		}
	}
}
