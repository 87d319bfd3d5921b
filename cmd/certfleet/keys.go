package main

import (
	"flag"
	"fmt"
	"io"
	"regexp"

	"github.com/certfleet/certfleet/seal"
)

var keyIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// keys generate prints a new keyring entry. The key goes to stdout only,
// for the operator to put into the keyring file or secret store.
func keys(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "generate" {
		return fmt.Errorf("%w: keys: usage: certfleet keys generate [-id ID]", errUsage)
	}
	fs := flag.NewFlagSet("keys generate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	id := fs.String("id", "k1", "key id; when rotating, pick a new one and make it active= in the keyring")
	if err := fs.Parse(args[1:]); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if !keyIDPattern.MatchString(*id) {
		return fmt.Errorf("%w: keys generate: -id %q: letters, digits, '.', '_' or '-', at most 64", errUsage, *id)
	}
	line, err := seal.GenerateKeyText(*id)
	if err != nil {
		return fmt.Errorf("keys generate: %w", err)
	}
	fmt.Fprintf(stdout, "%s\nactive=%s\n", line, *id)
	return nil
}
