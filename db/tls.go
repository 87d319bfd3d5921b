package db

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"unicode"

	"github.com/certfleet/certfleet/internal/secretfile"
)

// checkTransport enforces how the pool may reach its server. To a host that
// is not loopback (or a Unix socket) the connection must be verified TLS:
// sslmode=verify-full with sslrootcert (the CA of the server's certificate),
// and for certificate authentication (CockroachDB's) both sslcert and sslkey,
// unless insecure says otherwise (-database-insecure). pgx's default,
// sslmode=prefer, neither verifies the server nor refuses plaintext. On any
// host the files named must exist and sslkey must not be readable by group
// or others. custom is Config.TLS, which replaces the URL's TLS settings;
// to a remote host it must verify the server.
func checkTransport(connString string, custom *tls.Config, insecure bool, getenv func(string) string) error {
	settings, err := connSettings(connString, getenv)
	if err != nil {
		return err
	}
	for _, k := range []string{"sslrootcert", "sslcert"} {
		if f := settings[k]; f != "" && f != "system" {
			if _, err := os.Stat(f); err != nil {
				return fmt.Errorf("db: %s: %w", k, err)
			}
		}
	}
	if f := settings["sslkey"]; f != "" {
		if err := secretfile.Check(f); err != nil {
			return fmt.Errorf("db: sslkey: %w", err)
		}
	}
	if cert, key := settings["sslcert"] != "", settings["sslkey"] != ""; cert != key {
		if cert {
			return errors.New("db: the URL has sslcert but no sslkey: certificate authentication needs both (sslkey=FILE, the client key)")
		}
		return errors.New("db: the URL has sslkey but no sslcert: certificate authentication needs both (sslcert=FILE, the client certificate)")
	}
	remote := ""
	for _, h := range hosts(settings["host"]) {
		if !isLocal(h) {
			remote = h
			break
		}
	}
	const fix = " (or pass -database-insecure to connect without verifying the server)"
	switch {
	case remote == "" || insecure:
		return nil
	case custom != nil && custom.InsecureSkipVerify:
		return fmt.Errorf("db: host %s is not loopback: Config.TLS skips verifying the server%s", remote, fix)
	case custom != nil:
		return nil
	}
	mode := settings["sslmode"]
	if settings["sslrootcert"] == "system" && mode == "" {
		mode = "verify-full" // pgx's reading of sslrootcert=system
	}
	switch {
	case mode != "verify-full":
		shown := mode
		if shown == "" {
			shown = "unset, which pgx reads as prefer: no verification, plaintext fallback"
		}
		return fmt.Errorf("db: host %s is not loopback: the URL needs sslmode=verify-full with sslrootcert=FILE, it has sslmode %s%s", remote, shown, fix)
	case settings["sslrootcert"] == "":
		return fmt.Errorf("db: host %s: sslmode=verify-full needs sslrootcert=FILE, the CA that signs the server's certificate%s", remote, fix)
	}
	return nil
}

// hosts splits a libpq host list.
func hosts(h string) []string {
	if h == "" {
		return []string{""}
	}
	return strings.Split(h, ",")
}

// isLocal: loopback, a Unix socket directory, or no host (libpq then uses
// the local socket).
func isLocal(h string) bool {
	h = strings.Trim(h, "[]")
	if h == "" || strings.HasPrefix(h, "/") || strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// connSettings returns the libpq settings that decide the transport (host,
// sslmode, sslrootcert, sslcert, sslkey) from a URL or keyword/value
// connection string, falling back to the PG* environment variables as pgx
// does.
func connSettings(connString string, getenv func(string) string) (map[string]string, error) {
	s := map[string]string{}
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err != nil {
			return nil, errors.New("db: config field URL is not a valid URL")
		}
		var hs []string
		for _, hp := range strings.Split(u.Host, ",") {
			if hp == "" {
				continue
			}
			if h, _, err := net.SplitHostPort(hp); err == nil {
				hp = h
			}
			hs = append(hs, hp)
		}
		if len(hs) > 0 {
			s["host"] = strings.Join(hs, ",")
		}
		for k, v := range u.Query() {
			if len(v) > 0 {
				s[k] = v[0]
			}
		}
	} else {
		kv, err := keywordValues(connString)
		if err != nil {
			return nil, err
		}
		for k, v := range kv {
			s[k] = v
		}
	}
	for key, env := range map[string]string{"host": "PGHOST", "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT",
		"sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY"} {
		if _, ok := s[key]; !ok {
			if v := getenv(env); v != "" {
				s[key] = v
			}
		}
	}
	return s, nil
}

// keywordValues parses "host=h sslmode='verify-full' ..." as libpq does:
// values may be single-quoted, with backslash escapes.
func keywordValues(str string) (map[string]string, error) {
	out := map[string]string{}
	for {
		str = strings.TrimLeftFunc(str, unicode.IsSpace)
		if str == "" {
			return out, nil
		}
		eq := strings.IndexRune(str, '=')
		if eq < 0 {
			return nil, errors.New("db: config field URL: a keyword without =value")
		}
		key := strings.TrimSpace(str[:eq])
		str = strings.TrimLeftFunc(str[eq+1:], unicode.IsSpace)
		var val strings.Builder
		if strings.HasPrefix(str, "'") {
			str = str[1:]
			closed := false
			for len(str) > 0 {
				c := str[0]
				str = str[1:]
				if c == '\\' && len(str) > 0 {
					val.WriteByte(str[0])
					str = str[1:]
					continue
				}
				if c == '\'' {
					closed = true
					break
				}
				val.WriteByte(c)
			}
			if !closed {
				return nil, errors.New("db: config field URL: an unterminated quoted value")
			}
		} else {
			for len(str) > 0 && !unicode.IsSpace(rune(str[0])) {
				if str[0] == '\\' && len(str) > 1 {
					str = str[1:]
				}
				val.WriteByte(str[0])
				str = str[1:]
			}
		}
		out[key] = val.String()
	}
}
