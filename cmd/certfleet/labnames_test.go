package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/certfleet/certfleet/testenv"
)

// The tests use names under .test and .example, which Pebble issues for and
// the strict names policy refuses.
func init() { testenv.UseLabNames() }

// --allow-special-names goes before the command, else
// CERTFLEET_ALLOW_SPECIAL_NAMES; neither set, the strict policy refuses the
// lab's names, naming the option.
func TestAllowSpecialNames(t *testing.T) {
	t.Cleanup(testenv.UseLabNames)
	t.Setenv("CERTFLEET_KAFKA_BROKERS", "")
	t.Setenv(testenv.EnvAllowSpecialNames, "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"request", "--san", "a.test", "--tenant", "t"}, ".test is reserved for testing (RFC 6761); public CAs do not issue for it (a lab CA's TLDs are allowed with allow-special-names)"},
		{[]string{"--allow-special-names", "test", "request", "--san", "a.test", "--tenant", "t"}, "no Kafka brokers"},
		{[]string{"--allow-special-names=test", "request", "--san", "a.example", "--tenant", "t"}, ".example is reserved"},
		{[]string{"-allow-special-names", "example,test", "request", "--san", "a.example", "--tenant", "t"}, "no Kafka brokers"},
		{[]string{"--allow-special-names", "com", "request"}, `--allow-special-names: names: allowed special-use TLD "com": it is delegated`},
		{[]string{"--allow-special-names"}, "--allow-special-names needs a value"},
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), tc.args, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want %d mentioning %q", tc.args, code, errb.String(), exitUsage, tc.want)
		}
	}
	t.Setenv(testenv.EnvAllowSpecialNames, "test")
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"request", "--san", "a.test", "--tenant", "t"}, &out, &errb); !strings.Contains(errb.String(), "no Kafka brokers") {
		t.Errorf("CERTFLEET_ALLOW_SPECIAL_NAMES=test: exit %d, stderr %q", code, errb.String())
	}
	t.Setenv(testenv.EnvAllowSpecialNames, "nonsense_")
	if code := run(context.Background(), []string{"request"}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "CERTFLEET_ALLOW_SPECIAL_NAMES: names:") {
		t.Errorf("a bad CERTFLEET_ALLOW_SPECIAL_NAMES: exit %d, stderr %q", code, errb.String())
	}
}
