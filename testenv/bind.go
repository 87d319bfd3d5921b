package testenv

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// BIND 9 (Debian's bind9 package) is the stack's authoritative DNS server:
// it holds the DNS-01 test zones, takes RFC 2136 updates signed with the
// stack's TSIG key, and is the resolver Pebble validates through. Every
// other name it forwards to pebble-challtestsrv, so the tests that point
// names at their HTTP-01 responders (ChallTestSrv.AddA) or publish TXT
// records through challtestsrv work as before.
const (
	// DNSZone is an ordinary test zone: its names' _acme-challenge records
	// are written into it by RFC 2136.
	DNSZone = "certfleet-dns.test"
	// DNSDelegationZone is the acme-dns style delegation target: names
	// elsewhere CNAME their _acme-challenge into it.
	DNSDelegationZone = "acme-delegate.test"
	// DNSTSIGKeyName names the TSIG key allowed to update both zones (any
	// record type under them).
	DNSTSIGKeyName = "certfleet-testenv"
)

var bindAddr = addr(8054)

// dnsZones are the zones BIND holds.
var dnsZones = []string{DNSZone, DNSDelegationZone}

// bindLayout is where BIND's files are for one stack: configuration and
// zones (with their journals) in the data directory, the key in secrets.
type bindLayout struct {
	data, conf, keyFile string
}

func bindAt(l layout) bindLayout {
	data := filepath.Join(l.data, "bind")
	return bindLayout{data: data, conf: filepath.Join(data, "named.conf"), keyFile: filepath.Join(l.state, "secrets", "dns-tsig.key")}
}

// bindConfig renders named.conf. Nothing in it is secret: the key is
// included from its 0600 file.
func (b bindLayout) config() string {
	var z strings.Builder
	for _, zone := range dnsZones {
		fmt.Fprintf(&z, "zone %q {\n\ttype primary;\n\tfile %q;\n\tupdate-policy { grant %s zonesub ANY; };\n};\n",
			zone, filepath.Join(b.data, zone+".zone"), DNSTSIGKeyName)
	}
	return fmt.Sprintf(`// written by testenv; regenerated at each start
options {
	directory %q;
	pid-file none;
	session-keyfile %q;
	managed-keys-directory %q;
	listen-on port %d { 127.0.0.1; };
	listen-on-v6 { none; };
	allow-query { 127.0.0.0/8; };
	// Every other name: pebble-challtestsrv, as Pebble resolved before.
	recursion yes;
	allow-recursion { 127.0.0.0/8; };
	forward only;
	forwarders { 127.0.0.1 port %d; };
	dnssec-validation no;
	empty-zones-enable no;
	notify no;
	// challtestsrv's answers change between tests: keep nothing.
	max-cache-ttl 0;
	max-ncache-ttl 0;
	servfail-ttl 0;
};
controls { };
include %q;
%s`, b.data, filepath.Join(b.data, "session.key"), b.data, port(8054), port(8053), b.keyFile, z.String())
}

// fingerprint changes with the configuration, so a BIND started with another
// one is restarted by `testenv up`.
func (b bindLayout) fingerprint() string {
	sum := sha256.Sum256([]byte(b.config()))
	return hex.EncodeToString(sum[:8])
}

func bindProc(state string, b bindLayout) proc {
	return proc{name: "bind", dir: state, marker: b.conf, fingerprint: b.fingerprint()}
}

// namedBinary finds named (in /usr/sbin, often not on a user's PATH).
func namedBinary() (string, error) {
	if p, err := exec.LookPath("named"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/sbin/named"); err == nil {
		return "/usr/sbin/named", nil
	}
	return "", errors.New("named not found")
}

func installBind(ctx context.Context) error {
	if _, err := namedBinary(); err == nil {
		return nil
	}
	return aptInstall(ctx, "bind9")
}

// ensureTSIGKey writes the stack's TSIG key (hmac-sha256, random) in BIND's
// format to the secrets directory, mode 0600, unless it exists.
func ensureTSIGKey(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	key := fmt.Sprintf("key %q {\n\talgorithm hmac-sha256;\n\tsecret %q;\n};\n", DNSTSIGKeyName, base64.StdEncoding.EncodeToString(secret))
	return os.WriteFile(path, []byte(key), 0o600)
}

