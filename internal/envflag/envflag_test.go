package envflag

import (
	"bytes"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

type vals struct {
	s string
	n int
	d time.Duration
	b bool
}

func parse(t *testing.T, args []string, env map[string]string) (vals, *Set, error) {
	t.Helper()
	var v vals
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	s := New(fs, func(k string) string { return env[k] })
	s.String(&v.s, "name", "T_NAME", "def", "a name")
	s.Int(&v.n, "count", "T_COUNT", 7, "a count")
	s.Duration(&v.d, "wait", "T_WAIT", time.Second, "a wait")
	s.Bool(&v.b, "on", "T_ON", true, "a switch")
	return v, s, s.Parse(args)
}

func TestPrecedence(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want vals
	}{
		{"defaults", nil, nil, vals{"def", 7, time.Second, true}},
		{"empty env is unset", nil, map[string]string{"T_NAME": "", "T_COUNT": ""}, vals{"def", 7, time.Second, true}},
		{"env over default", nil, map[string]string{"T_NAME": "e", "T_COUNT": "3", "T_WAIT": "2m", "T_ON": "false"},
			vals{"e", 3, 2 * time.Minute, false}},
		{"flag over env", []string{"-name", "f", "-count", "9", "-wait", "5s", "-on=true"},
			map[string]string{"T_NAME": "e", "T_COUNT": "3", "T_WAIT": "2m", "T_ON": "false"}, vals{"f", 9, 5 * time.Second, true}},
		{"flag over default", []string{"-count", "0", "-on=false"}, nil, vals{"def", 0, time.Second, false}},
		{"bool env forms", nil, map[string]string{"T_ON": "0"}, vals{"def", 7, time.Second, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := parse(t, tc.args, tc.env)
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestBadEnvironmentNamesTheFlag(t *testing.T) {
	env := map[string]string{"T_COUNT": "many", "T_WAIT": "soon", "T_ON": "yes"}
	_, _, err := parse(t, nil, env)
	if err == nil {
		t.Fatal("bad environment accepted")
	}
	for _, want := range []string{`-count: T_COUNT="many" is not an integer`, `-wait: T_WAIT="soon" is not a duration`,
		`-on: T_ON="yes" is not true or false`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// A flag on the command line replaces its variable: no error for it.
	v, _, err := parse(t, []string{"-count", "4", "-wait", "1m", "-on=false"}, env)
	if err != nil || v.n != 4 || v.d != time.Minute || v.b {
		t.Fatalf("flags given: %+v, %v", v, err)
	}
	_, _, err = parse(t, []string{"-count", "4"}, env)
	if err == nil || strings.Contains(err.Error(), "-count") || !strings.Contains(err.Error(), "-wait") {
		t.Fatalf("only -wait and -on should be reported: %v", err)
	}
}

func TestUsageNamesTheVariable(t *testing.T) {
	_, s, _ := parse(t, nil, nil)
	var buf bytes.Buffer
	s.SetOutput(&buf)
	s.PrintDefaults()
	for _, want := range []string{"a name (env T_NAME)", "a count (env T_COUNT)", "a wait (env T_WAIT)", "a switch (env T_ON)"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("usage lacks %q:\n%s", want, buf.String())
		}
	}
}

func TestFlagErrorsComeFirst(t *testing.T) {
	_, _, err := parse(t, []string{"-bogus"}, map[string]string{"T_COUNT": "many"})
	if err == nil || !strings.Contains(err.Error(), "flag provided but not defined") {
		t.Fatalf("err = %v", err)
	}
}
