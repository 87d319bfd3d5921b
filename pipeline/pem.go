package pipeline

import "encoding/pem"

// nextPEMCert returns the DER of the next CERTIFICATE block and the rest.
func nextPEMCert(rest []byte) ([]byte, []byte) {
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, rest
		}
		if b.Type == "CERTIFICATE" {
			return b.Bytes, rest
		}
	}
}
