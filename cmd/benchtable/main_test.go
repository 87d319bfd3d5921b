package main

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
)

const sample = `goos: linux
goarch: amd64
pkg: github.com/certfleet/certfleet/ratelimit
cpu: Intel(R) Xeon(R)
BenchmarkHotBucket/limiter-2         	   50000	     21330 ns/op	     46880 decisions/s	         0.99 p99-ms	         0.29 p50-ms	     528 B/op	       7 allocs/op
BenchmarkHotBucket/naive-2           	    1000	    970000 ns/op	      1030 decisions/s	       559 p99-ms	         0.57 p50-ms	    1973 B/op	      56 allocs/op
    bench_test.go:99: some log line with words
BenchmarkSolo-2   	 1000000	      1000 ns/op	     64 B/op	       2 allocs/op
pkg: github.com/certfleet/certfleet/events
BenchmarkCodec/certfleet-2   	 1000	      500 ns/op
BenchmarkCodec/baseline_json-2    	 1000	     1000 ns/op
pkg: github.com/certfleet/certfleet/pipeline
BenchmarkIssuance/in_flight_6/pipeline-2         	     200	  18477485 ns/op	        54.12 certs/s	         8.906 heap-idle-MiB	        15.94 peak-heap-MiB	      1729 ttc-p50-ms	  319590 B/op	    3399 allocs/op
BenchmarkIssuance/in_flight_6/baseline_acmez_loop-2         	     200	  18606564 ns/op	        53.74 certs/s	         8.000 heap-idle-MiB	        7.97 peak-heap-MiB	      3458 ttc-p50-ms	  182738 B/op	    2051 allocs/op
BenchmarkOneProc/x 	 10	 5 ns/op
--- FAIL: BenchmarkBroken
PASS
`

func TestParse(t *testing.T) {
	in, err := parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(in.results) != 8 {
		t.Fatalf("parsed %d results, want 8: %+v", len(in.results), in.results)
	}
	if in.cpu != "Intel(R) Xeon(R)" {
		t.Errorf("cpu %q", in.cpu)
	}
	if !reflect.DeepEqual(in.failures, []string{"--- FAIL: BenchmarkBroken"}) {
		t.Errorf("failures %q", in.failures)
	}
	for _, tc := range []struct {
		i                      int
		pkg, name, group, var_ string
		procs                  int
		n                      int64
	}{
		{0, "ratelimit", "BenchmarkHotBucket/limiter", "BenchmarkHotBucket", "limiter", 2, 50000},
		{2, "ratelimit", "BenchmarkSolo", "BenchmarkSolo", "", 2, 1000000},
		{5, "pipeline", "BenchmarkIssuance/in_flight_6/pipeline", "BenchmarkIssuance/in_flight_6", "pipeline", 2, 200},
		{7, "pipeline", "BenchmarkOneProc/x", "BenchmarkOneProc", "x", 1, 10}, // GOMAXPROCS=1: no suffix
	} {
		r := in.results[tc.i]
		if shortPkg(r.Package) != tc.pkg || r.Name != tc.name || r.Group != tc.group || r.Variant != tc.var_ || r.Procs != tc.procs || r.N != tc.n {
			t.Errorf("result %d = %+v, want %+v", tc.i, r, tc)
		}
	}
	if got := in.results[2].Metrics["allocs/op"]; got != 2 {
		t.Errorf("allocs/op = %v", got)
	}
	if got := procs(in.results); !reflect.DeepEqual(got, []int{1, 2}) {
		t.Errorf("procs %v", got)
	}
}

func TestParseBadValue(t *testing.T) {
	if _, err := parse(strings.NewReader("BenchmarkX-2 10 abc ns/op\n")); err == nil {
		t.Fatal("no error for a non-numeric value")
	}
}

func TestSplitProcs(t *testing.T) {
	for _, tc := range []struct {
		in    string
		name  string
		procs int
	}{
		{"BenchmarkA-2", "BenchmarkA", 2},
		{"BenchmarkA/b-16", "BenchmarkA/b", 16},
		{"BenchmarkA/in_flight_6/pipeline-2", "BenchmarkA/in_flight_6/pipeline", 2},
		{"BenchmarkA/x-y", "BenchmarkA/x-y", 1},
		{"BenchmarkA", "BenchmarkA", 1},
	} {
		if name, procs := splitProcs(tc.in); name != tc.name || procs != tc.procs {
			t.Errorf("splitProcs(%q) = %q, %d; want %q, %d", tc.in, name, procs, tc.name, tc.procs)
		}
	}
}

