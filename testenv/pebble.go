package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"time"

	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/mholt/acmez/v3/acme"
)

// Pebble, the ACME test CA from Let's Encrypt, and pebble-challtestsrv, its
// HTTP-01 challenge server and the DNS server behind BIND (bind.go) for every
// name outside the DNS-01 test zones.
//
// testenv builds Pebble from its module source with a patch that removes the
// lock-order deadlock of its in-memory store (pebblebuild.go and
// pebblepatch/memorystore-lock-order.patch); stock Pebble hangs at 16 or more
// orders in flight. The concurrency limits below are about load, not the
// deadlock: `make test` runs two test packages at once (go test -p 2) on a
// 2-core machine, so a package's tests keep at most
// MaxConcurrentOrdersPerPackage orders in flight.
const (
	PebbleVersion                 = "v2.10.3"
	MaxConcurrentOrders           = 8
	MaxConcurrentOrdersPerPackage = 6

	// EnvPebbleAlwaysValid=1 starts Pebble with PEBBLE_VA_ALWAYS_VALID=1:
	// every challenge passes without a validation request, for throughput runs.
	EnvPebbleAlwaysValid = "CERTFLEET_PEBBLE_ALWAYS_VALID"
	// PebbleProfile is the profile tests name in their orders (Pebble picks a
	// random one otherwise); PebbleShortProfile has a 6-day lifetime.
	PebbleProfile      = "default"
	PebbleShortProfile = "shortlived"
)

var (
	pebbleAddr     = addr(14000)
	pebbleMgmtAddr = addr(15000)
	challDNSAddr   = addr(8053)
	challHTTP01    = port(5002)
	challMgmtAddr  = addr(8055)
	tlsALPNPort    = port(5001) // Pebble's TLS-ALPN-01 port; nothing serves it
)

type pebbleConfig struct {
	Pebble struct {
		ListenAddress           string `json:"listenAddress"`
		ManagementListenAddress string `json:"managementListenAddress"`
		Certificate             string `json:"certificate"`
		PrivateKey              string `json:"privateKey"`
		HTTPPort                int    `json:"httpPort"`
		TLSPort                 int    `json:"tlsPort"`
		OCSPResponderURL        string `json:"ocspResponderURL"`
		ExternalAccountBinding  bool   `json:"externalAccountBindingRequired"`
		// ExternalAccountMACKeys: key id to base64url MAC key.
		ExternalAccountMACKeys map[string]string `json:"externalAccountMACKeys,omitempty"`
		DomainBlocklist        []string          `json:"domainBlocklist"`
		RetryAfter             struct {
			Authz int `json:"authz"`
			Order int `json:"order"`
		} `json:"retryAfter"`
		KeyAlgorithm string                   `json:"keyAlgorithm"`
		Profiles     map[string]pebbleProfile `json:"profiles"`
	} `json:"pebble"`
}

type pebbleProfile struct {
	Description    string `json:"description"`
	ValidityPeriod int    `json:"validityPeriod"`
}

// writePebbleConfigAt writes the config of a Pebble serving on listen and
// mgmt: retryAfter 0/0 (the stock 3 s/5 s makes every certificate take
// ~5 s), named profiles, HTTP-01 on challtestsrv's port; with eabKeys (key id
// to base64url MAC key) it requires External Account Binding on every
// newAccount.
func writePebbleConfigAt(dir, cert, key, listen, mgmt string, eabKeys map[string]string) (string, error) {
	var c pebbleConfig
	p := &c.Pebble
	p.ListenAddress, p.ManagementListenAddress = listen, mgmt
	p.ExternalAccountBinding, p.ExternalAccountMACKeys = len(eabKeys) > 0, eabKeys
	p.Certificate, p.PrivateKey = cert, key
	p.HTTPPort, p.TLSPort = challHTTP01, tlsALPNPort
	p.DomainBlocklist = []string{"blocked-domain.example"}
	p.KeyAlgorithm = "ecdsa"
	p.Profiles = map[string]pebbleProfile{
		PebbleProfile:      {Description: "90-day certificates", ValidityPeriod: 7776000},
		PebbleShortProfile: {Description: "6-day certificates", ValidityPeriod: 518400},
	}
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "pebble-config.json")
	return path, os.WriteFile(path, data, 0o600) // it may hold MAC keys
}

