package scheduler

import (
	"strings"
	"testing"
)

func TestParseLine(t *testing.T) {
	for in, want := range map[string]string{
		"":              "",
		"  # comment":   "",
		"a.example.com": "a.example.com",
		" a.example.com, b.example.com\tc.example.com ": "a.example.com|b.example.com|c.example.com",
	} {
		if got := strings.Join(parseLine(in), "|"); got != want {
			t.Errorf("parseLine(%q) = %q, want %q", in, got, want)
		}
	}
}
