package events

import (
	"crypto/x509"
	"encoding/base64"
)

// ARICertID returns the ACME Renewal Information certificate id of cert
// (RFC 9773 section 4.1): base64url(authority key identifier) "."
// base64url(DER serial number bytes), unpadded. It returns "" when the
// certificate has no authority key identifier.
func ARICertID(cert *x509.Certificate) string {
	if len(cert.AuthorityKeyId) == 0 || cert.SerialNumber == nil {
		return ""
	}
	serial := cert.SerialNumber.Bytes()
	if len(serial) == 0 || serial[0]&0x80 != 0 {
		// DER encodes a positive integer with a leading zero byte when its
		// high bit is set, and zero as one zero byte.
		serial = append([]byte{0}, serial...)
	}
	enc := base64.RawURLEncoding
	return enc.EncodeToString(cert.AuthorityKeyId) + "." + enc.EncodeToString(serial)
}
