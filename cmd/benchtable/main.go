// Command benchtable turns `go test -bench` output (on stdin) into one table
// of every benchmark against its baseline measured in the same run, printed
// to stdout and written as JSON, headed by the machine and the settings.
//
// Convention: a benchmark compares implementations as sub-benchmarks, and
// the one whose name starts with "baseline" or "naive" is the baseline of
// its siblings. Each other sub-benchmark is compared with it on every metric
// both report whose direction is known (see direction), the primary one
// first: the first metric ending in "/s" (a rate), else ns/op. A rate is
// better higher; times, memory and allocations are better lower. ns/op is
// left out when a rate is compared (it is the same figure inverted).
//
// Each comparison's factor is printed as "N.NNx better" or "N.NNx worse"
// (N >= 1): how many times higher a better rate, or lower a better time or
// memory figure, the candidate's is than the baseline's.
//
// A comparison measured several times in one run (groups ending in /run_N,
// as the pipeline's issuance benchmark does with CERTFLEET_BENCH_RUNS) is
// also summed up under the table: each candidate's primary ratio (its gain,
// > 1 better) run by run, with the lowest and highest.
//
// benchtable exits non-zero when the input holds no results or reports a
// failure (the table is still printed and written), and lists benchmarks
// that have no baseline.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is one benchmark line.
type Result struct {
	Package string             `json:"package"`
	Name    string             `json:"name"`    // full name without the -GOMAXPROCS suffix
	Group   string             `json:"group"`   // name without its last element
	Variant string             `json:"variant"` // last element
	Procs   int                `json:"gomaxprocs"`
	N       int64              `json:"n"`
	Metrics map[string]float64 `json:"metrics"` // unit -> value, including ns/op
}

// Comparison is one metric of a candidate against the same metric of its
// baseline.
type Comparison struct {
	Metric   string  `json:"metric"`
	Value    float64 `json:"value"`
	Baseline float64 `json:"baseline"`
	// Ratio is Value / Baseline.
	Ratio float64 `json:"ratio"`
	// Gain is how many times better than the baseline: Ratio for a metric
	// better higher, 1/Ratio for one better lower. > 1 means better. +Inf
	// (a cost of zero against a cost) is null in JSON.
	Gain float64 `json:"gain"`
}

// MarshalJSON writes an infinite Gain as null: JSON has no infinity.
func (c Comparison) MarshalJSON() ([]byte, error) {
	type plain Comparison
	var gain *float64
	if !math.IsInf(c.Gain, 0) && !math.IsNaN(c.Gain) {
		gain = &c.Gain
	}
	return json.Marshal(struct {
		plain
		Gain *float64 `json:"gain"`
	}{plain(c), gain})
}

// Row is one benchmark result and, for a candidate, its comparisons.
type Row struct {
	Result
	Baseline    string       `json:"baseline,omitempty"`   // variant name of the baseline
	BaselineN   int64        `json:"baseline_n,omitempty"` // its iterations
	Metric      string       `json:"ratio_metric,omitempty"`
	Ratio       float64      `json:"ratio,omitempty"` // Gain of the primary metric: > 1 means better than the baseline
	Comparisons []Comparison `json:"comparisons,omitempty"`
}

// Report is what the JSON file holds.
type Report struct {
	When       time.Time    `json:"when"`    // end of the run
	Elapsed    string       `json:"elapsed"` // from benchtable's start to the end of its input
	Machine    Machine      `json:"machine"`
	Settings   string       `json:"settings,omitempty"`
	Rows       []Row        `json:"rows"`
	Runs       []RunSummary `json:"runs,omitempty"`        // comparisons measured more than once
	NoBaseline []string     `json:"no_baseline,omitempty"` // benchmarks without a baseline in this run
	Failures   []string     `json:"failures,omitempty"`    // FAIL and panic lines of the input
}

// RunSummary is one candidate's primary comparison over the runs of a
// group measured more than once (GROUP/run_1, GROUP/run_2, ...).
type RunSummary struct {
	Package   string    `json:"package"`
	Group     string    `json:"group"` // without /run_N
	Candidate string    `json:"candidate"`
	Baseline  string    `json:"baseline"`
	Metric    string    `json:"metric"`
	Gains     []float64 `json:"gains"` // primary gain per run, in run order
	Min       float64   `json:"min"`
	Max       float64   `json:"max"`
}

