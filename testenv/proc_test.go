package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// A process that dies while testenv waits for it gives an *exitedError that
// says how it ended, even when its log is empty.
func TestWaitForSaysHowTheProcessExited(t *testing.T) {
	dir := t.TempDir()
	marker := "certfleet-exit-test-" + filepath.Base(dir)
	p := proc{name: "quitter", dir: dir, marker: marker}
	if err := p.start(exec.Command("sh", "-c", "exit 3", marker)); err != nil {
		t.Fatal(err)
	}
	never := func(context.Context) error { return errors.New("connection refused") }
	err := p.waitFor(withTimeout(context.Background(), 10*time.Second), "readiness", never)
	var exited *exitedError
	if !errors.As(err, &exited) {
		t.Fatalf("waitFor = %v, want an *exitedError", err)
	}
	if !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("error does not say how it ended and what the check saw: %v", err)
	}
}

// A service whose process exits during start-up is started again, up to
// three attempts; one that is merely slow is not retried.
func TestServiceUpRetriesAProcessThatExitsDuringStartUp(t *testing.T) {
	for _, tc := range []struct {
		name       string
		failures   int // attempts whose process exits at once
		wantErr    bool
		wantStarts int
	}{
		{"exits once then runs", 1, false, 2},
		{"exits twice then runs", 2, false, 3},
		{"exits every time", 5, true, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			marker := "certfleet-retry-test-" + filepath.Base(dir)
			p := proc{name: "flaky", dir: dir, marker: marker}
			starts := 0
			s := &service{
				proc:    p,
				install: func(context.Context) error { return nil },
				start: func(context.Context) error {
					starts++
					script := "sleep 60"
					if starts <= tc.failures {
						script = "exit 1"
					}
					return p.start(exec.Command("sh", "-c", script, marker))
				},
				ready: func(context.Context) error {
					if p.pid() == 0 {
						return errors.New("not listening")
					}
					if starts <= tc.failures {
						return errors.New("not yet")
					}
					return nil
				},
			}
			t.Cleanup(func() { _ = p.stop(5 * time.Second) })
			var out strings.Builder
			err := s.up(context.Background(), &out)
			if (err != nil) != tc.wantErr {
				t.Fatalf("up = %v, want error %v\n%s", err, tc.wantErr, out.String())
			}
			if starts != tc.wantStarts {
				t.Fatalf("started %d times, want %d\n%s", starts, tc.wantStarts, out.String())
			}
			if tc.failures > 0 && !strings.Contains(out.String(), "exited during start-up (pid ") {
				t.Fatalf("progress does not report the retry:\n%s", out.String())
			}
		})
	}
}

// TestMain lets the test binary stand in for a service: with
// CERTFLEET_PROC_TEST_SLEEP=1 it only sleeps (a large Go binary, like Pebble,
// so its execve takes as long).
func TestMain(m *testing.M) {
	if os.Getenv("CERTFLEET_PROC_TEST_SLEEP") == "1" {
		time.Sleep(time.Minute)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A process found right after it was started is ours, even while the kernel
// is still in its execve and shows an empty command line (seen in CI: testenv
// took a starting Pebble for one that had exited).
func TestProcFoundWhileItExecs(t *testing.T) {
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const starts = 200
	lost := 0
	for batch := 0; batch < starts/20; batch++ {
		var started []proc
		for i := 0; i < 20; i++ {
			marker := fmt.Sprintf("certfleet-exec-test-%d-%d", batch, i)
			p := proc{name: marker, dir: dir, marker: marker}
			cmd := exec.Command(self, "-test.run=^$", marker)
			cmd.Env = append(os.Environ(), "CERTFLEET_PROC_TEST_SLEEP=1")
			if err := p.start(cmd); err != nil {
				t.Fatal(err)
			}
			if p.pid() == 0 {
				lost++
			}
			started = append(started, p)
		}
		for _, p := range started {
			p.signal = syscall.SIGKILL
			if err := p.stop(5 * time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d processes were taken for dead right after they started", lost, starts)
	}
}
