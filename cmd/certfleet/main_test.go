package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/certfleet/certfleet/testenv"
)

func TestRunUsageErrors(t *testing.T) {
	t.Setenv("CERTFLEET_DATABASE_URL", "")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, exitUsage, "usage: certfleet"},
		{[]string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{[]string{"migrate"}, exitUsage, "set --database-url or CERTFLEET_DATABASE_URL"},
		{[]string{"migrate", "--bogus"}, exitUsage, "flag provided but not defined"},
		{[]string{"help"}, exitOK, "commands:"},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), tc.args, &out, &errb)
		if code != tc.code || !strings.Contains(out.String()+errb.String(), tc.want) {
			t.Errorf("%v: code %d, output %q; want code %d mentioning %q", tc.args, code, out.String()+errb.String(), tc.code, tc.want)
		}
	}
}

func TestMigrateCommand(t *testing.T) {
	url := testenv.FreshDatabase(t)
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"migrate", "--database-url", url}, &out, &errb); code != exitOK {
		t.Fatalf("code %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "applied migration 0001") {
		t.Fatalf("output %q", out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"migrate", "--database-url", url}, &out, &errb); code != exitOK || !strings.Contains(out.String(), "up to date") {
		t.Fatalf("second run: code %d, output %q", code, out.String())
	}
	if code := run(context.Background(), []string{"migrate", "--database-url", "postgres://nobody@127.0.0.1:1/x?sslmode=disable&connect_timeout=2"}, &out, &errb); code != exitError {
		t.Fatalf("unreachable database: code %d, want %d", code, exitError)
	}
}

// -h and --help on every command and subcommand print the usage once, to
// stdout, and exit 0, before anything is checked or connected to.
func TestHelpExitsZero(t *testing.T) {
	t.Setenv("CERTFLEET_DATABASE_URL", "")
	t.Setenv("CERTFLEET_KAFKA_BROKERS", "")
	commands := [][]string{
		{}, {"migrate"}, {"request"}, {"export"}, {"manage"}, {"unmanage"}, {"import"},
		{"override"}, {"override", "set"}, {"override", "get"}, {"override", "list"}, {"override", "disable"}, {"override", "delete"},
		{"bucket"}, {"bucket", "inspect"}, {"penalty"}, {"penalty", "list"}, {"penalty", "clear"}, {"ca"}, {"ca", "status"}, {"ca", "reset"},
		{"dlq"}, {"dlq", "list"}, {"dlq", "replay"}, {"keys"}, {"keys", "generate"}, {"topics"}, {"topics", "create"},
	}
	for _, cmd := range commands {
		for _, h := range []string{"-h", "--help", "-help"} {
			args := append(append([]string{}, cmd...), h)
			var out, errb bytes.Buffer
			code := run(context.Background(), args, &out, &errb)
			if code != exitOK || errb.Len() != 0 || strings.Count(strings.ToLower(out.String()), "usage: certfleet") != 1 {
				t.Errorf("%v: code %d, stderr %q, stdout %q; want code 0 and the usage once on stdout", args, code, errb.String(), out.String())
			}
		}
	}
}

// Flag errors of request are usage errors (exit status 2) that name the
// flag, checked before Kafka is needed.
func TestRequestFlagValidation(t *testing.T) {
	t.Setenv("CERTFLEET_KAFKA_BROKERS", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"request"}, "--san is required"},
		{[]string{"request", "--tenant", "t"}, "--san is required"},
		{[]string{"request", "--san", "a.example"}, "--tenant is required"},
		{[]string{"request", "--san", "a.example", "--tenant", "t", "--wait", "-5s"}, "--wait -5s: want a positive duration"},
		{[]string{"request", "--san", "a.example", "--tenant", "t", "--wait", "soon"}, `invalid value "soon" for flag -wait`},
		{[]string{"request", "--san", "exa mple.com", "--tenant", "t"}, "--san"},
		{[]string{"request", "--san", "a.example", "--tenant", "t", "extra"}, `unexpected argument "extra"`},
		{[]string{"request", "--san", "a.example", "--tenant", "t"}, "no Kafka brokers"},
		{[]string{"dlq", "list", "--json", "--quiet"}, "exclude each other"},
		{[]string{"dlq", "replay"}, "--all or --record"},
		{[]string{"dlq", "replay", "--record", "x"}, "PARTITION:OFFSET"},
		{[]string{"dlq", "replay", "--all", "--json"}, "flag provided but not defined: -json"},
		{[]string{"dlq"}, "missing command"},
		{[]string{"dlq", "show"}, `unknown command "show"`},
		{[]string{"keys"}, "missing command"},
		{[]string{"topics"}, "missing command"},
		{[]string{"topics", "delete"}, `unknown command "delete"`},
		{[]string{"topics", "create", "--replication-factor", "1", "--min-insync-replicas", "2"}, "min.insync.replicas 2"},
		{[]string{"topics", "create", "--replication-factor", "1", "--min-insync-replicas", "1"}, "no Kafka brokers"},
		{[]string{"keys", "rotate"}, `unknown command "rotate"`},
		{[]string{"keys", "generate", "-id", "bad id"}, "-id"},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), tc.args, &out, &errb)
		if code != exitUsage || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: code %d, stderr %q; want code %d mentioning %q", tc.args, code, errb.String(), exitUsage, tc.want)
		}
		if strings.Count(errb.String(), "certfleet: ") != 1 {
			t.Errorf("%v: want one error line:\n%s", tc.args, errb.String())
		}
	}
}