// Machine says where the numbers were measured.
type Machine struct {
	CPU        string `json:"cpu"`         // model name, clock, hypervisor
	CPUs       int    `json:"cpus"`        // logical CPUs this process may use
	GOMAXPROCS []int  `json:"gomaxprocs"`  // of the benchmark processes (their -N suffix)
	MemoryMiB  int64  `json:"memory_mib"`  // MemTotal
	OS         string `json:"os"`          // GOOS/GOARCH and kernel release
	GoVersion  string `json:"go_version"`  // of the toolchain that ran benchtable (and the benchmarks)
	LoadStart  string `json:"load_start"`  // /proc/loadavg 1, 5, 15 min when benchtable started
	LoadEnd    string `json:"load_end"`    // and when its input ended
	TestCPU    string `json:"go_test_cpu"` // the "cpu:" line of go test
}

func main() {
	jsonPath := flag.String("json", "", "also write the table as JSON to this file")
	settings := flag.String("settings", "", "free text describing the run's settings, printed and stored")
	flag.Parse()
	start := time.Now()
	load := loadAvg()
	in, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	m := machine()
	m.LoadStart, m.LoadEnd, m.TestCPU, m.GOMAXPROCS = load, loadAvg(), in.cpu, procs(in.results)
	rep := Report{When: time.Now().UTC(), Elapsed: time.Since(start).Round(time.Second).String(), Machine: m,
		Settings: *settings, Rows: rows(in.results), Failures: in.failures}
	rep.NoBaseline = noBaseline(rep.Rows)
	rep.Runs = runSummaries(rep.Rows)
	print(os.Stdout, rep)
	if *jsonPath != "" {
		data, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchtable:", err)
			os.Exit(1)
		}
		if err := os.WriteFile(*jsonPath, append(data, '\n'), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "benchtable:", err)
			os.Exit(1)
		}
	}
	switch {
	case len(in.results) == 0:
		fmt.Fprintln(os.Stderr, "benchtable: no benchmark results on stdin")
		os.Exit(1)
	case len(in.failures) > 0:
		fmt.Fprintf(os.Stderr, "benchtable: %d failure lines in the input\n", len(in.failures))
		os.Exit(1)
	}
}

// input is what parse found.
type input struct {
	results  []Result
	cpu      string   // go test's "cpu:" line
	failures []string // FAIL and panic lines
}

// parse reads `go test -bench` text output. Failure lines also go to stderr
// as they come, so they stay visible.
func parse(r io.Reader) (input, error) {
	var in input
	pkg := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		if c, ok := strings.CutPrefix(line, "cpu: "); ok {
			in.cpu = strings.TrimSpace(c)
			continue
		}
		if !strings.HasPrefix(line, "Benchmark") {
			if strings.HasPrefix(line, "--- FAIL") || strings.HasPrefix(line, "FAIL") || strings.Contains(line, "panic:") {
				fmt.Fprintln(os.Stderr, line)
				in.failures = append(in.failures, strings.TrimSpace(line))
			}
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || len(f)%2 != 0 {
			continue // a benchmark's own log line
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		name, procs := splitProcs(f[0])
		res := Result{Package: pkg, Name: name, Procs: procs, N: n, Metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return in, fmt.Errorf("line %q: value %q: %w", line, f[i], err)
			}
			res.Metrics[f[i+1]] = v
		}
		if i := strings.LastIndexByte(res.Name, '/'); i >= 0 {
			res.Group, res.Variant = res.Name[:i], res.Name[i+1:]
		} else {
			res.Group, res.Variant = res.Name, ""
		}
		in.results = append(in.results, res)
	}
	return in, sc.Err()
}

// splitProcs drops the -N GOMAXPROCS suffix go test appends and returns N;
// go test appends none when GOMAXPROCS is 1.
func splitProcs(name string) (string, int) {
	if i := strings.LastIndexByte(name, '-'); i > 0 {
		if n, err := strconv.Atoi(name[i+1:]); err == nil {
			return name[:i], n
		}
	}
	return name, 1
}

