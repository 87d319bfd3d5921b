// Package benchmem measures a benchmark side's memory for make bench: the
// heap in use after a GC at the start, its peak while the side runs (sampled
// every 20 ms), and the process's peak resident set (the kernel's VmHWM,
// reset at the start after freed memory is returned to the OS, so an earlier
// side's peak does not count).
package benchmem

import (
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Peak follows one side's memory from Start until Report.
type Peak struct {
	done, finished chan struct{}
	idle, heap     uint64
	rssReset       bool
}

// Start frees what it can, notes the idle heap, resets the kernel's peak RSS
// mark and starts sampling the heap.
func Start() *Peak {
	debug.FreeOSMemory() // also a full GC
	p := &Peak{done: make(chan struct{}), finished: make(chan struct{})}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	p.idle = ms.HeapInuse
	p.rssReset = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
	go func() {
		defer close(p.finished)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			p.heap = max(p.heap, ms.HeapInuse)
			select {
			case <-p.done:
				return
			case <-t.C:
			}
		}
	}()
	return p
}

// Report stops sampling and reports peak-heap-MiB, peak-RSS-MiB (only when
// the kernel let the peak be reset) and, with idle, heap-idle-MiB.
func (p *Peak) Report(b *testing.B, idle bool) {
	close(p.done)
	<-p.finished
	if idle {
		b.ReportMetric(float64(p.idle)/(1<<20), "heap-idle-MiB")
	}
	b.ReportMetric(float64(p.heap)/(1<<20), "peak-heap-MiB")
	if p.rssReset {
		b.ReportMetric(float64(PeakRSS())/(1<<20), "peak-RSS-MiB")
	} else {
		b.Log("peak RSS not reported: /proc/self/clear_refs is not writable")
	}
}

// PeakRSS is the process's peak resident set (VmHWM), in bytes; 0 when
// unknown.
func PeakRSS() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
