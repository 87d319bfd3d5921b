package events

import (
	"crypto/sha256"
	"encoding/hex"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"
)

// The codec's direct path: a payload's JSON written and read field by field
// from a table built once per type, instead of encoding/json's reflection
// walk plus a token pass for the strict shape rules. The direct reader takes
// only the plain form of a value (no escaped keys, no surrogate escapes, no
// numbers beyond 18 digits, no escapes in a time) and gives up on anything
// else, including every value Decode refuses; the encoding/json path
// (unmarshalSlow) then decides, so both paths accept exactly the same values
// into exactly the same payloads (FuzzDirectDecode checks this).

// wireField is one JSON field of a payload type.
type wireField struct {
	name     string
	key      string  // `"name":`
	offset   uintptr // of the field in the struct
	kind     valueKind
	required bool // no omitempty/omitzero option
}

// wireType is a payload type's JSON fields in struct order.
type wireType struct {
	fields   []wireField
	byName   map[string]int // index into fields
	required uint64         // bit i: fields[i] is required
	schema   string         // SchemaURI, computed once
}

var wireTypes = map[Type]*wireType{}

func init() {
	for t, mk := range registry {
		rt := reflect.TypeOf(mk()).Elem()
		wt := &wireType{byName: map[string]int{}, schema: t.schemaURI()}
		for f := range rt.Fields() {
			name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
			wf := wireField{name: name, key: strconv.Quote(name) + ":", offset: f.Offset, kind: kindOf(f.Type),
				required: !strings.Contains(opts, "omitempty") && !strings.Contains(opts, "omitzero")}
			// The fields are read and written through pointers of these
			// types (field), so each must be exactly one of them.
			want := map[valueKind]reflect.Type{kindString: reflect.TypeFor[string](), kindInteger: reflect.TypeFor[int](),
				kindBoolean: reflect.TypeFor[bool](), kindTime: reflect.TypeFor[time.Time](), kindStrings: reflect.TypeFor[[]string]()}[wf.kind]
			if f.Type.Kind() != want.Kind() || f.Type.Size() != want.Size() || wf.kind >= kindTime && f.Type != want {
				panic("events: field " + name + " of " + string(t) + " has an unsupported type " + f.Type.String())
			}
			if wf.required {
				wt.required |= 1 << len(wt.fields)
			}
			wt.byName[name] = len(wt.fields)
			wt.fields = append(wt.fields, wf)
		}
		if len(wt.fields) > 64 {
			panic("events: more than 64 fields in " + string(t))
		}
		wireTypes[t] = wt
	}
}

// appendPayload appends p's JSON value as encoding/json writes it with
// SetEscapeHTML(false): fields in struct order, omitempty strings and
// omitzero times left out, times in UTC RFC 3339. ok is false for a value
// encoding/json would refuse (a year outside 0-9999); the caller then takes
// encoding/json's path for its error.
func appendPayload(dst []byte, p Payload) (_ []byte, ok bool) {
	wt := wireTypes[p.EventType()]
	base := reflect.ValueOf(p).UnsafePointer()
	dst = append(dst, '{')
	first := true
	for i := range wt.fields {
		f := &wt.fields[i]
		ptr := unsafe.Add(base, f.offset)
		var tm time.Time
		switch f.kind {
		case kindString:
			if !f.required && *(*string)(ptr) == "" {
				continue
			}
		case kindTime:
			tm = (*time.Time)(ptr).UTC()
			if !f.required && tm.IsZero() {
				continue
			}
			if y := tm.Year(); y < 0 || y > 9999 {
				return dst, false
			}
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, f.key...)
		switch f.kind {
		case kindString:
			dst = appendJSONString(dst, *(*string)(ptr))
		case kindTime:
			dst = append(dst, '"')
			dst = tm.AppendFormat(dst, time.RFC3339Nano)
			dst = append(dst, '"')
		case kindInteger:
			dst = strconv.AppendInt(dst, int64(*(*int)(ptr)), 10)
		case kindBoolean:
			dst = strconv.AppendBool(dst, *(*bool)(ptr))
		case kindStrings:
			list := *(*[]string)(ptr)
			if list == nil {
				dst = append(dst, "null"...)
				continue
			}
			dst = append(dst, '[')
			for j, s := range list {
				if j > 0 {
					dst = append(dst, ',')
				}
				dst = appendJSONString(dst, s)
			}
			dst = append(dst, ']')
		}
	}
	return append(dst, '}'), true
}