func procs(results []Result) []int {
	var out []int
	for _, r := range results {
		if !slices.Contains(out, r.Procs) {
			out = append(out, r.Procs)
		}
	}
	slices.Sort(out)
	return out
}

func isBaseline(variant string) bool {
	v := strings.ToLower(variant)
	return strings.HasPrefix(v, "baseline") || strings.HasPrefix(v, "naive")
}

// isFloor reports a same-run reference that is neither candidate nor
// baseline (a "floor_" variant: what the machine costs any round trip),
// shown with its own figures, uncompared.
func isFloor(variant string) bool {
	return strings.HasPrefix(strings.ToLower(variant), "floor")
}

// rows pairs every candidate with the baseline of its group.
func rows(results []Result) []Row {
	base := map[string]Result{}
	for _, r := range results {
		if isBaseline(r.Variant) {
			base[r.Package+" "+r.Group] = r
		}
	}
	var out []Row
	for _, r := range results {
		row := Row{Result: r}
		if b, ok := base[r.Package+" "+r.Group]; ok && !isBaseline(r.Variant) && !isFloor(r.Variant) {
			row.Baseline, row.BaselineN = b.Variant, b.N
			row.Comparisons = compare(r, b)
			if len(row.Comparisons) > 0 {
				row.Metric, row.Ratio = row.Comparisons[0].Metric, row.Comparisons[0].Gain
			}
		}
		out = append(out, row)
	}
	return out
}

// direction is +1 for a metric better higher, -1 for one better lower and
// 0 when unknown (such metrics are not compared).
func direction(unit string) int {
	switch {
	case strings.HasSuffix(unit, "/s"):
		return +1
	case unit == "ns/op", unit == "B/op", unit == "allocs/op",
		strings.HasSuffix(unit, "-ms"), strings.HasSuffix(unit, "MiB"), strings.HasPrefix(unit, "B/"):
		return -1
	}
	return 0
}

// compare lists the metrics c and b share: the primary one (the first
// shared rate alphabetically, so the choice is stable, else ns/op), then
// custom metrics alphabetically, then B/op and allocs/op.
func compare(c, b Result) []Comparison {
	var rates, custom []string
	for unit := range c.Metrics {
		if _, ok := b.Metrics[unit]; !ok || direction(unit) == 0 {
			continue
		}
		switch {
		case strings.HasSuffix(unit, "/s"):
			rates = append(rates, unit)
		case !slices.Contains([]string{"ns/op", "B/op", "allocs/op"}, unit):
			custom = append(custom, unit)
		}
	}
	sort.Strings(rates)
	sort.Strings(custom)
	var order []string
	if len(rates) > 0 {
		order = append(order, rates...) // ns/op is the first rate inverted
	} else if _, ok := b.Metrics["ns/op"]; ok {
		order = append(order, "ns/op")
	}
	order = append(order, custom...)
	for _, unit := range []string{"B/op", "allocs/op"} {
		if _, ok := b.Metrics[unit]; ok {
			if _, ok := c.Metrics[unit]; ok {
				order = append(order, unit)
			}
		}
	}
	var out []Comparison
	for _, unit := range order {
		cmp := Comparison{Metric: unit, Value: c.Metrics[unit], Baseline: b.Metrics[unit]}
		if cmp.Baseline != 0 {
			cmp.Ratio = cmp.Value / cmp.Baseline
		}
		switch {
		case cmp.Value == 0 && cmp.Baseline == 0:
			cmp.Ratio, cmp.Gain = 1, 1
		case direction(unit) > 0:
			cmp.Gain = cmp.Ratio
		case cmp.Value != 0:
			cmp.Gain = cmp.Baseline / cmp.Value
		default:
			cmp.Gain = math.Inf(1) // a cost of zero against a cost
		}
		out = append(out, cmp)
	}
	return out
}

// runGroup splits GROUP/run_N into GROUP and N; ok is false for any other
// group.
func runGroup(group string) (base string, n int, ok bool) {
	i := strings.LastIndex(group, "/run_")
	if i < 0 {
		return "", 0, false
	}
	n, err := strconv.Atoi(group[i+len("/run_"):])
	if err != nil || n < 1 {
		return "", 0, false
	}
	return group[:i], n, true
}

