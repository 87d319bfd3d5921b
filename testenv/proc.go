package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// exits records how each process this program started ended, by pid, so an
// error about a service that died during start-up can say how it died
// (exit status or signal) even when it left nothing in its log.
var exits sync.Map // int -> string

// proc is one long-running process started by testenv and tracked by a pid
// file. The pid file holds the pid and a marker string that must appear in
// the process's command line, so a pid reused by an unrelated process after a
// crash is never signalled.
type proc struct {
	name   string         // e.g. "kafka"; names the pid and log files
	dir    string         // state directory
	marker string         // substring of the command line that identifies our process
	signal syscall.Signal // graceful stop signal (postgres wants SIGINT for a fast shutdown)
	// fingerprint, optional, stands for what the process was started with
	// beyond its marker (BIND: its configuration; Pebble: its resolver); a
	// process started with another one is stale.
	fingerprint string
}

// readPidFile returns the pid file's pid line, marker and fingerprint.
func (p proc) readPidFile() (pidStr, marker, fingerprint string, err error) {
	data, err := os.ReadFile(p.pidFile())
	if err != nil {
		return "", "", "", err
	}
	lines := strings.SplitN(strings.TrimSpace(string(data)), "\n", 3)
	lines = append(lines, "", "")
	return lines[0], lines[1], lines[2], nil
}

func (p proc) pidFile() string { return filepath.Join(p.dir, p.name+".pid") }

// LogFile is where the process's stdout and stderr go.
func (p proc) logFile() string { return filepath.Join(p.dir, p.name+".log") }

// pid returns the pid of our live process, or 0 when there is none (no pid
// file, a dead process, or a pid now used by something else).
func (p proc) pid() int {
	pidStr, marker, _, err := p.readPidFile()
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 {
		return 0
	}
	// A process in the middle of execve shows an empty command line for a
	// moment: the kernel lets a vfork parent (Go's exec) go on before it has
	// set up the new program's arguments. Reading it then once cost a CI run
	// ("pebble exited while waiting for readiness", empty log, Pebble alive),
	// so an empty command line is read again for up to 100 ms. (Kernel
	// threads have an empty one for good; they are never ours.)
	var cmdline []byte
	for try := 0; ; try++ {
		cmdline, err = os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			return 0
		}
		if len(cmdline) > 0 || try == 50 {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	if !strings.Contains(string(cmdline), marker) {
		return 0
	}
	// A zombie (exited, not yet reaped) still has a cmdline; check its state.
	if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			return 0
		}
	}
	return pid
}

// stale reports whether the running process was started as something other
// than p describes now (its pid file holds another marker, for Pebble a
// binary of another version or patch, or another fingerprint).
func (p proc) stale() bool {
	_, marker, fingerprint, err := p.readPidFile()
	if err != nil {
		return false
	}
	return marker != p.marker || fingerprint != p.fingerprint
}

// start launches cmd in its own session (so it outlives `testenv up` and can
// be stopped as a group), appends its output to the log file and writes the
// pid file.
func (p proc) start(cmd *exec.Cmd) error {
	if !strings.Contains(strings.Join(cmd.Args, "\x00"), p.marker) {
		return fmt.Errorf("testenv: %s: marker %q not in its command line", p.name, p.marker)
	}
	logf, err := os.OpenFile(p.logFile(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("testenv: %s: opening log: %w", p.name, err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("testenv: starting %s (%s): %w", p.name, cmd.Path, err)
	}
	pid := cmd.Process.Pid
	// Reap the child if it dies while `testenv up` still runs, so pid()
	// does not see a zombie, and remember how it ended; after we exit,
	// init adopts it.
	go func() {
		err := cmd.Wait()
		how := "exited"
		if cmd.ProcessState != nil {
			how = cmd.ProcessState.String() // "exit status 1", "signal: killed"
		} else if err != nil {
			how = err.Error()
		}
		exits.Store(pid, how)
	}()
	if err := os.WriteFile(p.pidFile(), []byte(fmt.Sprintf("%d\n%s\n%s\n", pid, p.marker, p.fingerprint)), 0o644); err != nil {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		return fmt.Errorf("testenv: %s: writing pid file: %w", p.name, err)
	}
	return nil
}

// stop signals our process group, waits up to grace for it to exit, then
// kills it, and removes the pid file. Stopping a process that is not running
// is not an error.
func (p proc) stop(grace time.Duration) error {
	defer os.Remove(p.pidFile())
	pid := p.pid()
	if pid == 0 {
		return nil
	}
	sig := p.signal
	if sig == 0 {
		sig = syscall.SIGTERM
	}
	_ = syscall.Kill(-pid, sig)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if p.pid() == 0 {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	for i := 0; i < 50 && p.pid() != 0; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if p.pid() != 0 {
		return fmt.Errorf("testenv: %s (pid %d) did not exit after SIGKILL", p.name, pid)
	}
	return nil
}

// logTail returns the last lines of the process log, for error messages.
func (p proc) logTail(n int) string {
	data, _ := os.ReadFile(p.logFile())
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// exitedError says a process died while testenv waited for it to be ready.
type exitedError struct {
	name, what, how, log, tail string
	last                       error
}

func (e *exitedError) Error() string {
	return fmt.Sprintf("testenv: %s exited (%s) while waiting for %s: %v\n--- last lines of %s ---\n%s", e.name, e.how, e.what, e.last, e.log, e.tail)
}

// howExited describes how the process named in the pid file ended: the
// status its parent saw when that parent is this program, else "not running".
func (p proc) howExited() string {
	pidStr, _, _, _ := p.readPidFile()
	pid, err := strconv.Atoi(pidStr)
	if err != nil {
		return "no pid file"
	}
	// The reaper goroutine may still be about to record it.
	for i := 0; i < 20; i++ {
		if how, ok := exits.Load(pid); ok {
			return fmt.Sprintf("pid %d, %s", pid, how)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Sprintf("pid %d, not running", pid)
}

// waitFor polls check until it succeeds, the process dies, or ctx ends. A
// dead process gives an *exitedError.
func (p proc) waitFor(ctx context.Context, what string, check func(context.Context) error) error {
	var last error
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		last = check(cctx)
		cancel()
		if last == nil {
			return nil
		}
		if p.pid() == 0 {
			return &exitedError{name: p.name, what: what, how: p.howExited(), last: last, log: p.logFile(), tail: p.logTail(20)}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testenv: %s not ready (%s): %v\n--- last lines of %s ---\n%s", p.name, what, last, p.logFile(), p.logTail(20))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// portFree fails when something already listens on addr, naming the port:
// a clearer error than the service's own bind failure in its log.
func portFree(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
	if err == nil {
		c.Close()
		return fmt.Errorf("testenv: %s is already in use by a process testenv did not start; stop it (ss -ltnp 'sport = :%s')", addr, addr[strings.LastIndexByte(addr, ':')+1:])
	}
	return nil
}
