package dns01

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/libdns/cloudflare"
	"github.com/libdns/libdns"
	"github.com/libdns/rfc2136"
	"github.com/libdns/route53"
	"github.com/miekg/dns"

	"github.com/certfleet/certfleet/internal/secretfile"
)

// Provider is what DNS-01 needs of a DNS provider: the libdns interfaces to
// add and remove records (zone absolute with a trailing dot, names relative
// to it; DeleteRecords removes exactly the given records).
type Provider interface {
	libdns.RecordAppender
	libdns.RecordDeleter
}

// newProvider builds the libdns provider of p, reading its credential files
// (each checked by internal/secretfile: only its owner may read it).
func (c Config) newProvider(p ProviderConfig) (Provider, error) {
	switch p.Type {
	case TypeRFC2136:
		key, err := ReadTSIGKey(c.path(p.TSIGKeyFile))
		if err != nil {
			return nil, err
		}
		return &rfc2136.Provider{KeyName: key.Name, KeyAlg: key.Algorithm, Key: key.Secret, Server: p.Server}, nil
	case TypeCloudflare:
		token, err := secretfile.ReadTrimmed(c.path(p.APITokenFile))
		if err != nil {
			return nil, err
		}
		cf := &cloudflare.Provider{APIToken: string(token)}
		if p.ZoneTokenFile != "" {
			zt, err := secretfile.ReadTrimmed(c.path(p.ZoneTokenFile))
			if err != nil {
				return nil, err
			}
			cf.ZoneToken = string(zt)
		}
		return cf, nil
	case TypeRoute53:
		r := &route53.Provider{Region: p.Region, Profile: p.Profile, HostedZoneID: p.HostedZoneID, AccessKeyId: p.AccessKeyID}
		if p.SecretAccessKeyFile != "" {
			s, err := secretfile.ReadTrimmed(c.path(p.SecretAccessKeyFile))
			if err != nil {
				return nil, err
			}
			r.SecretAccessKey = string(s)
		}
		if p.SessionTokenFile != "" {
			s, err := secretfile.ReadTrimmed(c.path(p.SessionTokenFile))
			if err != nil {
				return nil, err
			}
			r.SessionToken = string(s)
		}
		return r, nil
	}
	return nil, fmt.Errorf("unknown type %q", p.Type)
}

// TSIGKey is a TSIG key for RFC 2136 updates.
type TSIGKey struct {
	Name      string // key name, e.g. "certfleet-update"
	Algorithm string // e.g. "hmac-sha256"
	Secret    string // base64
}

// tsigAlgorithms are the algorithms miekg/dns signs with.
var tsigAlgorithms = map[string]bool{"hmac-sha1": true, "hmac-sha224": true, "hmac-sha256": true, "hmac-sha384": true, "hmac-sha512": true}

var (
	tsigKeyRe    = regexp.MustCompile(`(?s)key\s+"?([A-Za-z0-9._-]+)"?\s*\{(.*?)\}\s*;`)
	tsigAlgRe    = regexp.MustCompile(`algorithm\s+"?([A-Za-z0-9-]+)"?\s*;`)
	tsigSecretRe = regexp.MustCompile(`secret\s+"([A-Za-z0-9+/=]+)"\s*;`)
)

// ReadTSIGKey reads a TSIG key file in BIND's format, as tsig-keygen (BIND)
// writes it and named.conf includes it:
//
//	key "certfleet-update" {
//		algorithm hmac-sha256;
//		secret "base64...";
//	};
//
// The file must be readable by its owner only (internal/secretfile).
func ReadTSIGKey(path string) (TSIGKey, error) {
	data, err := secretfile.Read(path)
	if err != nil {
		return TSIGKey{}, err
	}
	k, err := ParseTSIGKey(string(data))
	if err != nil {
		return TSIGKey{}, fmt.Errorf("TSIG key file %s: %w", path, err)
	}
	return k, nil
}

// ParseTSIGKey parses one key statement in BIND's format.
func ParseTSIGKey(text string) (TSIGKey, error) {
	// Comments (# ..., // ...) are dropped line by line.
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		if i := strings.Index(l, "#"); i >= 0 {
			l = l[:i]
		}
		if i := strings.Index(l, "//"); i >= 0 {
			l = l[:i]
		}
		lines = append(lines, l)
	}
	text = strings.Join(lines, "\n")
	keys := tsigKeyRe.FindAllStringSubmatch(text, -1)
	switch len(keys) {
	case 0:
		return TSIGKey{}, errors.New(`no key statement (want key "NAME" { algorithm hmac-sha256; secret "BASE64"; };)`)
	case 1:
	default:
		return TSIGKey{}, fmt.Errorf("%d key statements; want one", len(keys))
	}
	k := TSIGKey{Name: keys[0][1]}
	body := keys[0][2]
	if m := tsigAlgRe.FindStringSubmatch(body); m != nil {
		k.Algorithm = strings.ToLower(m[1])
	}
	if m := tsigSecretRe.FindStringSubmatch(body); m != nil {
		k.Secret = m[1]
	}
	switch {
	case k.Algorithm == "":
		return TSIGKey{}, fmt.Errorf("key %q has no algorithm", k.Name)
	case !tsigAlgorithms[k.Algorithm]:
		return TSIGKey{}, fmt.Errorf("key %q: algorithm %q is not one of hmac-sha1, hmac-sha224, hmac-sha256, hmac-sha384, hmac-sha512", k.Name, k.Algorithm)
	case k.Secret == "":
		return TSIGKey{}, fmt.Errorf("key %q has no secret", k.Name)
	}
	if _, err := base64.StdEncoding.DecodeString(k.Secret); err != nil {
		return TSIGKey{}, fmt.Errorf("key %q: the secret is not base64: %v", k.Name, err)
	}
	return k, nil
}

// String renders the key in BIND's format (what ReadTSIGKey reads).
func (k TSIGKey) String() string {
	return fmt.Sprintf("key %q {\n\talgorithm %s;\n\tsecret %q;\n};\n", k.Name, k.Algorithm, k.Secret)
}

// authFailure reports whether a provider's error means it refused the
// credentials or the permission (retrying cannot help until an operator
// changes them), as opposed to a network failure or an outage.
func authFailure(err error) bool {
	if errors.Is(err, dns.ErrSig) || errors.Is(err, dns.ErrAuth) || errors.Is(err, dns.ErrKey) || errors.Is(err, dns.ErrSecret) || errors.Is(err, dns.ErrKeyAlg) || errors.Is(err, dns.ErrTime) {
		return true
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false
	}
	msg := err.Error()
	for _, s := range []string{
		// RFC 2136 servers: the rcodes of a refused or unverifiable update.
		`"NOTAUTH"`, `"REFUSED"`, `"BADSIG"`, `"BADKEY"`, `"BADTIME"`, `"NOTZONE"`,
		// HTTP APIs (Cloudflare, Route 53).
		"HTTP 401", "HTTP 403", "StatusCode: 403", "StatusCode: 401",
		"AccessDenied", "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException",
		"Authentication error", "Invalid API Token", "Unauthorized to access requested resource",
	} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
