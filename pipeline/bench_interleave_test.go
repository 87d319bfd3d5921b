package pipeline_test

import (
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/certfleet/certfleet/internal/benchmem"
)

// EnvBenchChunk is how many certificates a side obtains before the other
// side takes its turn when two sides are measured interleaved (default
// benchChunkPerSlot per order in flight).
const EnvBenchChunk = "CERTFLEET_BENCH_CHUNK"

// benchChunkPerSlot sets the default chunk: 16 certificates per order in
// flight (96 at 6, 768 at 48), long enough that filling and draining the
// slots at a chunk's ends costs a few percent, the same on both sides.
const benchChunkPerSlot = 16

// Why interleave: on a machine other work shares, the load changes within
// a minute by more than the difference being measured. Two sides measured
// one after the other (1,000 certificates each, about a minute) met
// different load and their ratio swung between 0.70x and 1.05x in three
// runs of the same code. Measured in alternating chunks (A B B A A B ...),
// both sides meet the same load and the same Pebble, and each side's
// figures add up its chunks: certs/s is its certificates over the sum of
// its chunks' times, time to certificate is from the start of the
// certificate's chunk.

// sideResult is one side's figures over all its chunks.
type sideResult struct {
	n          int
	elapsed    time.Duration
	ttc        []time.Duration
	cpu        map[string]time.Duration // busy CPU per part
	allocBytes uint64                   // allocated by this process during the side's chunks
	allocs     uint64
	idleHeap   uint64 // heap in use after a GC before the side's first chunk
	peakHeap   uint64 // sampled every 20 ms during its chunks
	peakRSS    int64  // VmHWM, reset before each chunk; 0 when it cannot be reset
	// Allocated by the side's own process (the CertMagic peer).
	childAllocBytes, childAllocs uint64
}

// chunkSize is the EnvBenchChunk setting, else benchChunkPerSlot per order
// in flight.
func chunkSize(tb testing.TB, concurrency int) int {
	v := os.Getenv(EnvBenchChunk)
	if v == "" {
		return benchChunkPerSlot * concurrency
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		tb.Fatalf("%s=%q: want a whole number >= 1", EnvBenchChunk, v)
	}
	return n
}

// measureInterleaved obtains n certificates on each side in chunks of at
// most chunk, alternating A B B A A B ... (sides[0] is A), and returns each
// side's figures.
func measureInterleaved(tb testing.TB, sides []issuanceSide, n, chunk int) []sideResult {
	idle := idleCPU(time.Second)
	res := make([]sideResult, len(sides))
	for i := range res {
		res[i].cpu = map[string]time.Duration{}
	}
	started := make([]bool, len(sides))
	for c, done := 0, 0; done < n; c, done = c+1, done+min(chunk, n-done) {
		size := min(chunk, n-done)
		order := make([]int, len(sides))
		for i := range order {
			order[i] = i
		}
		if c%2 == 1 {
			slices.Reverse(order)
		}
		for _, i := range order {
			r := &res[i]
			batch := sides[i].prepare(tb, size)
			debug.FreeOSMemory() // also a full GC: the heap in use is what lives
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if !started[i] {
				r.idleHeap, started[i] = ms.HeapInuse, true
			}
			rssReset := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
			stopHeap := sampleHeap(&r.peakHeap)
			cpu0 := sampleCPU()
			out := batch()
			cpu1 := sampleCPU()
			stopHeap()
			var ms1 runtime.MemStats
			runtime.ReadMemStats(&ms1)
			r.n += size
			r.elapsed += out.elapsed
			r.ttc = append(r.ttc, out.ttc...)
			r.allocBytes += ms1.TotalAlloc - ms.TotalAlloc
			r.allocs += ms1.Mallocs - ms.Mallocs
			for part, d := range busyCPU(cpu0, cpu1, idle, out.elapsed) {
				r.cpu[part] += d
			}
			if out.childCPU > 0 {
				r.cpu[sides[i].name] += out.childCPU
			}
			r.childAllocBytes += out.childAllocBytes
			r.childAllocs += out.childAllocs
			if rssReset {
				r.peakRSS = max(r.peakRSS, benchmem.PeakRSS())
			}
		}
	}
	return res
}

// sampleHeap raises *peak to the heap in use every 20 ms until stop.
func sampleHeap(peak *uint64) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			*peak = max(*peak, ms.HeapInuse)
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// report reports a side's figures as b's result; they replace go test's
// own ns/op, B/op and allocs/op, which would count whatever b's timer saw.
func (r sideResult) report(b *testing.B, memory bool) {
	slices.Sort(r.ttc)
	b.ReportMetric(float64(r.n)/r.elapsed.Seconds(), "certs/s")
	b.ReportMetric(float64(r.elapsed.Nanoseconds())/float64(r.n), "ns/op")
	b.ReportMetric(ms(percentile(r.ttc, 0.50)), "ttc-p50-ms")
	b.ReportMetric(ms(percentile(r.ttc, 0.99)), "ttc-p99-ms")
	reportCPU(b, r.n, r.cpu)
	if !memory {
		// The side runs in a process of its own: its allocations, not
		// this process's.
		b.ReportMetric(float64(r.childAllocBytes)/float64(r.n), "B/op")
		b.ReportMetric(float64(r.childAllocs)/float64(r.n), "allocs/op")
		return
	}
	b.ReportMetric(float64(r.allocBytes)/float64(r.n), "B/op")
	b.ReportMetric(float64(r.allocs)/float64(r.n), "allocs/op")
	b.ReportMetric(float64(r.idleHeap)/(1<<20), "heap-idle-MiB")
	b.ReportMetric(float64(r.peakHeap)/(1<<20), "peak-heap-MiB")
	if r.peakRSS > 0 {
		b.ReportMetric(float64(r.peakRSS)/(1<<20), "peak-RSS-MiB")
	}
}

// measure runs one side alone: b.N certificates in one chunk.
func (s issuanceSide) measure(b *testing.B) {
	b.ResetTimer()
	r := measureInterleaved(b, []issuanceSide{s}, b.N, b.N)[0]
	b.StopTimer()
	r.report(b, s.memory)
}

// pair is two sides measured interleaved, each reported by its own
// sub-benchmark: the first of the two to run with b.N > 1 measures both
// and the other reports what was measured for it. go test first runs every
// sub-benchmark once with b.N = 1; that run measures its side alone.
type pair struct {
	sides   [2]issuanceSide
	chunk   int
	n       int // b.N of the stored results; 0: none
	results []sideResult
}

// run is the sub-benchmark of side i.
func (p *pair) run(i int) func(*testing.B) {
	return func(b *testing.B) {
		if b.N == 1 {
			p.sides[i].measure(b)
			return
		}
		b.ResetTimer()
		if p.n != b.N {
			// This side goes first in the interleaving.
			sides := []issuanceSide{p.sides[i], p.sides[1-i]}
			res := measureInterleaved(b, sides, b.N, p.chunk)
			p.results = make([]sideResult, 2)
			p.results[i], p.results[1-i] = res[0], res[1]
			p.n = b.N
		}
		b.StopTimer()
		p.results[i].report(b, p.sides[i].memory)
		if p.results[i].n != b.N {
			b.Fatalf("measured %d certificates for %s, want %d", p.results[i].n, p.sides[i].name, b.N)
		}
	}
}
