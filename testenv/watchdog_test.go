package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// silentListener accepts TCP connections and never answers: a hung service.
func silentListener(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// A service that accepts connections and never answers fails the first check
// within the probe timeout, with a message naming the service and its log.
func TestCheckServicesNamesAHungService(t *testing.T) {
	silent := silentListener(t)
	s := Settings{KafkaBrokers: []string{silent}}
	probes := s.probes()[:1] // kafka
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	err := probes[0].check(ctx)
	if err == nil {
		t.Fatal("the Kafka probe succeeded against a listener that never answers")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the probe took %v to give up on a 1 s deadline", d)
	}
	msg := (&hungError{service: "kafka", silent: 31 * time.Second, err: err}).Error()
	for _, want := range []string{"testenv: kafka has not answered for 31s", "kafka.log", "make testenv-up"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
}

// The watchdog's verdict: a service silent for hungAfter stops the run, a
// service that answers again in time does not, and nothing counts while a
// Restart is in progress.
func TestWatchdogVerdict(t *testing.T) {
	fail := errors.New("no answer")
	cases := []struct {
		name     string
		failFor  int // probes that fail before it answers again (-1: for ever)
		pause    bool
		wantStop bool
	}{
		{"answers", 0, false, false},
		{"brief outage", 2, false, false},
		{"hung", -1, false, true},
		{"restarted on purpose", -1, true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := &watchdog{every: 10 * time.Millisecond, timeout: time.Second, hungAfter: 100 * time.Millisecond}
			if tc.pause {
				defer w.pause()()
			}
			var n atomic.Int64
			p := probe{"pebble", func(context.Context) error {
				if k := n.Add(1); tc.failFor < 0 || k <= int64(tc.failFor) {
					return fail
				}
				return nil
			}}
			stopped := make(chan error, 1)
			go w.run([]probe{p}, func(err error) { stopped <- err })
			select {
			case err := <-stopped:
				if !tc.wantStop {
					t.Fatalf("stopped: %v", err)
				}
				var h *hungError
				if !errors.As(err, &h) || h.service != "pebble" || !errors.Is(err, fail) {
					t.Fatalf("verdict %v, want a hungError for pebble wrapping the probe's error", err)
				}
			case <-time.After(time.Second):
				if tc.wantStop {
					t.Fatal("a service silent for 10x hungAfter did not stop the run")
				}
			}
		})
	}
}

const envWatchdogHelper = "CERTFLEET_TESTENV_WATCHDOG_HELPER"

// TestWatchdogEndsAHungTestBinary runs a test binary whose test blocks for
// ever on a Kafka that never answers, as a test does when a service hangs
// mid-run. The watchdog must end it within a minute (here: within seconds, on
// short settings) with one message naming the service and its log, and kill
// the process the test had started.
func TestWatchdogEndsAHungTestBinary(t *testing.T) {
	if os.Getenv(envWatchdogHelper) != "" {
		hungTestBinary(t)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestWatchdogEndsAHungTestBinary$")
	cmd.Env = append(os.Environ(), envWatchdogHelper+"="+silentListener(t))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("the hung test binary ended with %v after %v, want exit status 3\nstdout:\n%s\nstderr:\n%s", err, time.Since(start), &stdout, &stderr)
	}
	if n := strings.Count(stderr.String(), "has not answered"); n != 1 {
		t.Errorf("%d verdicts on stderr, want exactly one:\n%s", n, &stderr)
	}
	for _, want := range []string{"testenv: kafka has not answered for", "kafka.log", "The tests of this package stop here."} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, &stderr)
		}
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(stdout.String(), "child ")))
	if err != nil {
		t.Fatalf("the helper did not print its child's pid: %q", &stdout)
	}
	// The orphan is reaped by init; give it a moment.
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("the child process %d the hung test started is still alive", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// hungTestBinary is the helper side: start a child, start the watchdog on a
// silent Kafka with short settings, block.
func hungTestBinary(t *testing.T) {
	child := exec.Command("sleep", "600")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("child %d\n", child.Process.Pid)
	os.Stdout.Sync()
	s := Settings{KafkaBrokers: []string{os.Getenv(envWatchdogHelper)}}
	w := &watchdog{every: 100 * time.Millisecond, timeout: 300 * time.Millisecond, hungAfter: 2 * time.Second}
	go w.run(s.probes()[:1], stopTestBinary)
	select {} // a test stuck on the hung service
}