func TestIsBaseline(t *testing.T) {
	for v, want := range map[string]bool{
		"baseline": true, "naive": true, "baseline_acmez_loop": true, "Baseline_json": true, "naive2": true,
		"limiter": false, "pipeline": false, "": false, "fleet_1M": false,
	} {
		if got := isBaseline(v); got != want {
			t.Errorf("isBaseline(%q) = %v", v, got)
		}
	}
}

func TestDirection(t *testing.T) {
	for unit, want := range map[string]int{
		"certs/s": 1, "MB/s": 1, "decisions/s": 1,
		"ns/op": -1, "B/op": -1, "allocs/op": -1, "p99-ms": -1, "ttc-p50-ms": -1, "peak-RSS-MiB": -1, "B/cert": -1,
		"widgets": 0,
	} {
		if got := direction(unit); got != want {
			t.Errorf("direction(%q) = %d, want %d", unit, got, want)
		}
	}
}

func TestRowsAndComparisons(t *testing.T) {
	in, err := parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Row{}
	for _, r := range rows(in.results) {
		byName[r.Name] = r
	}
	type cmp struct {
		metric string
		gain   float64
	}
	for _, tc := range []struct {
		name     string
		baseline string
		want     []cmp
	}{
		// A rate is primary and ns/op (its inverse) is left out; lower is
		// better for latency, bytes and allocations.
		{"HotBucket/limiter", "naive", []cmp{
			{"decisions/s", 46880.0 / 1030}, {"p50-ms", 0.57 / 0.29}, {"p99-ms", 559 / 0.99}, {"B/op", 1973.0 / 528}, {"allocs/op", 56.0 / 7}}},
		{"HotBucket/naive", "", nil}, // the baseline itself
		{"Solo", "", nil},            // no baseline
		{"Codec/certfleet", "baseline_json", []cmp{{"ns/op", 2}}}, // no rate: time, higher gain is better
		{"Issuance/in_flight_6/pipeline", "baseline_acmez_loop", []cmp{
			{"certs/s", 54.12 / 53.74}, {"heap-idle-MiB", 8.0 / 8.906}, {"peak-heap-MiB", 7.97 / 15.94}, {"ttc-p50-ms", 3458.0 / 1729},
			{"B/op", 182738.0 / 319590}, {"allocs/op", 2051.0 / 3399}}},
	} {
		r, ok := byName["Benchmark"+tc.name]
		if !ok {
			t.Fatalf("no row %s", tc.name)
		}
		if r.Baseline != tc.baseline {
			t.Errorf("%s: baseline %q, want %q", tc.name, r.Baseline, tc.baseline)
		}
		var got []cmp
		for _, c := range r.Comparisons {
			got = append(got, cmp{c.Metric, c.Gain})
			if math.Abs(c.Ratio-c.Value/c.Baseline) > 1e-12 {
				t.Errorf("%s %s: ratio %v of %v/%v", tc.name, c.Metric, c.Ratio, c.Value, c.Baseline)
			}
		}
		if len(got) != len(tc.want) {
			t.Fatalf("%s: comparisons %v, want %v", tc.name, got, tc.want)
		}
		for i := range got {
			if got[i].metric != tc.want[i].metric || math.Abs(got[i].gain-tc.want[i].gain) > 1e-9 {
				t.Errorf("%s: comparison %d = %v, want %v", tc.name, i, got[i], tc.want[i])
			}
		}
		if len(tc.want) > 0 && (r.Metric != tc.want[0].metric || math.Abs(r.Ratio-tc.want[0].gain) > 1e-9) {
			t.Errorf("%s: primary %q %v", tc.name, r.Metric, r.Ratio)
		}
	}
	if got := noBaseline(rows(in.results)); !reflect.DeepEqual(got, []string{"ratelimit BenchmarkSolo", "pipeline BenchmarkOneProc/x"}) {
		t.Errorf("noBaseline %q", got)
	}
}

func TestCompareZeros(t *testing.T) {
	c := Result{Metrics: map[string]float64{"ns/op": 10, "B/op": 0, "allocs/op": 0}}
	b := Result{Metrics: map[string]float64{"ns/op": 20, "B/op": 64, "allocs/op": 0}}
	got := compare(c, b)
	if len(got) != 3 || got[0].Gain != 2 || !math.IsInf(got[1].Gain, 1) || got[2].Gain != 1 {
		t.Fatalf("%+v", got)
	}
}

