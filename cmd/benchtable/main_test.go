package main

import (
	"math"
	"strings"
	"testing"
)

const sample = `goos: linux
goarch: amd64
pkg: github.com/certfleet/certfleet/ratelimit
cpu: Intel(R) Xeon(R)
BenchmarkHotBucket/limiter-2         	   50000	     21330 ns/op	     46880 decisions/s	         0.99 p99-ms	         0.29 p50-ms
BenchmarkHotBucket/naive-2           	    1000	    970000 ns/op	      1030 decisions/s	       559 p99-ms	         0.57 p50-ms
    bench_test.go:99: some log line with words
BenchmarkSolo-2   	 1000000	      1000 ns/op	     64 B/op	       2 allocs/op
pkg: github.com/certfleet/certfleet/events
BenchmarkCodec/certfleet-2   	 1000	      500 ns/op
BenchmarkCodec/baseline-2    	 1000	     1000 ns/op
--- FAIL: BenchmarkBroken
PASS
`

func TestParseAndPair(t *testing.T) {
	res, err := parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 5 {
		t.Fatalf("parsed %d results, want 5: %+v", len(res), res)
	}
	rs := rows(res)
	byName := map[string]Row{}
	for _, r := range rs {
		byName[r.Name] = r
	}
	for _, tc := range []struct {
		name, metric string
		ratio        float64
	}{
		{"HotBucket/limiter", "decisions/s", 46880.0 / 1030},
		{"HotBucket/naive", "", 0},      // the baseline itself
		{"Solo", "", 0},                 // no baseline
		{"Codec/certfleet", "ns/op", 2}, // no rate metric: time ratio, higher is better
	} {
		r, ok := byName["Benchmark"+tc.name]
		if !ok {
			t.Fatalf("no row %s", tc.name)
		}
		if r.Metric != tc.metric || math.Abs(r.Ratio-tc.ratio) > 1e-9 {
			t.Errorf("%s: ratio %v on %q, want %v on %q", tc.name, r.Ratio, r.Metric, tc.ratio, tc.metric)
		}
	}
	if got := byName["BenchmarkHotBucket/limiter"].Package; got != "github.com/certfleet/certfleet/ratelimit" {
		t.Errorf("package %q", got)
	}
	if got := byName["BenchmarkSolo"].Metrics["allocs/op"]; got != 2 {
		t.Errorf("allocs/op = %v", got)
	}
}

func TestPrintMentionsRatio(t *testing.T) {
	res, _ := parse(strings.NewReader(sample))
	var b strings.Builder
	print(&b, Report{Machine: Machine{CPU: "x", CPUs: 2}, Rows: rows(res)})
	if !strings.Contains(b.String(), "45.51x decisions/s vs naive") || !strings.Contains(b.String(), "(baseline)") {
		t.Fatalf("table:\n%s", b.String())
	}
}
