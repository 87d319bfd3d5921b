package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/delivery"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/testenv"
)

// The README's "Operating it" section is a walkthrough an operator runs
// after `make run`. These tests keep it true: every command of its ```sh
// blocks runs, in order, in one bash, and must exit as stated and print what
// its "# expect:" lines say.
//
// What the test changes, and why: the commands run in a scratch directory
// (its ./bin holds the commands built from this tree, as `make build` would;
// `make` lines are skipped) whose .testenv/env holds the stack's settings
// with a fresh database and fresh topics and consumer group, so runs never
// see each other's buckets, overrides or dead letters; the worker's -listen
// port is replaced by a free one. $USER and $LOGNAME are unset, as in many
// containers.

const readmeSection = "## Operating it"

// example is one command of the README's walkthrough.
type example struct {
	line   int      // README line where the command starts
	cmd    string   // continuation lines joined
	expect []string // text its output must contain
	exit   int      // its exit status
}

// readmeExamples extracts the commands of the ```sh blocks of the
// "Operating it" section.
func readmeExamples(readme string) ([]example, error) {
	lines := strings.Split(readme, "\n")
	start := -1
	for i, l := range lines {
		if strings.HasPrefix(l, readmeSection) {
			start = i
			break
		}
	}
	if start < 0 {
		return nil, fmt.Errorf("README has no %q section", readmeSection)
	}
	var out []example
	var pending example
	inBlock := false
	cont := ""
	contLine := 0
	for i := start + 1; i < len(lines); i++ {
		l := lines[i]
		switch {
		case !inBlock && strings.HasPrefix(l, "## "):
			i = len(lines) // the section ends
			continue
		case !inBlock && strings.TrimSpace(l) == "```sh":
			inBlock = true
			continue
		case !inBlock:
			continue
		case strings.TrimSpace(l) == "```":
			if cont != "" || len(pending.expect) > 0 || pending.exit != 0 {
				return nil, fmt.Errorf("README line %d: the block ends inside a command or after an expectation", i+1)
			}
			inBlock = false
			continue
		}
		trimmed := strings.TrimSpace(l)
		if cont == "" {
			switch {
			case trimmed == "":
				continue
			case strings.HasPrefix(trimmed, "# expect:"):
				pending.expect = append(pending.expect, strings.TrimSpace(strings.TrimPrefix(trimmed, "# expect:")))
				continue
			case strings.HasPrefix(trimmed, "# exit:"):
				n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(trimmed, "# exit:")))
				if err != nil {
					return nil, fmt.Errorf("README line %d: %q: want # exit: N", i+1, trimmed)
				}
				pending.exit = n
				continue
			case strings.HasPrefix(trimmed, "#"):
				continue
			}
			contLine = i + 1
		}
		if c, ok := strings.CutSuffix(trimmed, "\\"); ok {
			cont += strings.TrimSpace(c) + " "
			continue
		}
		pending.cmd, pending.line = cont+trimmed, contLine
		out = append(out, pending)
		pending, cont = example{}, ""
	}
	if inBlock {
		return nil, errors.New("README: a ```sh block of " + readmeSection + " is not closed")
	}
	return out, nil
}

var (
	codeSpan   = regexp.MustCompile("`([^`]+)`")
	subcommand = regexp.MustCompile(`^[a-z][a-z-]*$`)
)

// uncovered returns the inline `certfleet ...` examples of the README (in
// any section) whose command and subcommand no tested command runs.
func uncovered(readme string, tested []example) []string {
	var prose strings.Builder
	fenced := false
	for _, l := range strings.Split(readme, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			fenced = !fenced
			continue
		}
		if !fenced {
			prose.WriteString(l + "\n")
		}
	}
	var missing []string
	for _, m := range codeSpan.FindAllStringSubmatch(prose.String(), -1) {
		fields := strings.Fields(m[1])
		if len(fields) < 2 || (fields[0] != "certfleet" && fields[0] != "./bin/certfleet") {
			continue
		}
		words := []string{"./bin/certfleet"}
		for _, f := range fields[1:] {
			if !subcommand.MatchString(f) || len(words) == 3 {
				break
			}
			words = append(words, f)
		}
		want := strings.Join(words, " ")
		found := false
		for _, ex := range tested {
			found = found || strings.Contains(ex.cmd+" ", want+" ")
		}
		if !found {
			missing = append(missing, strings.Join(fields, " "))
		}
	}
	return missing
}

