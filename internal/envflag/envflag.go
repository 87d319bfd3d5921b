// Package envflag gives a command's flags an environment fallback, the one
// way certfleet's binaries read their configuration: a flag given on the
// command line wins, else its environment variable when set and not empty,
// else its default. It wraps a stdlib flag.FlagSet, so parsing, -h and the
// flag syntax are the flag package's.
//
// An environment value that does not parse is an error naming the flag and
// the variable, unless the flag was given on the command line (then the
// variable is not used). Each flag's usage ends with "(env NAME)".
package envflag

import (
	"errors"
	"flag"
	"fmt"
	"strconv"
	"time"
)

// Set is a flag.FlagSet whose flags fall back to environment variables.
type Set struct {
	*flag.FlagSet
	getenv func(string) string
	bad    []badEnv // environment values that did not parse, in definition order
}

type badEnv struct {
	flag string
	err  error
}

// New wraps fs; getenv reads the environment (os.Getenv, or a map in tests).
func New(fs *flag.FlagSet, getenv func(string) string) *Set {
	return &Set{FlagSet: fs, getenv: getenv}
}

// lookup returns the environment value of env, or def when it is unset or
// empty; a value parse refuses is recorded against the flag.
func lookup[T any](s *Set, name, env string, def T, parse func(string) (T, error), want string) T {
	v := s.getenv(env)
	if v == "" {
		return def
	}
	x, err := parse(v)
	if err != nil {
		s.bad = append(s.bad, badEnv{name, fmt.Errorf("-%s: %s=%q is not %s", name, env, v, want)})
		return def
	}
	return x
}

func usage(u, env string) string { return u + " (env " + env + ")" }

// String defines a string flag with fallback env.
func (s *Set) String(p *string, name, env, def, u string) {
	s.StringVar(p, name, lookup(s, name, env, def, func(v string) (string, error) { return v, nil }, ""), usage(u, env))
}

// Int defines an int flag with fallback env.
func (s *Set) Int(p *int, name, env string, def int, u string) {
	s.IntVar(p, name, lookup(s, name, env, def, strconv.Atoi, "an integer"), usage(u, env))
}

// Duration defines a duration flag (time.ParseDuration) with fallback env.
func (s *Set) Duration(p *time.Duration, name, env string, def time.Duration, u string) {
	s.DurationVar(p, name, lookup(s, name, env, def, time.ParseDuration, "a duration like 30s or 5m"), usage(u, env))
}

// Bool defines a bool flag (strconv.ParseBool: true, false, 1, 0, ...) with
// fallback env.
func (s *Set) Bool(p *bool, name, env string, def bool, u string) {
	s.BoolVar(p, name, lookup(s, name, env, def, strconv.ParseBool, "true or false"), usage(u, env))
}

// Parse parses args, then reports the environment values that did not
// parse, for the flags args did not set, joined, each naming its flag.
func (s *Set) Parse(args []string) error {
	if err := s.FlagSet.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	s.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	for _, b := range s.bad {
		if !given[b.flag] {
			errs = append(errs, b.err)
		}
	}
	return errors.Join(errs...)
}
