package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// A process started through proc is found by its pid file, survives as its
// own session, and stop ends it and removes the pid file.
func TestProcStartStop(t *testing.T) {
	dir := t.TempDir()
	marker := "certfleet-proc-test-" + filepath.Base(dir)
	p := proc{name: "sleeper", dir: dir, marker: marker}
	if err := p.start(exec.Command("sh", "-c", "sleep 60; true", marker)); err != nil {
		t.Fatal(err)
	}
	pid := p.pid()
	if pid == 0 {
		t.Fatal("started process not found by its pid file")
	}
	if err := p.stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if p.pid() != 0 {
		t.Fatal("process still running after stop")
	}
	if _, err := os.Stat(p.pidFile()); !os.IsNotExist(err) {
		t.Fatalf("pid file left behind: %v", err)
	}
	if err := p.stop(time.Second); err != nil {
		t.Fatalf("stopping a stopped process: %v", err)
	}
}

// A pid file whose pid now belongs to another program (a crash, then pid
// reuse) is not ours: pid() says 0 and stop never signals that program.
func TestProcIgnoresReusedPid(t *testing.T) {
	dir := t.TempDir()
	other := exec.Command("sleep", "60")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer other.Process.Kill()
	p := proc{name: "kafka", dir: dir, marker: "server.properties"}
	if err := os.WriteFile(p.pidFile(), []byte(fmt.Sprintf("%d\nserver.properties\n", other.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := p.pid(); got != 0 {
		t.Fatalf("pid() = %d for an unrelated process", got)
	}
	if err := p.stop(time.Second); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(other.Process.Pid, 0); err != nil {
		t.Fatalf("unrelated process is gone: %v", err)
	}
}

func TestPortFree(t *testing.T) {
	if err := portFree("127.0.0.1:1"); err != nil {
		t.Fatalf("closed port reported busy: %v", err)
	}
}
