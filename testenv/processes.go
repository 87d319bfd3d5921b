package testenv

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Helpers for tests (and the demo) that run real processes.

// LogBuffer collects a child process's output for a test: the process's
// output copier writes while the test reads, so every access is locked.
type LogBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Tail returns the last n lines written so far.
func (l *LogBuffer) Tail(n int) string { return Tail(l.String(), n) }

// Tail returns the last n lines of s, for failure messages.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// FreeAddr returns host:port with a port nothing listened on a moment ago,
// for a child process's listener.
func FreeAddr(t testing.TB, host string) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("testenv: finding a free port on %s: %v", host, err)
	}
	defer l.Close()
	return l.Addr().String()
}

// BuildCommand compiles the main package pkg (an import path, or a path
// relative to the caller's directory) to dir/name and returns that path,
// for tests and the demo, which run real processes. It uses the go on PATH, else
// /usr/local/go/bin/go.
func BuildCommand(ctx context.Context, dir, name, pkg string) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	bin := filepath.Join(dir, name)
	if out, err := exec.CommandContext(ctx, goBin, "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		return "", fmt.Errorf("testenv: building %s: %w\n%s", pkg, err, out)
	}
	return bin, nil
}
