package testenv

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/certfleet/certfleet/testenv/internal/tlsgen"
)

// The production-shaped side of the stack: a testenv CA signs the Kafka
// listeners' and PostgreSQL's certificates and one client certificate per
// principal; each principal also has a SCRAM/PLAIN password. Everything is
// made once per state directory (`testenv down` removes it).

// Kafka principals of the SASL_SSL and mTLS listeners, and what they may do
// (kafkaACLs). admin is a super user; nobody has no ACL at all.
const (
	PrincipalAdmin     = "admin"
	PrincipalProducer  = "producer"
	PrincipalWorker    = "worker"
	PrincipalScheduler = "scheduler"
	PrincipalOperator  = "operator"
	PrincipalAgent     = "agent" // certfleet agent: reads key deliveries
	PrincipalNobody    = "nobody"
)

var principals = []string{PrincipalAdmin, PrincipalProducer, PrincipalWorker, PrincipalScheduler, PrincipalOperator, PrincipalAgent, PrincipalNobody}

var pkiMu sync.Mutex

// dbTLSUser is the database role that logs in with its client certificate.
const dbTLSUser = "certfleet"

// pki is where the stack's TLS material and secrets are.
type pki struct {
	caPath        string // PEM CA certificate (trust anchor for every listener)
	kafkaKeystore string // PKCS#8 key followed by the certificate, for Kafka's PEM keystore
	pgCert, pgKey string // PostgreSQL's serving certificate and key
	secrets       string // per principal: P.password, P.crt, P.key; database.crt, database.key
}

func pkiAt(state string) pki {
	tls := filepath.Join(state, "tls")
	return pki{
		caPath:        filepath.Join(tls, "ca.pem"),
		kafkaKeystore: filepath.Join(tls, "kafka-keystore.pem"),
		pgCert:        filepath.Join(tls, "postgres.crt"),
		pgKey:         filepath.Join(tls, "postgres.key"),
		secrets:       filepath.Join(state, "secrets"),
	}
}

// password returns principal p's password (made by ensurePKI).
func (k pki) password(p string) (string, error) {
	b, err := os.ReadFile(filepath.Join(k.secrets, p+".password"))
	if err != nil {
		return "", fmt.Errorf("testenv: reading the password of %s: %w", p, err)
	}
	return string(b), nil
}

// newPassword is a principal's random password.
func newPassword() []byte {
	pw := make([]byte, 18)
	_, _ = rand.Read(pw)
	return []byte(hex.EncodeToString(pw))
}

// addMissingPasswords writes a password for every principal that has none.
func (k pki) addMissingPasswords() error {
	for _, p := range principals {
		path := filepath.Join(k.secrets, p+".password")
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			if err := os.WriteFile(path, newPassword(), 0o600); err != nil {
				return fmt.Errorf("testenv: writing the password of %s: %w", p, err)
			}
		}
	}
	return nil
}

// ensurePKI makes the CA, the serving certificates and the principals'
// secrets unless they exist (files are written 0600, directories 0700).
func ensurePKI(state string) (pki, error) {
	pkiMu.Lock() // Kafka and PostgreSQL start in parallel
	defer pkiMu.Unlock()
	k := pkiAt(state)
	done := filepath.Join(filepath.Dir(k.caPath), "complete")
	if _, err := os.Stat(done); err == nil {
		// A principal added since the material was made gets a password
		// (ensureKafkaUsers makes its SCRAM users); a client certificate
		// needs the CA's key, which is not kept: only a fresh state
		// directory gives it one.
		return k, k.addMissingPasswords()
	}
	for _, d := range []string{filepath.Dir(k.caPath), k.secrets} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return pki{}, err
		}
	}
	now, validity := time.Now(), 5*365*24*time.Hour
	ca, err := tlsgen.NewCA("certfleet testenv production-shape CA", now, validity)
	if err != nil {
		return pki{}, err
	}
	write := func(path string, blocks ...*pem.Block) error {
		var b []byte
		for _, bl := range blocks {
			b = append(b, pem.EncodeToMemory(bl)...)
		}
		return os.WriteFile(path, b, 0o600)
	}
	keyBlock := func(key *ecdsa.PrivateKey) (*pem.Block, error) {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		return &pem.Block{Type: "PRIVATE KEY", Bytes: der}, err
	}
	cert := func(der []byte) *pem.Block { return &pem.Block{Type: "CERTIFICATE", Bytes: der} }

	var errs []error
	errs = append(errs, write(k.caPath, cert(ca.Cert.Raw)))
	der, key, err := ca.Server([]string{"localhost"}, now, validity)
	errs = append(errs, err)
	if err == nil {
		kb, err := keyBlock(key)
		errs = append(errs, err, write(k.kafkaKeystore, kb, cert(der)), write(k.pgCert, cert(der)), write(k.pgKey, kb))
	}
	clients := map[string]string{"database": dbTLSUser}
	for _, p := range principals {
		clients[p] = p
		errs = append(errs, os.WriteFile(filepath.Join(k.secrets, p+".password"), newPassword(), 0o600))
	}
	for file, cn := range clients {
		der, key, err := ca.Client(cn, now, validity)
		errs = append(errs, err)
		if err == nil {
			kb, err := keyBlock(key)
			errs = append(errs, err, write(filepath.Join(k.secrets, file+".crt"), cert(der)), write(filepath.Join(k.secrets, file+".key"), kb))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return pki{}, fmt.Errorf("testenv: making the stack's TLS material: %w", err)
	}
	return k, os.WriteFile(done, nil, 0o600)
}
