package pipeline

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
)

// parseLeaf returns the first certificate of a PEM chain.
func parseLeaf(chain string) (*x509.Certificate, error) {
	certs, err := parsePEMCerts(chain)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

func parsePEMCerts(chain string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(chain)
	for {
		var block []byte
		block, rest = nextPEMCert(rest)
		if block == nil {
			break
		}
		c, err := x509.ParseCertificate(block)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate in chain")
	}
	return out, nil
}

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