// runSummaries lists, for every candidate compared in two or more runs of
// a group, its primary gain run by run.
func runSummaries(rows []Row) []RunSummary {
	type key struct{ pkg, group, candidate, baseline, metric string }
	type run struct {
		n    int
		gain float64
	}
	byKey := map[key][]run{}
	var order []key
	for _, r := range rows {
		base, n, ok := runGroup(r.Group)
		if !ok || r.Baseline == "" || r.Metric == "" {
			continue
		}
		k := key{r.Package, base, r.Variant, r.Baseline, r.Metric}
		if _, seen := byKey[k]; !seen {
			order = append(order, k)
		}
		byKey[k] = append(byKey[k], run{n, r.Ratio})
	}
	var out []RunSummary
	for _, k := range order {
		runs := byKey[k]
		if len(runs) < 2 {
			continue
		}
		sort.SliceStable(runs, func(i, j int) bool { return runs[i].n < runs[j].n })
		s := RunSummary{Package: k.pkg, Group: k.group, Candidate: k.candidate, Baseline: k.baseline, Metric: k.metric,
			Min: math.Inf(1), Max: math.Inf(-1)}
		for _, r := range runs {
			s.Gains = append(s.Gains, r.gain)
			s.Min, s.Max = min(s.Min, r.gain), max(s.Max, r.gain)
		}
		out = append(out, s)
	}
	return out
}

// noBaseline names the candidates that had nothing to compare with.
func noBaseline(rows []Row) []string {
	var out []string
	for _, r := range rows {
		if !isBaseline(r.Variant) && len(r.Comparisons) == 0 {
			out = append(out, shortPkg(r.Package)+" "+r.Name)
		}
	}
	return out
}

