package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/certfleet/certfleet/seal"
)

func TestKeysGenerate(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"keys", "generate", "-id", "k7"}, &out, &errb); code != exitOK {
		t.Fatalf("code %d: %s", code, errb.String())
	}
	kr, err := seal.ParseKeyring(out.String())
	if err != nil {
		t.Fatalf("output is not a keyring: %v", err)
	}
	if kr.ActiveKeyID() != "k7" {
		t.Fatalf("active key %q", kr.ActiveKeyID())
	}
	for _, bad := range [][]string{{"keys"}, {"keys", "generate", "-id", "bad id"}} {
		out.Reset()
		errb.Reset()
		if code := run(context.Background(), bad, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "keys") {
			t.Errorf("%v: code %d, %q", bad, code, errb.String())
		}
	}
}
