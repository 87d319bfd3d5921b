package events

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by Decode and Validate is a
// *FieldError wrapping exactly one of these (and, for SAN problems, a
// *names.NameError), so callers branch with errors.Is and report with
// errors.As.
var (
	ErrTooLarge             = errors.New("value larger than 64 KiB")
	ErrInvalidUTF8          = errors.New("invalid UTF-8")
	ErrControlChar          = errors.New("control character")
	ErrMalformedJSON        = errors.New("malformed JSON")
	ErrUnknownField         = errors.New("unknown field")
	ErrDuplicateField       = errors.New("field appears more than once")
	ErrMissingField         = errors.New("missing required field")
	ErrInvalidField         = errors.New("invalid value")
	ErrTooManySANs          = errors.New("too many SANs")
	ErrInvalidSAN           = errors.New("invalid SAN")
	ErrPrivateKey           = errors.New("private key material is never allowed in a message")
	ErrMissingHeader        = errors.New("missing header")
	ErrDuplicateHeader      = errors.New("header appears more than once")
	ErrInvalidHeader        = errors.New("invalid header")
	ErrTooManyHeaders       = errors.New("too many headers")
	ErrUnknownSpecVersion   = errors.New("unknown CloudEvents spec version")
	ErrUnknownType          = errors.New("unknown event type")
	ErrUnknownSchemaVersion = errors.New("unknown schema version")
	ErrContentType          = errors.New("unsupported content type")
	ErrKeyMismatch          = errors.New("record key is not the certificate identity of the SANs")
)

// FieldError names the part of a message that was rejected. Field is a JSON
// field of the value ("sans[2]", "chain_pem"), a header name ("ce_time",
// "content-type"), "key" for the record key, or "value" for the value as a
// whole. Error never includes more than a short, quoted excerpt of the input.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("events: %s: %v", e.Field, e.Err)
}

func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field string, err error) error {
	return &FieldError{Field: field, Err: err}
}

func fieldErrf(field string, sentinel error, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf("%w: "+format, append([]any{sentinel}, args...)...)}
}

// quote returns a short %q excerpt of s, safe for logs.
func quote(s string) string {
	const max = 64
	if len(s) > max {
		return fmt.Sprintf("%q...", s[:max])
	}
	return fmt.Sprintf("%q", s)
}
