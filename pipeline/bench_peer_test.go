package pipeline_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certfleet/certfleet/testenv"
)

// EnvBenchCertMagic names the binary of the CertMagic peer (bench/certmagic,
// built by make bench). Unset: BenchmarkIssuance skips the CertMagic rows.
const EnvBenchCertMagic = "CERTFLEET_BENCH_CERTMAGIC"

// certmagicHTTP01Addr is the loopback address where the peer's own HTTP-01
// server listens (on Settings.HTTP01Port) and its names point: none of
// testenv's reserved responder addresses (testenv.HTTP01Addr*).
const certmagicHTTP01Addr = "127.0.0.6"

// certmagicRuns numbers the peer's runs, so every run's names are new.
var certmagicRuns atomic.Int64

// certmagicSide runs the CertMagic peer as a child process against the
// stack's Pebble with throttle "defaults" or "throttle_off". The child warms
// up (concurrency certificates, as the other sides) before it says ready;
// the timed batch is what it measures between our go line and its result,
// with the same definitions as the other sides.
func (st *stack) certmagicSide(throttle string, concurrency int) issuanceSide {
	return issuanceSide{name: "certmagic_" + throttle, prepare: func(tb testing.TB, n int) func() batchResult {
		bin := os.Getenv(EnvBenchCertMagic)
		if bin == "" {
			tb.Skipf("%s is not set: no CertMagic peer (make bench builds it from bench/certmagic)", EnvBenchCertMagic)
		}
		flagThrottle := map[string]string{"defaults": "default", "throttle_off": "off"}[throttle]
		cmd := exec.Command(bin,
			"-directory", st.s.ACMEDirectory, "-ca-file", st.s.ACMETLSCA, "-challtestsrv", st.s.ChallTestSrvURL,
			"-listen", fmt.Sprintf("%s:%d", certmagicHTTP01Addr, st.s.HTTP01Port),
			"-concurrency", fmt.Sprint(concurrency), "-n", fmt.Sprint(n), "-throttle", flagThrottle,
			"-profile", testenv.PebbleShortProfile, "-prefix", fmt.Sprintf("cm%d-%s", certmagicRuns.Add(1), st.suffix))
		stderr := &tailBuffer{max: 64 << 10}
		cmd.Stderr = stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			tb.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			tb.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			tb.Fatalf("starting the CertMagic peer %s: %v", bin, err)
		}
		done := false
		tb.Cleanup(func() {
			if !done {
				cmd.Process.Kill()
				cmd.Wait()
			}
		})
		out := bufio.NewReader(stdout)
		fail := func(what string, err error) {
			tb.Helper()
			cmd.Process.Kill()
			cmd.Wait()
			done = true
			tb.Fatalf("CertMagic peer: %s: %v; its stderr ends:\n%s", what, err, stderr.String())
		}
		if line, err := out.ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
			fail("warming up", fmt.Errorf("read %q, %v", line, err))
		}
		return func() batchResult {
			if _, err := io.WriteString(stdin, "go\n"); err != nil {
				fail("starting the batch", err)
			}
			line, err := out.ReadString('\n')
			var res struct {
				ElapsedNS  int64   `json:"elapsed_ns"`
				TTCNS      []int64 `json:"ttc_ns"`
				CPUNS      int64   `json:"cpu_ns"`
				AllocBytes uint64  `json:"alloc_bytes"`
				Allocs     uint64  `json:"allocs"`
			}
			if err == nil {
				err = json.Unmarshal([]byte(line), &res)
			}
			if err != nil {
				fail("reading its result", err)
			}
			if err := cmd.Wait(); err != nil {
				done = true
				tb.Fatalf("CertMagic peer: %v; its stderr ends:\n%s", err, stderr.String())
			}
			done = true
			if len(res.TTCNS) != n {
				tb.Fatalf("CertMagic peer: %d certificates, want %d", len(res.TTCNS), n)
			}
			ttc := make([]time.Duration, len(res.TTCNS))
			for i, d := range res.TTCNS {
				ttc[i] = time.Duration(d)
			}
			return batchResult{elapsed: time.Duration(res.ElapsedNS), ttc: ttc, childCPU: time.Duration(res.CPUNS),
				childAllocBytes: res.AllocBytes, childAllocs: res.Allocs}
		}
	}}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(p)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}
