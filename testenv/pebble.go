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
// DNS and HTTP-01 challenge server.
//
// Safe concurrency: Pebble 2.10.1 deadlocks in its in-memory store at 16 or
// more concurrent orders. Keep at most MaxConcurrentOrders orders in flight
// against it and put deadlines on every ACME call. `make test` runs two test
// packages at once (go test -p 2), so a package's tests keep at most
// MaxConcurrentOrdersPerPackage in flight: two packages stay below 16.
const (
	PebbleVersion                 = "v2.10.1"
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

// installPebble puts pebble and pebble-challtestsrv into the cache with
// `go install`, once per version.
func installPebble(ctx context.Context, cache string) (string, error) {
	bin := filepath.Join(cache, "pebble-"+PebbleVersion)
	if _, err := os.Stat(filepath.Join(bin, "pebble-challtestsrv")); err == nil {
		return bin, nil
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	cmd := exec.CommandContext(ctx, goBin, "install",
		"github.com/letsencrypt/pebble/v2/cmd/pebble@"+PebbleVersion,
		"github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv@"+PebbleVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+bin, "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("testenv: go install pebble %s: %w\n%s", PebbleVersion, err, out)
	}
	return bin, nil
}

type pebbleConfig struct {
	Pebble struct {
		ListenAddress           string   `json:"listenAddress"`
		ManagementListenAddress string   `json:"managementListenAddress"`
		Certificate             string   `json:"certificate"`
		PrivateKey              string   `json:"privateKey"`
		HTTPPort                int      `json:"httpPort"`
		TLSPort                 int      `json:"tlsPort"`
		OCSPResponderURL        string   `json:"ocspResponderURL"`
		ExternalAccountBinding  bool     `json:"externalAccountBindingRequired"`
		DomainBlocklist         []string `json:"domainBlocklist"`
		RetryAfter              struct {
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

// writePebbleConfig writes Pebble's config: retryAfter 0/0 (the stock 3 s/5 s
// makes every certificate take ~5 s), named profiles, HTTP-01 on challtestsrv's port.
func writePebbleConfig(dir, cert, key string) (string, error) {
	var c pebbleConfig
	p := &c.Pebble
	p.ListenAddress, p.ManagementListenAddress = pebbleAddr, pebbleMgmtAddr
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
	return path, os.WriteFile(path, data, 0o644)
}

func pebbleProcs(dir string) (pebble, chall proc) {
	return proc{name: "pebble", dir: dir, marker: filepath.Join(dir, "pebble", "pebble-config.json")},
		proc{name: "challtestsrv", dir: dir, marker: "pebble-challtestsrv"}
}

func challCmd(bin string) *exec.Cmd {
	return exec.Command(filepath.Join(bin, "pebble-challtestsrv"),
		"-dnsserver", challDNSAddr,
		"-http01", fmt.Sprintf("127.0.0.1:%d", challHTTP01),
		"-https01", "", "-tlsalpn01", "", "-doh", "",
		"-management", challMgmtAddr,
		"-defaultIPv4", "127.0.0.1", "-defaultIPv6", "")
}

func pebbleCmd(bin, config string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(bin, "pebble"), "-config", config, "-dnsserver", challDNSAddr)
	cmd.Dir = filepath.Dir(config)
	// PEBBLE_VA_NOSLEEP: no random 0-15 s pause before each validation.
	// Other PEBBLE_* variables in the caller's environment pass through.
	cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1")
	// No authorization reuse, unless asked for: the reuse lookup scans every
	// authorization under the store's read lock and then locks each one, the
	// reverse of the order the validation path locks them in. With thousands
	// of authorizations and concurrent orders that is where Pebble 2.10.1
	// hangs (we saw it at 6 orders in flight during renewals). Reuse is not
	// what certfleet's tests are about.
	if os.Getenv("PEBBLE_AUTHZREUSE") == "" {
		cmd.Env = append(cmd.Env, "PEBBLE_AUTHZREUSE=0")
	}
	if os.Getenv(EnvPebbleAlwaysValid) == "1" {
		cmd.Env = append(cmd.Env, "PEBBLE_VA_ALWAYS_VALID=1")
	}
	return cmd
}

// pebbleReady checks that Pebble serves its directory and can register an
// account. The second step matters: Pebble 2.10.1 can deadlock in its
// in-memory store (16+ concurrent orders) while still answering GETs, and a
// deadlocked Pebble must count as not ready so `testenv up` restarts it.
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