func readREADME(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The extraction itself, on a small README.
func TestReadmeExamplesParse(t *testing.T) {
	got, err := readmeExamples("# x\n\n## Operating it\n\ntext\n\n```sh\nmake build   # comment\n# a comment\n# expect: one\n# expect: two\n# exit: 1\n./bin/certfleet a \\\n  --b c\n\nid=$(x)\n```\n\n```\nnot sh\n```\n\n## Next\n```sh\nignored\n```\n")
	if err != nil {
		t.Fatal(err)
	}
	want := []example{{line: 8, cmd: "make build   # comment"}, {line: 13, cmd: "./bin/certfleet a --b c", expect: []string{"one", "two"}, exit: 1}, {line: 16, cmd: "id=$(x)"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	for _, bad := range []string{"no section", "## Operating it\n```sh\n# expect: x\n```\n", "## Operating it\n```sh\na \\\n```\n", "## Operating it\n```sh\na\n"} {
		if _, err := readmeExamples(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	miss := uncovered("`certfleet dlq list` and `certfleet override get ID`, `certfleet.ratelimit.changes`\n```\ncertfleet nope\n```\n",
		[]example{{cmd: "./bin/certfleet dlq list --quiet"}})
	if fmt.Sprint(miss) != "[certfleet override get ID]" {
		t.Errorf("uncovered: %v", miss)
	}
}

// Every command of the README's walkthrough works as written against the
// local stack.
func TestReadmeOperatorExamples(t *testing.T) {
	s := testenv.Require(t)
	readme := readREADME(t)
	examples, err := readmeExamples(readme)
	if err != nil {
		t.Fatal(err)
	}
	if miss := uncovered(readme, examples); len(miss) > 0 {
		t.Errorf("README examples outside the tested %q block whose command no tested command runs (add one there): %q", readmeSection, miss)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// The scratch directory: ./bin, and .testenv/env with a fresh database,
	// topics and consumer group.
	dir := t.TempDir()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	sfx := hex.EncodeToString(b)
	tp := events.Topics{Requests: "readme.req." + sfx, Retry: "readme.retry." + sfx, DLQ: "readme.dlq." + sfx,
		Events: "readme.events." + sfx, RateLimitChanges: "readme.rl." + sfx}
	deliveries := "readme.deliveries." + sfx
	if err := events.Provision(ctx, &kafka.Client{Addr: kafka.TCP(s.KafkaBrokers...)},
		append(tp.Specs(2, 1), delivery.TopicSpec(deliveries, events.ProvisionOptions{Partitions: 2, ReplicationFactor: 1}))...); err != nil {
		t.Fatal(err)
	}
	s.DatabaseURL = testenv.FreshDatabase(t)
	env := s.EnvFile() + fmt.Sprintf("CERTFLEET_TOPIC_REQUESTS=%s\nCERTFLEET_TOPIC_RETRY=%s\nCERTFLEET_TOPIC_DLQ=%s\nCERTFLEET_TOPIC_EVENTS=%s\nCERTFLEET_TOPIC_RATELIMIT_CHANGES=%s\nCERTFLEET_WORKER_GROUP=readme-%s\nCERTFLEET_TOPIC_DELIVERIES=%s\n",
		tp.Requests, tp.Retry, tp.DLQ, tp.Events, tp.RateLimitChanges, sfx, deliveries)
	if err := os.MkdirAll(filepath.Join(dir, ".testenv"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".testenv", "env"), []byte(env), 0o600); err != nil {
		t.Fatal(err)
	}
	built := map[string]bool{}
	sawBuild, certfleetCmds := false, 0
	binRef := regexp.MustCompile(`\./bin/([a-z-]+)`)
	listen := regexp.MustCompile(`-listen \S+`)
	var run []example
	for _, ex := range examples {
		if strings.HasPrefix(ex.cmd, "make ") {
			sawBuild = sawBuild || strings.HasPrefix(ex.cmd, "make build")
			continue
		}
		for _, m := range binRef.FindAllStringSubmatch(ex.cmd, -1) {
			if !built[m[1]] {
				if _, err := testenv.BuildCommand(ctx, filepath.Join(dir, "bin"), m[1], "../"+m[1]); err != nil {
					t.Fatal(err)
				}
				built[m[1]] = true
			}
		}
		if strings.Contains(ex.cmd, "./bin/certfleet ") {
			certfleetCmds++
		}
		if strings.HasPrefix(ex.cmd, "./bin/issuer-worker ") || strings.HasPrefix(ex.cmd, "./bin/certfleet agent ") {
			ex.cmd = listen.ReplaceAllString(ex.cmd, "-listen "+testenv.FreeAddr(t, "127.0.0.1"))
		}
		run = append(run, ex)
	}
	if !sawBuild || certfleetCmds == 0 {
		t.Fatalf("the %q block should say `make build` and run ./bin/certfleet commands (found %d)", readmeSection, certfleetCmds)
	}

	// One bash runs every command in order; each command's output, exit
	// status and time go to files, and the first unexpected exit status
	// stops the run.
	results := t.TempDir()
	var script strings.Builder
	script.WriteString(`__d=$1
__run() {
	__i=$1 __want=$2
	__c=$(cat)
	__t0=$EPOCHREALTIME
	eval "$__c" >"$__d/$__i.out" 2>&1 </dev/null
	__code=$?
	echo "$__code $__t0 $EPOCHREALTIME" >"$__d/$__i.code"
	[ "$__code" = "$__want" ] || exit 100
}
`)
	for i, ex := range run {
		fmt.Fprintf(&script, "__run %d %d <<'__CERTFLEET_README__'\n%s\n__CERTFLEET_README__\n", i, ex.exit, ex.cmd)
	}
	cmd := exec.CommandContext(ctx, "bash", "-c", script.String(), "readme", results)
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); !strings.HasPrefix(k, "CERTFLEET_") && k != "USER" && k != "LOGNAME" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	// The worker runs in the background of this bash: its process group
	// goes when the test ends, before the database is dropped.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopGroup(cmd.Process.Pid) })
	runErr := cmd.Wait()
	t.Logf("%d README commands in %v", len(run), time.Since(t0).Round(time.Millisecond))

	workerLog, _ := os.ReadFile(filepath.Join(dir, ".testenv", "operator-worker.log"))
	failed := false
	for i, ex := range run {
		codeLine, err := os.ReadFile(filepath.Join(results, fmt.Sprintf("%d.code", i)))
		if err != nil {
			t.Errorf("README line %d: not run (an earlier command failed): %s", ex.line, ex.cmd)
			failed = true
			continue
		}
		var code int
		var from, to float64
		fmt.Sscan(string(codeLine), &code, &from, &to)
		output, _ := os.ReadFile(filepath.Join(results, fmt.Sprintf("%d.out", i)))
		var missing []string
		for _, want := range ex.expect {
			if !strings.Contains(string(output), want) {
				missing = append(missing, want)
			}
		}
		if code != ex.exit || len(missing) > 0 {
			t.Errorf("README line %d: %s\nexit status %d (want %d), output lacks %q:\n%s", ex.line, ex.cmd, code, ex.exit, missing, output)
			failed = true
			continue
		}
		t.Logf("%6.2fs  %s", to-from, ex.cmd)
		if testing.Verbose() && len(output) > 0 {
			t.Logf("%s", strings.TrimRight(string(output), "\n"))
		}
	}
	if runErr != nil && !failed {
		t.Errorf("bash: %v", runErr)
		failed = true
	}
	if failed {
		t.Logf("worker log (last lines):\n%s", testenv.Tail(string(workerLog), 30))
	}
	// Worker log lines are JSON objects naming each key once.
	sc := bufio.NewScanner(strings.NewReader(string(workerLog)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	n := 0
	for ; sc.Scan(); n++ {
		if k := repeatedJSONKey(sc.Text()); k != "" {
			t.Errorf("worker log line repeats the key %q: %s", k, sc.Text())
		}
	}
	if n == 0 && !failed {
		t.Errorf("the worker logged nothing to .testenv/operator-worker.log")
	}
}

// stopGroup ends what is left of the process group pgid: SIGTERM, then
// SIGKILL after 20 s.
func stopGroup(pgid int) {
	if syscall.Kill(-pgid, syscall.SIGTERM) != nil {
		return
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if syscall.Kill(-pgid, 0) != nil {
			return
		}
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// repeatedJSONKey returns a top-level key that occurs twice in the JSON
// object line ("" when none does, or line is not an object).
func repeatedJSONKey(line string) string {
	dec := json.NewDecoder(strings.NewReader(line))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return ""
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		k, _ := tok.(string)
		if seen[k] {
			return k
		}
		seen[k] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return ""
		}
	}
	return ""
}