func TestComparisonJSON(t *testing.T) {
	for _, tc := range []struct {
		c    Comparison
		want string
	}{
		{Comparison{Metric: "B/op", Value: 0, Baseline: 64, Ratio: 0, Gain: math.Inf(1)}, `{"metric":"B/op","value":0,"baseline":64,"ratio":0,"gain":null}`},
		{Comparison{Metric: "certs/s", Value: 2, Baseline: 1, Ratio: 2, Gain: 2}, `{"metric":"certs/s","value":2,"baseline":1,"ratio":2,"gain":2}`},
	} {
		got, err := json.Marshal(tc.c)
		if err != nil || string(got) != tc.want {
			t.Errorf("json of %+v = %s, %v; want %s", tc.c, got, err, tc.want)
		}
	}
}

func TestGain(t *testing.T) {
	for g, want := range map[float64]string{
		45.51:        "45.51x better",
		0.5:          "2.00x worse",
		1:            "1.00x same",
		0.999:        "1.00x same",
		1.004:        "1.00x same",
		0:            "n/a",
		math.Inf(1):  "baseline's cost, candidate's none",
		1.0 / 3.0:    "3.00x worse",
		1.0 / 0.9944: "1.01x better",
	} {
		if got := gain(g); got != want {
			t.Errorf("gain(%v) = %q, want %q", g, got, want)
		}
	}
}

func TestNum(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		unit string
		want string
	}{
		{1045535888, "B/op", "1045535888"},
		{12377.4, "jobs/s", "12377"},
		{559, "p99-ms", "559.0"},
		{153.46, "peak-RSS-MiB", "153.5"},
		{54.123, "certs/s", "54.12"},
		{34, "certs/s", "34.00"},
		{0.387, "p50-ms", "0.387"},
		{0, "B/op", "0"},
		{7, "allocs/op", "7"},
		{817.2, "ns/op", "817"},
	} {
		if got := num(tc.v, tc.unit); got != tc.want {
			t.Errorf("num(%v, %q) = %q, want %q", tc.v, tc.unit, got, tc.want)
		}
	}
}

func TestCPUModelAndMemory(t *testing.T) {
	cpuinfo := "processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.138\nflags\t\t: fpu sse hypervisor avx\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n"
	if got := cpuModel(cpuinfo); got != "AMD EPYC @ 2596 MHz (virtual machine)" {
		t.Errorf("cpuModel = %q", got)
	}
	if got := cpuModel("processor : 0\nmodel name : Some CPU\nflags : fpu sse\n"); got != "Some CPU" {
		t.Errorf("cpuModel = %q", got)
	}
	if got := cpuModel(""); got != "unknown" {
		t.Errorf("cpuModel of nothing = %q", got)
	}
	if got := memTotalMiB("MemTotal:       24684084 kB\nMemFree: 1 kB\n"); got != 24105 {
		t.Errorf("memTotalMiB = %d", got)
	}
}

func TestPrint(t *testing.T) {
	in, _ := parse(strings.NewReader(sample))
	rep := Report{Machine: Machine{CPU: "x", CPUs: 2, GOMAXPROCS: []int{2}, MemoryMiB: 2048, OS: "linux/amd64 kernel 6", GoVersion: "go1.26",
		LoadStart: "0.1 0.2 0.3", LoadEnd: "1.0 0.5 0.3"}, Settings: "benchtime=1s", Rows: rows(in.results), Failures: in.failures}
	rep.NoBaseline = noBaseline(rep.Rows)
	var b strings.Builder
	print(&b, rep)
	out := b.String()
	for _, want := range []string{
		"machine: x, 2 CPUs, GOMAXPROCS 2, 2.0 GiB RAM, linux/amd64 kernel 6, go1.26",
		"load average (1/5/15 min): 0.1 0.2 0.3 at start, 1.0 0.5 0.3 at end",
		"settings: benchtime=1s",
		"limiter vs naive",
		"45.51x better",
		"pipeline vs baseline_acmez_loop",
		"200 vs 200",
		"peak-heap-MiB",
		"2.00x worse",
		"no baseline in this run: ratelimit BenchmarkSolo, pipeline BenchmarkOneProc/x",
		"FAILURES",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	// A baseline with candidates is not a row of its own.
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 2 && strings.HasPrefix(f[2], "naive") {
			t.Errorf("baseline printed as a row: %q", l)
		}
	}
}

