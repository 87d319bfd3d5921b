package events

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Sanitize makes foreign text (a CA's problem detail, an error message, a
// dead-letter reason) safe for an event's text field, a header, a log line or
// a terminal, the one way certfleet does it:
//
//   - bytes that are not valid UTF-8 become U+FFFD;
//   - control characters (C0, DEL, C1) and Unicode bidi controls become a
//     space, so nothing can move a cursor or reorder what follows;
//   - text longer than max bytes is cut at a rune boundary and ends in "...",
//     the whole at most max bytes (below 3 bytes, cut without the marker).
//
// The result passes the events' text checks for a field of max bytes.
func Sanitize(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD"))
	if len(s) <= max {
		return s
	}
	const marker = "..."
	if max < len(marker) {
		return cutRunes(s, max)
	}
	return cutRunes(s, max-len(marker)) + marker
}

// cutRunes returns the longest prefix of s of at most n bytes that ends at a
// rune boundary.
func cutRunes(s string, n int) string {
	n = max(n, 0)
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
