package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/certfleet/certfleet/delivery"
	"github.com/certfleet/certfleet/internal/secretfile"
	"github.com/certfleet/certfleet/testenv"
)

func TestRecipientHelpAndUsage(t *testing.T) {
	t.Setenv("CERTFLEET_DATABASE_URL", "")
	t.Setenv("CERTFLEET_KAFKA_BROKERS", "")
	for _, cmd := range [][]string{{"recipient"}, {"recipient", "keygen"}, {"recipient", "add"}, {"recipient", "list"}, {"recipient", "rotate"},
		{"recipient", "remove"}, {"recipient", "history"}, {"agent"}} {
		for _, h := range []string{"-h", "--help"} {
			var out, errb bytes.Buffer
			args := append(append([]string{}, cmd...), h)
			if code := run(context.Background(), args, &out, &errb); code != exitOK || errb.Len() != 0 || strings.Count(strings.ToLower(out.String()), "usage: certfleet") != 1 {
				t.Errorf("%v: code %d, stderr %q, stdout %q", args, code, errb.String(), out.String())
			}
		}
	}
	dir := t.TempDir()
	pub := filepath.Join(dir, "k.pub")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"recipient"}, "missing command"},
		{[]string{"recipient", "grant"}, `unknown command "grant"`},
		{[]string{"recipient", "keygen", "--key", filepath.Join(dir, "k.key")}, "--key and --public-key are required"},
		{[]string{"recipient", "add", "edge"}, "--public-key is required"},
		{[]string{"recipient", "add"}, "one recipient NAME"},
		{[]string{"agent", "--dir", dir}, "--recipient-key and --dir are required"},
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), tc.args, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: code %d, stderr %q; want %q", tc.args, code, errb.String(), tc.want)
		}
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"recipient", "keygen", "--key", filepath.Join(dir, "k.key"), "--public-key", pub}, &out, &errb); code != exitOK {
		t.Fatalf("keygen: %d %s", code, errb.String())
	}
	if err := secretfile.Check(filepath.Join(dir, "k.key")); err != nil {
		t.Errorf("the private key file: %v", err)
	}
	if strings.Contains(out.String(), "PRIVATE KEY") {
		t.Error("keygen printed the private key")
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"recipient", "keygen", "--key", filepath.Join(dir, "k.key"), "--public-key", filepath.Join(dir, "k2.pub")}, "file exists"},
		{[]string{"recipient", "add", "edge", "--public-key", filepath.Join(dir, "k.key"), "--tenants", "t"}, "this is a private key"},
		{[]string{"recipient", "add", "edge", "--public-key", pub}, "--tenants/--sans-pattern"},
		{[]string{"recipient", "add", "edge", "--public-key", pub, "--sans-pattern", "*.com"}, "--sans-pattern"},
		{[]string{"recipient", "add", "Edge!", "--public-key", pub, "--tenants", "t"}, "NAME"},
		{[]string{"agent", "--recipient-key", pub, "--dir", dir}, "must not be accessible"},
	} {
		out.Reset()
		errb.Reset()
		if tc.args[0] == "agent" {
			_ = os.Chmod(pub, 0o644)
		}
		if code := run(context.Background(), tc.args, &out, &errb); code == exitOK || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: code %d, stderr %q; want %q", tc.args, code, errb.String(), tc.want)
		}
	}
}

// The recipient commands against the database: add, list, rotate, remove
// and history, each change audited with its actor, only public keys stored.
func TestRecipientCommands(t *testing.T) {
	testenv.Require(t)
	url := testenv.FreshDatabase(t)
	t.Setenv("CERTFLEET_DATABASE_URL", url)
	ctx := context.Background()
	var out, errb bytes.Buffer
	cli := func(want int, args ...string) string {
		t.Helper()
		out.Reset()
		errb.Reset()
		if code := run(ctx, args, &out, &errb); code != want {
			t.Fatalf("%v: code %d, want %d; stdout %q, stderr %q", args, code, want, out.String(), errb.String())
		}
		return out.String() + errb.String()
	}
	cli(exitOK, "migrate")
	dir := t.TempDir()
	key := func(name string) (string, string) {
		k, p := filepath.Join(dir, name+".key"), filepath.Join(dir, name+".pub")
		cli(exitOK, "recipient", "keygen", "--key", k, "--public-key", p)
		return k, p
	}
	_, pub1 := key("one")
	_, pub2 := key("two")
	if got := cli(exitOK, "recipient", "add", "edge-eu", "--public-key", pub1, "--tenants", "eu,eu2", "--sans-pattern", "*.Example.eu", "--actor", "alice"); !strings.Contains(got, "added recipient edge-eu") {
		t.Errorf("add: %s", got)
	}
	if got := cli(exitError, "recipient", "add", "edge-eu", "--public-key", pub2, "--tenants", "eu"); !strings.Contains(got, "exists") {
		t.Errorf("second add: %s", got)
	}
	cli(exitOK, "recipient", "rotate", "edge-eu", "--public-key", pub2, "--actor", "bob")
	if got := cli(exitError, "recipient", "rotate", "nobody", "--public-key", pub2); !strings.Contains(got, "no such recipient") {
		t.Errorf("rotate unknown: %s", got)
	}
	cli(exitOK, "recipient", "list", "--json")
	var listed []recipientJSON
	if err := json.Unmarshal(out.Bytes(), &listed); err != nil || len(listed) != 1 || listed[0].Version != 2 ||
		strings.Join(listed[0].SANsPatterns, ",") != "*.example.eu" || strings.Join(listed[0].Tenants, ",") != "eu,eu2" {
		t.Fatalf("list --json: %s (%v)", out.String(), err)
	}
	if got := cli(exitOK, "recipient", "list"); !strings.Contains(got, "edge-eu") || !strings.Contains(got, "being delivered") {
		t.Errorf("list: %s", got)
	}
	cli(exitOK, "recipient", "remove", "edge-eu", "--actor", "carol")
	if got := cli(exitOK, "recipient", "list"); !strings.Contains(got, "no recipients") {
		t.Errorf("list after remove: %s", got)
	}
	cli(exitOK, "recipient", "history", "edge-eu", "--json")
	var h []delivery.AuditEntry
	if err := json.Unmarshal(out.Bytes(), &h); err != nil || len(h) != 3 {
		t.Fatalf("history: %s (%v)", out.String(), err)
	}
	for i, want := range []string{"add/alice", "rotate/bob", "remove/carol"} {
		if got := h[i].Action + "/" + h[i].Actor; got != want {
			t.Errorf("history[%d] = %s, want %s", i, got, want)
		}
	}
	if got := cli(exitError, "recipient", "history", "never"); !strings.Contains(got, "never added") {
		t.Errorf("history of an unknown name: %s", got)
	}
}
