package names

import (
	"fmt"
	"unicode"
)

// golang.org/x/net/idna implements UTS #46, non-transitional here, which
// accepts code points that IDNA2008 (RFC 5891, RFC 5892) disallows: UTS #46
// marks them NV8 or XV8 (symbols and punctuation such as emoji) and x/net
// treats them as valid. checkIDNA2008 adds RFC 5892's derived property on
// the decoded form of every xn-- label; the UTS #46 mapping, the hyphen
// rules, CONTEXTJ (zero width joiner and non-joiner) and the Bidi rule
// (RFC 5893) are x/net's, checked before.

type derived int

const (
	pvalid derived = iota
	contextJ
	contextO
	disallowed
)

// property is RFC 5892's derived property of r (section 3, in its order).
// Unstable code points (NFKC case folding changes them) are refused by the
// UTS #46 mapping before this runs; upper and title case are refused here
// too.
func property(r rune) derived {
	switch r {
	case 0x00DF, 0x03C2, 0x06FD, 0x06FE, 0x0F0B, 0x3007: // exceptions: PVALID
		return pvalid
	case 0x00B7, 0x0375, 0x05F3, 0x05F4, 0x30FB: // exceptions: CONTEXTO
		return contextO
	case 0x0640, 0x07FA, 0x302E, 0x302F, 0x3031, 0x3032, 0x3033, 0x3034, 0x3035, 0x303B: // exceptions: DISALLOWED
		return disallowed
	case 0x200C, 0x200D: // JoinControl
		return contextJ
	}
	switch {
	case 0x0660 <= r && r <= 0x0669, 0x06F0 <= r && r <= 0x06F9: // exceptions: CONTEXTO
		return contextO
	case 'a' <= r && r <= 'z', '0' <= r && r <= '9', r == '-': // LDH
		return pvalid
	case !unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S, unicode.Z, unicode.C): // Unassigned
		return disallowed
	case unicode.In(r, unicode.White_Space, unicode.Noncharacter_Code_Point, unicode.Other_Default_Ignorable_Code_Point, unicode.Variation_Selector): // IgnorableProperties
		return disallowed
	case 0x20D0 <= r && r <= 0x20FF, 0x1D100 <= r && r <= 0x1D24F: // IgnorableBlocks
		return disallowed
	case 0x1100 <= r && r <= 0x11FF, 0xA960 <= r && r <= 0xA97F, 0xD7B0 <= r && r <= 0xD7FF: // OldHangulJamo
		return disallowed
	case unicode.ToLower(r) != r || unicode.IsTitle(r): // Unstable
		return disallowed
	case unicode.In(r, unicode.Ll, unicode.Lu, unicode.Lo, unicode.Nd, unicode.Lm, unicode.Mn, unicode.Mc): // LetterDigits
		return pvalid
	}
	return disallowed
}

// checkIDNA2008 checks the decoded label u of A-label label: every code point
// PVALID, or CONTEXTJ (x/net has checked the joiners' context), or CONTEXTO
// in the context RFC 5892 appendix A gives it.
func checkIDNA2008(label, u string) error {
	runes := []rune(u)
	for i, r := range runes {
		switch property(r) {
		case pvalid, contextJ:
		case contextO:
			if !contextOK(runes, i) {
				return fmt.Errorf("%w: label %q decodes to %U outside the context IDNA2008 allows it in (RFC 5892 appendix A)", ErrIDNA, label, r)
			}
		default:
			return fmt.Errorf("%w: label %q decodes to %U, which IDNA2008 disallows (RFC 5892)", ErrIDNA, label, r)
		}
	}
	return nil
}

// contextOK applies the CONTEXTO rules of RFC 5892 appendix A.3 to A.9 to
// runes[i].
func contextOK(runes []rune, i int) bool {
	r := runes[i]
	before := func(tab *unicode.RangeTable) bool { return i > 0 && unicode.Is(tab, runes[i-1]) }
	after := func(tab *unicode.RangeTable) bool { return i+1 < len(runes) && unicode.Is(tab, runes[i+1]) }
	any := func(lo, hi rune) bool {
		for _, c := range runes {
			if lo <= c && c <= hi {
				return true
			}
		}
		return false
	}
	switch {
	case r == 0x00B7: // MIDDLE DOT: between two l
		return i > 0 && i+1 < len(runes) && runes[i-1] == 'l' && runes[i+1] == 'l'
	case r == 0x0375: // GREEK LOWER NUMERAL SIGN: before a Greek letter
		return after(unicode.Greek)
	case r == 0x05F3, r == 0x05F4: // HEBREW GERESH, GERSHAYIM: after a Hebrew letter
		return before(unicode.Hebrew)
	case r == 0x30FB: // KATAKANA MIDDLE DOT: in a label with Hiragana, Katakana or Han
		for _, c := range runes {
			if c != 0x30FB && unicode.In(c, unicode.Hiragana, unicode.Katakana, unicode.Han) {
				return true
			}
		}
		return false
	case 0x0660 <= r && r <= 0x0669: // ARABIC-INDIC DIGITS: not mixed with the extended ones
		return !any(0x06F0, 0x06F9)
	case 0x06F0 <= r && r <= 0x06F9: // EXTENDED ARABIC-INDIC DIGITS
		return !any(0x0660, 0x0669)
	}
	return false
}