// payloadSize is the length of p's JSON value when no string needs an
// escape beyond one per 32 bytes (a PEM line's newline): the buffer
// appendPayload starts with.
func payloadSize(p Payload) int {
	wt := wireTypes[p.EventType()]
	base := reflect.ValueOf(p).UnsafePointer()
	n := 2
	for i := range wt.fields {
		f := &wt.fields[i]
		ptr := unsafe.Add(base, f.offset)
		n += len(f.key) + 1
		switch f.kind {
		case kindString:
			s := *(*string)(ptr)
			n += len(s) + len(s)/32 + 2
		case kindTime:
			n += len(`"2006-01-02T15:04:05.999999999Z"`)
		case kindInteger:
			n += 20
		case kindBoolean:
			n += 5
		case kindStrings:
			for _, s := range *(*[]string)(ptr) {
				n += len(s) + 3
			}
			n += 4
		}
	}
	return n
}

const hexDigits = "0123456789abcdef"

// appendJSONString is encoding/json's string encoding without HTML escaping:
// '"' and '\\' escaped, control characters as \b \f \n \r \t or \u00XX,
// invalid UTF-8 as \ufffd, U+2028 and U+2029 escaped.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// directReader reads one payload value. s is the value as one string (a
// copy the caller made): the strings of the payload that hold no escape are
// slices of it, so a value costs one copy instead of one per field.
type directReader struct {
	s   string
	raw []byte // the same bytes, for time parsing
	i   int
}