// zoneFile is a test zone: SOA (negative TTL 1 s), NS ns1.certfleet-dns.test
// at 127.0.0.1 (on BIND's port, which NS records cannot say: DNS-01's
// propagation check is told the port).
func zoneFile(zone string) string {
	z := fmt.Sprintf("$TTL 60\n@\tIN SOA\tns1.%[1]s. hostmaster.%[1]s. ( 1 60 60 3600 1 )\n\tIN NS\tns1.%[1]s.\n", DNSZone)
	if zone == DNSZone {
		z += "ns1\tIN A\t127.0.0.1\n"
	}
	return z
}

func startBind(b bindLayout, p proc) error {
	named, err := namedBinary()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(b.data, 0o755); err != nil {
		return err
	}
	if err := ensureTSIGKey(b.keyFile); err != nil {
		return fmt.Errorf("testenv: writing the TSIG key: %w", err)
	}
	for _, zone := range dnsZones {
		if err := os.WriteFile(filepath.Join(b.data, zone+".zone"), []byte(zoneFile(zone)), 0o644); err != nil {
			return err
		}
	}
	if err := os.WriteFile(b.conf, []byte(b.config()), 0o644); err != nil {
		return err
	}
	// -g: foreground, log to stderr; -4: IPv4 only; -n 1: one worker thread
	// (2-core machines).
	return p.start(exec.Command(named, "-g", "-4", "-n", "1", "-c", b.conf))
}

// bindReady: the test zone's SOA is answered, authoritatively.
func bindReady(ctx context.Context) error {
	return dnsSOAAnswers(ctx, bindAddr)
}

func dnsSOAAnswers(ctx context.Context, server string) error {
	m := new(dns.Msg)
	m.SetQuestion(DNSZone+".", dns.TypeSOA)
	c := &dns.Client{Timeout: 2 * time.Second}
	in, _, err := c.ExchangeContext(ctx, m, server)
	if err != nil {
		return err
	}
	if in.Rcode != dns.RcodeSuccess || !in.Authoritative || len(in.Answer) == 0 {
		return fmt.Errorf("SOA %s. answered %s (authoritative %v, %d answers)", DNSZone, dns.RcodeToString[in.Rcode], in.Authoritative, len(in.Answer))
	}
	return nil
}

// DNS01Config is a DNS-01 configuration (package dns01's JSON, as a map a
// test may change before writing it) for the stack's BIND: provider "bind"
// (RFC 2136 with the stack's TSIG key) for both test zones, the delegation
// zone marked as such, BIND as the resolver and the nameserver port, and a
// short propagation bound. It fails when the stack predates BIND.
func (s Settings) DNS01Config() (map[string]any, error) {
	if s.DNSUpdateServer == "" || s.DNSTSIGKeyFile == "" {
		return nil, errors.New("testenv: the stack has no BIND (its env file predates it): run `go run ./cmd/testenv up`")
	}
	_, nsPort, _ := strings.Cut(s.DNSUpdateServer, ":")
	var np int
	if _, err := fmt.Sscan(nsPort, &np); err != nil {
		return nil, fmt.Errorf("testenv: %s=%q: %w", EnvDNSUpdateServer, s.DNSUpdateServer, err)
	}
	return map[string]any{
		"resolvers":            []string{s.DNSServer},
		"nameserver_port":      np,
		"propagation_timeout":  "20s",
		"propagation_interval": "200ms",
		"ttl":                  "5s",
		"providers": map[string]any{
			"bind": map[string]any{"type": "rfc2136", "server": s.DNSUpdateServer, "tsig_key_file": s.DNSTSIGKeyFile},
		},
		"zones": []any{
			map[string]any{"zone": DNSZone, "provider": "bind"},
			map[string]any{"zone": DNSDelegationZone, "provider": "bind", "delegation": true},
		},
	}, nil
}
