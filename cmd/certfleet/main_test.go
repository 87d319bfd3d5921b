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
