package pipeline_test

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/certfleet/certfleet/testenv"
)

// The issuance benchmarks also count CPU: what a side costs the whole
// machine per certificate, the test process (worker or loop, and the
// benchmark's own readers) plus every service of the stack (Pebble,
// challtestsrv, BIND, Kafka, PostgreSQL with its backends). On a machine
// whose cores other work keeps busy, a side's wall-clock rate follows its
// CPU per certificate, so this is where the two sides' difference shows,
// and it moves far less with the machine's load than certs/s does. What
// every part spends idle (measured for a second before each side) is taken
// out: a slower side would otherwise be charged for the time it took.

// stackServices are the pid files testenv writes in its state directory.
var stackServices = []string{"pebble", "challtestsrv", "bind", "kafka", "postgres"}

// cpuSample is CPU time used so far, per part ("test" for this process).
type cpuSample map[string]time.Duration

// sampleCPU reads this process's CPU time (getrusage) and each running
// stack service's from /proc (user + system; PostgreSQL's backends, its
// postmaster's children, added to it). A service testenv did not start, or
// a /proc it cannot read, is left out of both ends of a difference alike.
func sampleCPU() cpuSample {
	s := cpuSample{}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s["test"] = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	dir, err := testenv.StateDir()
	if err != nil {
		return s
	}
	children := childrenOf()
	for _, name := range stackServices {
		data, err := os.ReadFile(filepath.Join(dir, name+".pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0]))
		if err != nil {
			continue
		}
		cpu, ok := procCPU(pid)
		if !ok {
			continue
		}
		for _, c := range children[pid] {
			if d, ok := procCPU(c); ok {
				cpu += d
			}
		}
		s[name] = cpu
	}
	return s
}

// childrenOf maps each pid to its children's.
func childrenOf() map[int][]int {
	out := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(pid); len(f) > 1 {
			if ppid, err := strconv.Atoi(f[1]); err == nil {
				out[ppid] = append(out[ppid], pid)
			}
		}
	}
	return out
}

// procCPU is a process's utime + stime.
func procCPU(pid int) (time.Duration, bool) {
	f := statFields(pid)
	if len(f) < 13 {
		return 0, false
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(ut+st) * time.Second / clockTicks, true
}

// clockTicks is the unit of /proc/PID/stat's times (USER_HZ, 100 on Linux).
const clockTicks = 100

// statFields are /proc/PID/stat's fields after the command name: [0] is
// the state, [1] the parent pid, [11] utime, [12] stime.
func statFields(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(data[i+1:]))
}

// idleCPU samples every part's CPU over d while no batch runs: the rate
// the stack and this process spend idle (Kafka's and PostgreSQL's
// housekeeping, the idle worker's polling), which a side pays for as long
// as it runs whatever it does.
func idleCPU(d time.Duration) (rate map[string]float64) {
	from := sampleCPU()
	time.Sleep(d)
	to := sampleCPU()
	rate = map[string]float64{}
	for name, end := range to {
		if start, ok := from[name]; ok {
			rate[name] = float64(end-start) / float64(d)
		}
	}
	return rate
}

// busyCPU is, per part, the CPU spent between from and to beyond its idle
// rate over elapsed.
func busyCPU(from, to cpuSample, idle map[string]float64, elapsed time.Duration) map[string]time.Duration {
	out := map[string]time.Duration{}
	for name, end := range to {
		if start, ok := from[name]; ok {
			out[name] = max(end-start-time.Duration(idle[name]*float64(elapsed)), 0)
		}
	}
	return out
}

// reportCPU reports the CPU of every part per certificate as
// cpu-per-cert-ms and logs each part's share.
func reportCPU(b *testing.B, n int, parts map[string]time.Duration) {
	var total time.Duration
	var shares []string
	for name, d := range parts {
		total += d
		shares = append(shares, fmt.Sprintf("%s %.1f", name, ms(d)/float64(n)))
	}
	sort.Strings(shares)
	b.ReportMetric(ms(total)/float64(n), "cpu-per-cert-ms")
	b.Logf("CPU ms per certificate beyond idle: %s", strings.Join(shares, ", "))
}
