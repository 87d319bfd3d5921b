package scheduler

import "github.com/certfleet/certfleet/testenv"

// The tests use names under .test and .example, which Pebble issues for and
// the strict names policy refuses.
func init() { testenv.UseLabNames() }
