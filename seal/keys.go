package seal

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
)

var randRead = rand.Read

// SealPrivateKey seals key as PKCS#8 DER. aad binds the blob to its row; use
// AAD(PurposeCertKey, identity) or AAD(PurposeAccountKey, directory, tenant).
func SealPrivateKey(ctx context.Context, s Sealer, key crypto.Signer, aad []byte) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("seal: encoding private key: %w", err)
	}
	defer clear(der)
	blob, err := s.Seal(ctx, der, aad)
	if err != nil {
		return nil, fmt.Errorf("seal: sealing private key: %w", err)
	}
	return blob, nil
}

// OpenPrivateKey opens a blob made by SealPrivateKey.
func OpenPrivateKey(ctx context.Context, s Sealer, blob, aad []byte) (crypto.Signer, error) {
	der, err := s.Open(ctx, blob, aad)
	if err != nil {
		return nil, fmt.Errorf("seal: opening private key: %w", err)
	}
	defer clear(der)
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		// x509's error names the DER structure, not its content.
		return nil, errors.New("seal: opened blob is not a PKCS#8 private key")
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("seal: opened private key of type %T cannot sign", k)
	}
	return signer, nil
}
