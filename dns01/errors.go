package dns01

import (
	"fmt"
	"strings"
	"time"

	"github.com/libdns/libdns"
)

// Kind is what failed in a DNS-01 attempt.
type Kind string

const (
	// KindLookup: a CNAME, SOA or NS lookup failed (the resolver failed, a
	// CNAME loop, no zone holds the name).
	KindLookup Kind = "lookup"
	// KindNoProvider: no provider is configured for the record's zone.
	KindNoProvider Kind = "noProvider"
	// KindProvider: the provider refused or failed to write or delete the
	// record (credentials, permissions, outage).
	KindProvider Kind = "provider"
	// KindPropagation: the record was written but not every authoritative
	// server of its zone served it within the propagation timeout.
	KindPropagation Kind = "propagation"
)

// Error ends a DNS-01 attempt. Permanent says a retry cannot help without an
// operator's change (wrong credentials, no provider, a CNAME loop, a record
// that never propagated within the configured bound); network failures and
// outages are not permanent.
type Error struct {
	Kind     Kind
	Record   string        // absolute name of the TXT record (after CNAMEs)
	Zone     string        // its zone, when known
	Provider string        // the configuration's provider name, when chosen
	Servers  []string      // propagation: the authoritative servers still without the record, with what they answered
	Bound    time.Duration // propagation: the configured bound (propagation_timeout)
	Waited   time.Duration // propagation: how long it waited
	Err      error

	op        string // provider: write or delete
	permanent bool
}

// Permanent reports whether retrying cannot help.
func (e *Error) Permanent() bool { return e.permanent }

// ProblemType is the cert_failed problem type for e:
// urn:certfleet:error:dns01<Kind>, e.g. urn:certfleet:error:dns01Propagation.
func (e *Error) ProblemType() string {
	k := string(e.Kind)
	return "urn:certfleet:error:dns01" + strings.ToUpper(k[:1]) + k[1:]
}

func (e *Error) Error() string {
	switch e.Kind {
	case KindPropagation:
		msg := fmt.Sprintf("dns-01: TXT record %s was not served by every authoritative server of zone %s within the propagation bound of %s", e.Record, e.Zone, e.Bound)
		if len(e.Servers) > 0 {
			msg += ": " + strings.Join(e.Servers, "; ")
		}
		if e.Err != nil {
			msg += ": " + e.Err.Error()
		}
		return msg
	case KindProvider:
		msg := fmt.Sprintf("dns-01: DNS provider %q failed to %s TXT record %s in zone %s: %v", e.Provider, e.op, e.Record, e.Zone, e.Err)
		if e.permanent {
			msg += " (the provider refused the credentials or the permission: check them)"
		}
		return msg
	case KindNoProvider:
		return fmt.Sprintf("dns-01: no DNS provider for TXT record %s: %v", e.Record, e.Err)
	default:
		return fmt.Sprintf("dns-01: TXT record %s: %v", e.Record, e.Err)
	}
}

func (e *Error) Unwrap() error { return e.Err }

// TXT is the libdns record for value at t, relative to t's zone.
func TXT(t Target, value string, ttl time.Duration) []libdns.Record {
	return []libdns.Record{libdns.TXT{Name: libdns.RelativeName(t.Name, t.Zone), TTL: ttl, Text: value}}
}