// The pipeline's issuance benchmark measured three times (run_10 printed
// before run_2), the CertMagic peer in one run only, and comparisons
// outside any run.
const runsSample = `pkg: github.com/certfleet/certfleet/pipeline
BenchmarkIssuance/in_flight_6/run_1/pipeline-2  1000  1 ns/op  20 certs/s  900 ttc-p99-ms
BenchmarkIssuance/in_flight_6/run_1/baseline_acmez_loop-2  1000  1 ns/op  25 certs/s  800 ttc-p99-ms
BenchmarkIssuance/in_flight_6/run_10/pipeline-2  1000  1 ns/op  19 certs/s  800 ttc-p99-ms
BenchmarkIssuance/in_flight_6/run_10/baseline_acmez_loop-2  1000  1 ns/op  20 certs/s  800 ttc-p99-ms
BenchmarkIssuance/in_flight_6/run_10/certmagic_defaults-2  1000  1 ns/op  1 certs/s  900 ttc-p99-ms
BenchmarkIssuance/in_flight_6/run_2/baseline_acmez_loop-2  1000  1 ns/op  20 certs/s  800 ttc-p99-ms
BenchmarkIssuance/in_flight_6/run_2/pipeline-2  1000  1 ns/op  20 certs/s  800 ttc-p99-ms
BenchmarkFleetIssuance/in_flight_48/pipeline_2x24-2  1000  1 ns/op  90 certs/s
BenchmarkFleetIssuance/in_flight_48/baseline_acmez_loop-2  1000  1 ns/op  100 certs/s
BenchmarkOdd/run_x/a-2  10  1 ns/op
BenchmarkOdd/run_x/baseline-2  10  2 ns/op
`

func TestRunSummaries(t *testing.T) {
	in, err := parse(strings.NewReader(runsSample))
	if err != nil {
		t.Fatal(err)
	}
	got := runSummaries(rows(in.results))
	want := []RunSummary{{Package: "github.com/certfleet/certfleet/pipeline", Group: "BenchmarkIssuance/in_flight_6",
		Candidate: "pipeline", Baseline: "baseline_acmez_loop", Metric: "certs/s", Gains: []float64{0.8, 1, 0.95}, Min: 0.8, Max: 1}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("runSummaries = %+v\nwant %+v (run_10 after run_2; the peer, in one run only, and groups without /run_N left out)", got, want)
	}
	for _, tc := range []struct {
		group string
		base  string
		n     int
		ok    bool
	}{
		{"BenchmarkIssuance/in_flight_6/run_3", "BenchmarkIssuance/in_flight_6", 3, true},
		{"BenchmarkIssuance/in_flight_6", "", 0, false},
		{"BenchmarkOdd/run_x", "", 0, false},
		{"BenchmarkOdd/run_0", "", 0, false},
	} {
		base, n, ok := runGroup(tc.group)
		if base != tc.base || n != tc.n || ok != tc.ok {
			t.Errorf("runGroup(%q) = %q, %d, %v; want %q, %d, %v", tc.group, base, n, ok, tc.base, tc.n, tc.ok)
		}
	}
	rep := Report{Rows: rows(in.results), Runs: got}
	var b strings.Builder
	print(&b, rep)
	line := "pipeline BenchmarkIssuance/in_flight_6 pipeline vs baseline_acmez_loop, certs/s: 0.80x 1.00x 0.95x (lowest 0.80x, highest 1.00x)"
	if !strings.Contains(b.String(), line) {
		t.Errorf("table lacks %q:\n%s", line, b.String())
	}
}

// A floor_ variant is a same-run reference: never compared with the
// baseline, printed with its own figures.
func TestFloorIsNotACandidate(t *testing.T) {
	in, err := parse(strings.NewReader(`pkg: github.com/certfleet/certfleet/ratelimit
BenchmarkBatch3/limiter-2   	 1000	 100 ns/op	 5000 decisions/s
BenchmarkBatch3/naive-2     	 1000	 300 ns/op	 1500 decisions/s
BenchmarkBatch3/floor_select1-2 	 1000	 10 ns/op	 50000 round-trips/s	 8.5 p99-ms
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows(in.results) {
		if r.Variant == "floor_select1" && (r.Baseline != "" || len(r.Comparisons) > 0) {
			t.Errorf("the floor row was compared with %q: %+v", r.Baseline, r.Comparisons)
		}
		if r.Variant == "limiter" && r.Baseline != "naive" {
			t.Errorf("the limiter row's baseline is %q, want naive", r.Baseline)
		}
	}
	var out strings.Builder
	print(&out, Report{Rows: rows(in.results)})
	if !strings.Contains(out.String(), "floor_select1 (same-run floor)") {
		t.Errorf("the table does not show the floor as such:\n%s", out.String())
	}
}