func (d *directReader) ws() {
	for d.i < len(d.s) {
		switch d.s[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

func (d *directReader) next(c byte) bool {
	if d.i < len(d.s) && d.s[d.i] == c {
		d.i++
		return true
	}
	return false
}

func (d *directReader) literal(lit string) bool {
	if strings.HasPrefix(d.s[d.i:], lit) {
		d.i += len(lit)
		return true
	}
	return false
}

// str reads a JSON string; escaped reports whether it held an escape.
func (d *directReader) str() (s string, escaped, ok bool) {
	if !d.next('"') {
		return "", false, false
	}
	start := d.i
	for d.i < len(d.s) {
		switch c := d.s[d.i]; {
		case c == '"':
			s = d.s[start:d.i]
			d.i++
			return s, false, true
		case c == '\\':
			return d.unescape(start)
		case c < 0x20:
			return "", false, false
		}
		d.i++
	}
	return "", false, false
}

// unescape finishes a string that has an escape at d.i.
func (d *directReader) unescape(start int) (string, bool, bool) {
	b := make([]byte, 0, d.i-start+16)
	b = append(b, d.s[start:d.i]...)
	for d.i < len(d.s) {
		c := d.s[d.i]
		switch {
		case c == '"':
			d.i++
			return string(b), true, true
		case c < 0x20:
			return "", false, false
		case c != '\\':
			b = append(b, c)
			d.i++
			continue
		}
		if d.i+1 >= len(d.s) {
			return "", false, false
		}
		switch e := d.s[d.i+1]; e {
		case '"', '\\', '/':
			b = append(b, e)
		case 'b':
			b = append(b, '\b')
		case 'f':
			b = append(b, '\f')
		case 'n':
			b = append(b, '\n')
		case 'r':
			b = append(b, '\r')
		case 't':
			b = append(b, '\t')
		case 'u':
			if d.i+6 > len(d.s) {
				return "", false, false
			}
			n, err := strconv.ParseUint(d.s[d.i+2:d.i+6], 16, 16)
			if err != nil || n >= 0xD800 && n < 0xE000 || strings.ContainsAny(d.s[d.i+2:d.i+6], "+-") {
				return "", false, false // surrogates: encoding/json's replacement rules decide
			}
			b = utf8.AppendRune(b, rune(n))
			d.i += 4
		default:
			return "", false, false
		}
		d.i += 2
	}
	return "", false, false
}

// integer reads a JSON integer of at most 18 digits (no fraction, no
// exponent), which always fits an int64.
func (d *directReader) integer() (int64, bool) {
	start := d.i
	d.next('-')
	digits := d.i
	for d.i < len(d.s) && d.s[d.i] >= '0' && d.s[d.i] <= '9' {
		d.i++
	}
	n := d.i - digits
	if n == 0 || n > 18 || n > 1 && d.s[digits] == '0' {
		return 0, false
	}
	if d.i < len(d.s) {
		if c := d.s[d.i]; c == '.' || c == 'e' || c == 'E' {
			return 0, false
		}
	}
	v, err := strconv.ParseInt(d.s[start:d.i], 10, 64)
	return v, err == nil
}

// decodeDirect fills p from value, the plain form of a valid JSON object of
// p's fields. It returns the fields present (null ones included) as a bit
// set over wireType.fields, and ok false for anything it does not take.
func decodeDirect(p Payload, value []byte, valueString string) (present uint64, ok bool) {
	wt := wireTypes[p.EventType()]
	base := reflect.ValueOf(p).UnsafePointer()
	d := directReader{s: valueString, raw: value}
	d.ws()
	if !d.next('{') {
		return 0, false
	}
	d.ws()
	if d.next('}') {
		return 0, false // no field: the full path names the missing one
	}
	for {
		d.ws()
		key, escaped, ok := d.str()
		if !ok || escaped {
			return 0, false
		}
		fi, known := wt.byName[key]
		if !known || present&(1<<fi) != 0 {
			return 0, false
		}
		present |= 1 << fi
		f := &wt.fields[fi]
		d.ws()
		if !d.next(':') {
			return 0, false
		}
		d.ws()
		if d.literal("null") {
			if f.required {
				return 0, false
			}
		} else if !d.field(unsafe.Add(base, f.offset), f) {
			return 0, false
		}
		d.ws()
		if d.next('}') {
			break
		}
		if !d.next(',') {
			return 0, false
		}
	}
	d.ws()
	if d.i != len(d.s) || present&wt.required != wt.required {
		return 0, false
	}
	return present, true
}

// field reads one non-null value of f's kind into the field at ptr.
func (d *directReader) field(ptr unsafe.Pointer, f *wireField) bool {
	switch f.kind {
	case kindString:
		s, _, ok := d.str()
		if !ok || s == "" && !f.required {
			return false
		}
		*(*string)(ptr) = s
	case kindTime:
		start := d.i
		s, escaped, ok := d.str()
		if !ok || escaped || s == "" && !f.required {
			return false
		}
		// time.Time.UnmarshalJSON (strict RFC 3339) is what encoding/json
		// applies; it accepts a subset of what time.Parse(RFC3339Nano) does.
		if err := (*time.Time)(ptr).UnmarshalText(d.raw[start+1 : d.i-1]); err != nil {
			return false
		}
	case kindInteger:
		n, ok := d.integer()
		if !ok {
			return false
		}
		*(*int)(ptr) = int(n)
	case kindBoolean:
		switch {
		case d.literal("true"):
			*(*bool)(ptr) = true
		case d.literal("false"):
			*(*bool)(ptr) = false
		default:
			return false
		}
	case kindStrings:
		if !d.next('[') {
			return false
		}
		list := make([]string, 0, 4)
		d.ws()
		if !d.next(']') {
			for {
				d.ws()
				s, _, ok := d.str()
				if !ok {
					return false
				}
				list = append(list, s)
				d.ws()
				if d.next(']') {
					break
				}
				if !d.next(',') {
					return false
				}
			}
		}
		*(*[]string)(ptr) = list
	}
	return true
}

// identityHex writes Identity(sans) into dst without allocating when sans
// are lower case already (canonical SANs are), sorting a copy on the stack
// when there are few.
func identityHex(dst *[64]byte, sans []string) {
	var stack [16]string
	set := stack[:0]
	if len(sans) > len(stack) {
		set = make([]string, 0, len(sans))
	}
	for _, s := range sans {
		set = append(set, asciiLower(s))
	}
	if !slices.IsSorted(set) {
		slices.Sort(set)
	}
	set = slices.Compact(set)
	var buf [512]byte
	joined := buf[:0]
	for i, s := range set {
		if i > 0 {
			joined = append(joined, '\n')
		}
		joined = append(joined, s...)
	}
	sum := sha256.Sum256(joined)
	hex.Encode(dst[:], sum[:])
}
