package caproxy

import (
	"crypto/tls"
	"encoding/pem"
	"time"

	"github.com/certfleet/certfleet/testenv/internal/tlsgen"
)

// servingCert makes a throwaway CA and a leaf for 127.0.0.1, ::1 and
// localhost signed by it, in memory. It returns the leaf for the listener and
// the CA certificate in PEM for clients to trust.
func servingCert(now time.Time) (tls.Certificate, []byte, error) {
	sv, err := tlsgen.New("certfleet caproxy throwaway CA", []string{"localhost"}, now, 7*24*time.Hour)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	cert := tls.Certificate{Certificate: [][]byte{sv.LeafDER}, PrivateKey: sv.LeafKey}
	return cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: sv.CADER}), nil
}
