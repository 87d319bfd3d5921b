package testenv

import (
	"os"
	"strings"

	"github.com/certfleet/certfleet/names"
)

// EnvAllowSpecialNames is the environment fallback of the binaries'
// -allow-special-names flag: the special-use TLDs whose names they accept.
// Unset in production (the strict names policy).
const EnvAllowSpecialNames = "CERTFLEET_ALLOW_SPECIAL_NAMES"

// LabNames is the names policy of everything that runs against the local
// stack: Pebble issues for names under .test and .example, which public CAs
// refuse (RFC 6761). Tests, the demo and the README walkthrough use such
// names throughout.
var LabNames = names.Policy{AllowedSpecialUse: []string{"example", "test"}}

// UseLabNames makes LabNames the process names policy (names.SetProcessPolicy)
// and sets EnvAllowSpecialNames, so the binaries a test or the demo starts
// with os.Environ() accept the same names. Test packages that use lab names
// call it from an init function in a _test.go file.
func UseLabNames() {
	if err := names.SetProcessPolicy(LabNames); err != nil {
		panic(err)
	}
	if err := os.Setenv(EnvAllowSpecialNames, labNamesList()); err != nil {
		panic(err)
	}
}

func labNamesList() string { return strings.Join(LabNames.AllowedSpecialUse, ",") }