func print(w io.Writer, rep Report) {
	m := rep.Machine
	fmt.Fprintf(w, "certfleet benchmarks, %s (run took %s)\n", rep.When.Format(time.RFC3339), rep.Elapsed)
	fmt.Fprintf(w, "machine: %s, %d CPUs, GOMAXPROCS %s, %s RAM, %s, %s\n",
		m.CPU, m.CPUs, ints(m.GOMAXPROCS), mib(m.MemoryMiB), m.OS, m.GoVersion)
	if m.LoadStart != "" || m.LoadEnd != "" {
		fmt.Fprintf(w, "load average (1/5/15 min): %s at start, %s at end\n", orDash(m.LoadStart), orDash(m.LoadEnd))
	}
	if rep.Settings != "" {
		fmt.Fprintf(w, "settings: %s\n", rep.Settings)
	}
	fmt.Fprintln(w, "each candidate against the baseline sub-benchmark of the same benchmark, same run; NNx better/worse: how many times higher a rate, or lower a time or memory figure, than the baseline's")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "package\tbenchmark\tcandidate vs baseline\tn\tmetric\tcandidate\tbaseline\tvs baseline")
	hasCandidate := map[string]bool{}
	for _, r := range rep.Rows {
		if r.Baseline != "" {
			hasCandidate[r.Package+" "+r.Group] = true
		}
	}
	for _, r := range rep.Rows {
		pkg, name := shortPkg(r.Package), r.Group
		switch {
		case isBaseline(r.Variant) && hasCandidate[r.Package+" "+r.Group]:
			continue // its figures are in its candidates' baseline column
		case len(r.Comparisons) > 0:
			for i, c := range r.Comparisons {
				lead := fmt.Sprintf("%s\t%s\t%s vs %s\t%d vs %d", pkg, name, r.Variant, r.Baseline, r.N, r.BaselineN)
				if i > 0 {
					lead = "\t\t\t"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", lead, c.Metric, num(c.Value, c.Metric), num(c.Baseline, c.Metric), gain(c.Gain))
			}
		default: // no baseline (or a baseline alone): its figures, uncompared
			what := r.Variant + " (no baseline)"
			if isFloor(r.Variant) {
				what = r.Variant + " (same-run floor)"
			}
			if isBaseline(r.Variant) {
				what = r.Variant + " (baseline without candidates)"
			}
			if r.Variant == "" {
				name, what = r.Name, "(no baseline)"
			}
			for i, unit := range units(r.Metrics) {
				lead := fmt.Sprintf("%s\t%s\t%s\t%d", pkg, name, what, r.N)
				if i > 0 {
					lead = "\t\t\t"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t-\t-\n", lead, unit, num(r.Metrics[unit], unit))
			}
		}
	}
	tw.Flush()
	if len(rep.Runs) > 0 {
		fmt.Fprintln(w, "\nruns of the same comparison (ratio of the primary metric to the baseline, > 1 better):")
		for _, r := range rep.Runs {
			gains := make([]string, len(r.Gains))
			for i, g := range r.Gains {
				gains[i] = fmt.Sprintf("%.2fx", g)
			}
			fmt.Fprintf(w, "  %s %s %s vs %s, %s: %s (lowest %.2fx, highest %.2fx)\n",
				shortPkg(r.Package), r.Group, r.Candidate, r.Baseline, r.Metric, strings.Join(gains, " "), r.Min, r.Max)
		}
	}
	if len(rep.NoBaseline) > 0 {
		fmt.Fprintf(w, "\nno baseline in this run: %s\n", strings.Join(rep.NoBaseline, ", "))
	}
	if len(rep.Failures) > 0 {
		fmt.Fprintf(w, "\nFAILURES (the table is incomplete):\n  %s\n", strings.Join(rep.Failures, "\n  "))
	}
}

func gain(g float64) string {
	switch {
	case math.IsInf(g, 1):
		return "baseline's cost, candidate's none"
	case g == 0:
		return "n/a"
	case fmt.Sprintf("%.2f", g) == "1.00" || fmt.Sprintf("%.2f", 1/g) == "1.00":
		return "1.00x same"
	case g > 1:
		return fmt.Sprintf("%.2fx better", g)
	default:
		return fmt.Sprintf("%.2fx worse", 1/g)
	}
}

// num prints a value of unit with four significant digits or as a whole
// number, never with an exponent. Counts (ns/op, B/op, allocs/op) are whole.
func num(v float64, unit string) string {
	a := math.Abs(v)
	switch {
	case a >= 1000 || a == 0 || unit == "ns/op" || unit == "B/op" || unit == "allocs/op":
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

func shortPkg(p string) string { return strings.TrimPrefix(p, "github.com/certfleet/certfleet/") }

// units lists custom metrics first (they carry the point of the benchmark),
// then the standard ones in go test's order.
func units(m map[string]float64) []string {
	std := []string{"ns/op", "MB/s", "B/op", "allocs/op"}
	var custom []string
	for unit := range m {
		if !slices.Contains(std, unit) {
			custom = append(custom, unit)
		}
	}
	sort.Strings(custom)
	var out []string
	for _, unit := range append(custom, std...) {
		if _, ok := m[unit]; ok {
			out = append(out, unit)
		}
	}
	return out
}

func ints(v []int) string {
	if len(v) == 0 {
		return "-"
	}
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func mib(n int64) string {
	if n <= 0 {
		return "unknown"
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/1024)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func machine() Machine {
	m := Machine{GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH, CPUs: runtime.NumCPU(), CPU: "unknown"}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		m.CPU = cpuModel(string(data))
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		m.MemoryMiB = memTotalMiB(string(data))
	}
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		m.OS += " kernel " + strings.TrimSpace(string(out))
	}
	return m
}

// cpuModel is the first processor's model name, clock and, when the
// hypervisor flag is set, "virtual machine".
func cpuModel(cpuinfo string) string {
	var model, mhz string
	virtual := false
	for _, l := range strings.Split(cpuinfo, "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case k == "model name" && model == "":
			model = v
		case k == "cpu MHz" && mhz == "":
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				mhz = fmt.Sprintf("%.0f MHz", f)
			}
		case k == "flags" && slices.Contains(strings.Fields(v), "hypervisor"):
			virtual = true
		}
	}
	if model == "" {
		return "unknown"
	}
	out := model
	if mhz != "" {
		out += " @ " + mhz
	}
	if virtual {
		out += " (virtual machine)"
	}
	return out
}

func memTotalMiB(meminfo string) int64 {
	for _, l := range strings.Split(meminfo, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb >> 10
		}
	}
	return 0
}

func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
