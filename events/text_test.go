package events

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestSanitize(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		max  int
		want string
	}{
		{"plain text unchanged", "order failed: 503", 100, "order failed: 503"},
		{"empty stays empty", "", 10, ""},
		{"C0 and DEL become spaces", "a\nb\tc\x00d\x7fe", 100, "a b c d e"},
		{"C1 becomes a space", "a\u0085b", 100, "a b"},
		{"bidi controls become spaces", "x\u202egnp.exe\u2066y", 100, "x gnp.exe y"},
		{"invalid UTF-8 becomes U+FFFD", "a\xffb", 100, "a\uFFFDb"},
		{"exactly max is kept", "abcdef", 6, "abcdef"},
		{"longer is cut with a marker within max", "abcdefghij", 8, "abcde..."},
		{"cut at a rune boundary", "ééééé", 8, "éé..."}, // 2 bytes each: 5 bytes of text fit, 2 whole runes
		{"tiny max: no marker", "abcdef", 2, "ab"},
		{"tiny max at a rune boundary", "éé", 1, ""},
		{"zero max", "abc", 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Sanitize(tc.in, tc.max)
			if got != tc.want {
				t.Fatalf("Sanitize(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
			}
		})
	}
}

// Whatever goes in, what comes out is a valid event text of max bytes.
func TestSanitizePassesTextChecks(t *testing.T) {
	hostile := "CAA forbids \u202egnp.exe\u0085 " + strings.Repeat("é", 600) + "\xff\x1b[2J"
	for _, max := range []int{0, 1, 2, 3, 4, 100, 1000, 1024, 5000} {
		got := Sanitize(hostile, max)
		if len(got) > max || !utf8.ValidString(got) {
			t.Fatalf("max %d: %d bytes, valid %v", max, len(got), utf8.ValidString(got))
		}
		if err := checkText(got, max); err != nil {
			t.Fatalf("max %d: %v", max, err)
		}
	}
}

func FuzzSanitize(f *testing.F) {
	f.Add("a\nb\xff\u202e", 5)
	f.Fuzz(func(t *testing.T, s string, max int) {
		if max < 0 || max > 1<<16 {
			return
		}
		if err := checkText(Sanitize(s, max), max); err != nil {
			t.Fatalf("Sanitize(%q, %d) fails the text checks: %v", s, max, err)
		}
	})
}
