package main

import (
	"fmt"
	"io"
	"regexp"

	"github.com/certfleet/certfleet/seal"
)

var keyIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

const keysAbout = `Prints a new keyring entry (ID=base64 key) and active=ID: a keyring the
workers read from -seal-keys-file or CERTFLEET_SEAL_KEYS. To rotate, add a new
entry to the keyring and point active= at it; old entries still open old keys.`

const keysUsage = "usage: certfleet keys generate [-id ID]\n\n" + keysAbout + "\n"

// keys generate prints a new keyring entry. The key goes to stdout only,
// for the operator to put into the keyring file or secret store.
func keys(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, keysUsage)
		return fmt.Errorf("%w: keys: missing command (generate)", errUsage)
	}
	if isHelp(args[0]) {
		fmt.Fprint(stdout, keysUsage)
		return nil
	}
	if args[0] != "generate" {
		fmt.Fprint(stderr, keysUsage)
		return fmt.Errorf("%w: keys: unknown command %q", errUsage, args[0])
	}
	fs := newFlagSet("keys generate", "[-id ID]", keysAbout)
	id := fs.String("id", "k1", "key id; when rotating, pick a new one and make it active= in the keyring")
	if err := parseFlags(fs, args[1:], stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: keys generate: unexpected argument %q", errUsage, fs.Arg(0))
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