// pebbleProcs names the two processes; their markers are the binaries' paths,
// which hold the build (version and patch), so a Pebble left running from
// another build is found stale and restarted by `testenv up`. Pebble's
// fingerprint is its resolver: one started resolving through challtestsrv
// (before BIND) is stale too.
func pebbleProcs(dir, bin string) (pebble, chall proc) {
	return proc{name: "pebble", dir: dir, marker: filepath.Join(bin, "pebble"), fingerprint: "dnsserver=" + bindAddr},
		proc{name: "challtestsrv", dir: dir, marker: filepath.Join(bin, "pebble-challtestsrv")}
}

func challCmd(bin string) *exec.Cmd {
	return exec.Command(filepath.Join(bin, "pebble-challtestsrv"),
		"-dnsserver", challDNSAddr,
		"-http01", fmt.Sprintf("127.0.0.1:%d", challHTTP01),
		"-https01", "", "-tlsalpn01", "", "-doh", "",
		"-management", challMgmtAddr,
		"-defaultIPv4", "127.0.0.1", "-defaultIPv6", "")
}

// pebbleCmd starts Pebble resolving through BIND, which answers the DNS-01
// test zones itself and forwards every other name to challtestsrv.
func pebbleCmd(bin, config string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(bin, "pebble"), "-config", config, "-dnsserver", bindAddr)
	cmd.Dir = filepath.Dir(config)
	// PEBBLE_VA_NOSLEEP: no random 0-15 s pause before each validation.
	// Other PEBBLE_* variables in the caller's environment pass through.
	cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1")
	// No authorization reuse, unless asked for: every order gets fresh
	// authorizations, so every name of every order is validated (the tests
	// and the demo count on it). Pebble still looks for a reusable
	// authorization on each new order; that lookup was where stock Pebble
	// deadlocked, which the patch fixes.
	if os.Getenv("PEBBLE_AUTHZREUSE") == "" {
		cmd.Env = append(cmd.Env, "PEBBLE_AUTHZREUSE=0")
	}
	if os.Getenv(EnvPebbleAlwaysValid) == "1" {
		cmd.Env = append(cmd.Env, "PEBBLE_VA_ALWAYS_VALID=1")
	}
	return cmd
}

// pebbleReady checks that Pebble serves its directory and can register an
// account: a Pebble that answers GETs but not POSTs is not ready.
func pebbleReady(ctx context.Context, caPath string) error {
	c, err := tlsClient(caPath)
	if err != nil {
		return err
	}
	if _, err := httpGet(ctx, c, "https://"+pebbleAddr+"/dir"); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	client := &acme.Client{Directory: "https://" + pebbleAddr + "/dir", HTTPClient: c}
	if _, err := client.NewAccount(actx, acme.Account{TermsOfServiceAgreed: true, PrivateKey: key}); err != nil {
		return fmt.Errorf("registering a probe account (Pebble may be deadlocked): %w", err)
	}
	return nil
}

// ACMETransport is an HTTP transport that trusts only testenv's serving CA
// (Settings.ACMETLSCA), which signs the HTTPS certificates of Pebble's ACME
// and management endpoints and of testenv/caproxy. Callers set their own
// timeouts and connection limits on it.
func (s Settings) ACMETransport() (*http.Transport, error) { return caTransport(s.ACMETLSCA) }

func caTransport(caPath string) (*http.Transport, error) {
	pem, err := os.ReadFile(caPath)
	if err != nil {
		return nil, fmt.Errorf("testenv: reading the serving CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("testenv: no certificate in %s", caPath)
	}
	return &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, nil
}

// tlsClient trusts only the testenv serving CA.
func tlsClient(caPath string) (*http.Client, error) {
	tr, err := caTransport(caPath)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: tr}, nil
}

func httpGet(ctx context.Context, c *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return body, nil
}
