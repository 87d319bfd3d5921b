// Command benchtable turns `go test -bench` output (on stdin) into one table
// of every benchmark against its baseline measured in the same run, printed
// to stdout and written as JSON.
//
// Convention: a benchmark compares implementations as sub-benchmarks, and
// the one named "baseline" or "naive" is the baseline. Each other
// sub-benchmark gets a row with its ratio to the baseline: on the first
// metric ending in "/s" (a rate: higher is better) when both report one,
// else on ns/op (baseline time / candidate time: higher is better).
// Benchmarks without a baseline get a row with no ratio.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
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
	N       int64              `json:"n"`
	Metrics map[string]float64 `json:"metrics"` // unit -> value, including ns/op
}

// Row is one line of the table.
type Row struct {
	Result
	Baseline string  `json:"baseline,omitempty"`
	Metric   string  `json:"ratio_metric,omitempty"`
	Ratio    float64 `json:"ratio,omitempty"` // > 1 means better than the baseline
}

// Report is what the JSON file holds.
type Report struct {
	When    time.Time `json:"when"`
	Machine Machine   `json:"machine"`
	Rows    []Row     `json:"rows"`
}

// Machine says where the numbers were measured.
type Machine struct {
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
	CPU       string `json:"cpu"`
	CPUs      int    `json:"cpus"`
	Settings  string `json:"settings,omitempty"`
}

func main() {
	jsonPath := flag.String("json", "", "also write the table as JSON to this file")
	settings := flag.String("settings", "", "free text describing the run's settings, printed and stored")
	flag.Parse()
	results, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	rep := Report{When: time.Now().UTC(), Machine: machine(*settings), Rows: rows(results)}
	print(os.Stdout, rep)
	if *jsonPath != "" {
		data, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(*jsonPath, append(data, '\n'), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "benchtable:", err)
			os.Exit(1)
		}
	}
	if len(results) == 0 {
		fmt.Fprintln(os.Stderr, "benchtable: no benchmark results on stdin")
		os.Exit(1)
	}
}

// parse reads `go test -bench` text output. Lines it does not know pass
// through to stderr so failures stay visible.
func parse(r io.Reader) ([]Result, error) {
	var out []Result
	pkg := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		if !strings.HasPrefix(line, "Benchmark") {
			if strings.HasPrefix(line, "--- FAIL") || strings.HasPrefix(line, "FAIL") || strings.Contains(line, "panic:") {
				fmt.Fprintln(os.Stderr, line)
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
		res := Result{Package: pkg, Name: trimProcs(f[0]), N: n, Metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("line %q: value %q: %w", line, f[i], err)
			}
			res.Metrics[f[i+1]] = v
		}
		if i := strings.LastIndexByte(res.Name, '/'); i >= 0 {
			res.Group, res.Variant = res.Name[:i], res.Name[i+1:]
		} else {
			res.Group, res.Variant = res.Name, ""
		}
		out = append(out, res)
	}
	return out, sc.Err()
}

// trimProcs drops the -N GOMAXPROCS suffix go test appends.
func trimProcs(name string) string {
	if i := strings.LastIndexByte(name, '-'); i > 0 {
		if _, err := strconv.Atoi(name[i+1:]); err == nil {
			return name[:i]
		}
	}
	return name
}

func isBaseline(variant string) bool {
	v := strings.ToLower(variant)
	return v == "baseline" || v == "naive" || strings.HasPrefix(v, "baseline") || strings.HasPrefix(v, "naive")
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
		if b, ok := base[r.Package+" "+r.Group]; ok && !isBaseline(r.Variant) {
			row.Baseline = b.Variant
			row.Metric, row.Ratio = ratio(r, b)
		}
		out = append(out, row)
	}
	return out
}

// ratio compares on the first shared rate metric (alphabetically, so the
// choice is stable), else on ns/op.
func ratio(c, b Result) (string, float64) {
	var rates []string
	for unit := range c.Metrics {
		if strings.HasSuffix(unit, "/s") {
			if _, ok := b.Metrics[unit]; ok {
				rates = append(rates, unit)
			}
		}
	}
	sort.Strings(rates)
	if len(rates) > 0 && b.Metrics[rates[0]] > 0 {
		return rates[0], c.Metrics[rates[0]] / b.Metrics[rates[0]]
	}
	if c.Metrics["ns/op"] > 0 && b.Metrics["ns/op"] > 0 {
		return "ns/op", b.Metrics["ns/op"] / c.Metrics["ns/op"]
	}
	return "", 0
}

func print(w io.Writer, rep Report) {
	m := rep.Machine
	fmt.Fprintf(w, "certfleet benchmarks, %s\nmachine: %s, %d CPUs (%s), %s\n", rep.When.Format(time.RFC3339), m.CPU, m.CPUs, m.OS, m.GoVersion)
	if m.Settings != "" {
		fmt.Fprintf(w, "settings: %s\n", m.Settings)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "package\tbenchmark\tvariant\tkey metrics\tvs baseline\t")
	for _, r := range rep.Rows {
		vs := "-"
		if isBaseline(r.Variant) {
			vs = "(baseline)"
		} else if r.Metric != "" {
			vs = fmt.Sprintf("%.2fx %s vs %s", r.Ratio, r.Metric, r.Baseline)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", shortPkg(r.Package), r.Group, r.Variant, metrics(r.Metrics), vs)
	}
	tw.Flush()
}

func shortPkg(p string) string { return strings.TrimPrefix(p, "github.com/certfleet/certfleet/") }

// metrics renders custom metrics first (they carry the point of the
// benchmark), then the standard ones in go test's order.
func metrics(m map[string]float64) string {
	std := []string{"ns/op", "MB/s", "B/op", "allocs/op"}
	var custom, out []string
	for unit := range m {
		if !slices.Contains(std, unit) {
			custom = append(custom, unit)
		}
	}
	sort.Strings(custom)
	for _, unit := range append(custom, std...) {
		if v, ok := m[unit]; ok {
			out = append(out, strconv.FormatFloat(v, 'g', 4, 64)+" "+unit)
		}
	}
	return strings.Join(out, ", ")
}

func machine(settings string) Machine {
	m := Machine{GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH, CPUs: runtime.NumCPU(), Settings: settings, CPU: "unknown"}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		m.OS += " " + strings.TrimSpace(string(out))
	}
	return m
}
