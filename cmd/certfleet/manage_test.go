package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/certfleet/certfleet/events"
)

func TestManageCommands(t *testing.T) {
	a := newAdmin(t)
	const ca = "https://ca.example.net/dir"
	id := events.Identity([]string{"a.example.com", "b.example.com"})
	out := a.ok("manage", "--san", "B.example.com", "--san", "a.example.com", "--tenant", "acme", "--ca", ca)
	if !strings.Contains(out, "managed "+id) || !strings.Contains(out, "due now") {
		t.Errorf("manage: %s", out)
	}
	out = a.ok("manage", "--san", "a.example.com,b.example.com", "--ca", ca)
	if !strings.Contains(out, "already managed "+id) {
		t.Errorf("re-manage: %s", out)
	}
	a.fails(exitUsage, []string{"--san"}, "manage", "--ca", ca)
	a.fails(exitUsage, []string{"sans[0]"}, "manage", "--san", "bad_name.example.com", "--ca", ca)
	a.fails(exitUsage, []string{"--ca"}, "manage", "--san", "a.example.com", "--ca", "http://x.example/dir")
	a.fails(exitUsage, []string{"--tenant"}, "manage", "--san", "a.example.com", "--ca", ca, "--tenant", "a b")

	dir := t.TempDir()
	file := filepath.Join(dir, "fleet.txt")
	if err := os.WriteFile(file, []byte("# fleet\nc.example.com www.c.example.com\nd.example.com\n\na.example.com,b.example.com\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out = a.ok("import", file, "--ca", ca, "--tenant", "bulk")
	if !strings.Contains(out, "read 3 SAN sets: 2 added (due now), 1 already managed") {
		t.Errorf("import: %s", out)
	}
	bad := filepath.Join(dir, "bad.txt")
	os.WriteFile(bad, []byte("e.example.com\ncom\n"), 0o600)
	a.fails(exitUsage, []string{"line 2", "nothing was imported"}, "import", bad, "--ca", ca)
	a.fails(exitUsage, []string{"FILE"}, "import", "--ca", ca)

	out = a.ok("unmanage", "--san", "b.example.com,a.example.com")
	if !strings.Contains(out, "unmanaged 1 of 1") {
		t.Errorf("unmanage: %s", out)
	}
	out = a.ok("unmanage", "--identity", id)
	if !strings.Contains(out, "unmanaged 0 of 1") {
		t.Errorf("unmanage again: %s", out)
	}
	a.fails(exitUsage, []string{"--identity"}, "unmanage", "--identity", "xyz")
}
