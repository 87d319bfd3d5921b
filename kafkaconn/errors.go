package kafkaconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/segmentio/kafka-go"
)

// The causes Explain and Check name; test with errors.Is.
var (
	ErrUntrustedCertificate = errors.New("untrusted broker certificate")
	ErrCertificateName      = errors.New("broker certificate for another name")
	ErrNotTLS               = errors.New("listener does not speak TLS")
	ErrTLSRefused           = errors.New("TLS handshake refused by the broker")
	ErrAuthentication       = errors.New("SASL authentication failed")
	ErrMechanism            = errors.New("SASL mechanism not enabled")
	ErrAuthorization        = errors.New("missing ACL")
	ErrUnknownTopic         = errors.New("unknown topic")
	ErrTimeout              = errors.New("broker did not answer in time")
	ErrUnreachable          = errors.New("broker unreachable")
	ErrNotKafka             = errors.New("broker closed the connection or did not answer as Kafka")
)

// Error is a Kafka failure with its cause named: Kind is one of the Err*
// values above, Err the error kafka-go returned.
type Error struct {
	Broker string // the address (or addresses) it happened with
	Kind   error
	Msg    string
	Err    error
}

func (e *Error) Error() string { return "kafka " + e.Broker + ": " + e.Msg }

// Unwrap returns Kind and Err, so errors.Is finds either.
func (e *Error) Unwrap() []error {
	var out []error
	for _, err := range []error{e.Kind, e.Err} {
		if err != nil {
			out = append(out, err)
		}
	}
	return out
}

// Explain returns err with its cause named in words an operator can act on
// (an untrusted certificate, a wrong password, a missing ACL, a broker that
// does not answer), naming the brokers. action says what was being done,
// for authorization errors: "write to topic certfleet.issuance.requests".
// A context cancellation is returned as it is; an error Explain does not
// recognise is wrapped with the brokers named.
func (c *Connector) Explain(err error, action string) error {
	return c.explain(strings.Join(c.cfg.Brokers, ","), err, action)
}

func (c *Connector) explain(broker string, err error, action string) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) || errors.Is(err, context.Canceled) {
		return err
	}
	e := &Error{Broker: broker, Err: err}
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		record    tls.RecordHeaderError
		dnsErr    *net.DNSError
		kerr      kafka.Error
	)
	ca := "-kafka-tls-ca " + c.cfg.TLSCA
	if c.cfg.TLSCA == "" {
		ca = "the system roots (set -kafka-tls-ca)"
	}
	switch {
	case errors.As(err, &unknownCA):
		e.Kind, e.Msg = ErrUntrustedCertificate, "the broker's certificate is not signed by "+ca
	case errors.As(err, &hostname):
		e.Kind, e.Msg = ErrCertificateName, fmt.Sprintf("the broker's certificate is not valid for %q (%v); set -kafka-tls-server-name to a name it carries", hostname.Host, err)
	case errors.As(err, &invalid):
		e.Kind, e.Msg = ErrUntrustedCertificate, fmt.Sprintf("the broker's certificate is not valid: %v", invalid)
	case errors.As(err, &record):
		e.Kind, e.Msg = ErrNotTLS, "the listener does not speak TLS: use its TLS port, or drop -kafka-tls/-kafka-tls-ca for a plaintext listener"
	case strings.Contains(err.Error(), "remote error: tls:"):
		msg := "the broker refused the TLS handshake (" + tlsAlert(err) + ")"
		if c.cfg.TLSCert == "" {
			msg += ": the listener may require a client certificate (-kafka-tls-cert, -kafka-tls-key)"
		} else {
			msg += ": it may not trust the client certificate " + c.cfg.TLSCert
		}
		e.Kind, e.Msg = ErrTLSRefused, msg
	case errors.As(err, &kerr) && kerr == kafka.SASLAuthenticationFailed:
		e.Kind, e.Msg = ErrAuthentication, fmt.Sprintf("SASL authentication as %s failed (wrong password or mechanism %s)", c.cfg.SASLUser, c.cfg.SASLMechanism)
	case errors.As(err, &kerr) && kerr == kafka.UnsupportedSASLMechanism:
		e.Kind, e.Msg = ErrMechanism, fmt.Sprintf("the listener does not enable SASL mechanism %s (-kafka-sasl-mechanism)", c.cfg.SASLMechanism)
	case errors.As(err, &kerr) && kerr == kafka.IllegalSASLState:
		e.Kind, e.Msg = ErrMechanism, "the listener does not expect SASL here: is it a SASL listener?"
	case errors.As(err, &kerr) && (kerr == kafka.TopicAuthorizationFailed || kerr == kafka.GroupAuthorizationFailed ||
		kerr == kafka.ClusterAuthorizationFailed || kerr == kafka.TransactionalIDAuthorizationFailed):
		if action == "" {
			action = "do this"
		}
		e.Kind, e.Msg = ErrAuthorization, fmt.Sprintf("principal %s may not %s (missing ACL: %s)", c.principal, action, kerr.Title())
	case errors.As(err, &kerr) && kerr == kafka.UnknownTopicOrPartition:
		e.Kind, e.Msg = ErrUnknownTopic, fmt.Sprintf("the topic does not exist, or principal %s may not describe it (missing ACL)", c.principal)
		if action != "" {
			e.Msg = "cannot " + action + ": " + e.Msg
		}
	case errors.Is(err, syscall.ECONNREFUSED):
		e.Kind, e.Msg = ErrUnreachable, "connection refused: nothing listens there"
	case errors.As(err, &dnsErr):
		e.Kind, e.Msg = ErrUnreachable, fmt.Sprintf("cannot resolve %s: %v", dnsErr.Name, dnsErr.Err)
	case isTimeout(err):
		e.Kind, e.Msg = ErrTimeout, fmt.Sprintf("no answer within %v (-kafka-timeout): is it a Kafka listener, and does it expect TLS%s?", c.Timeout(), saslHint(c))
	case errors.Is(err, io.ErrNoProgress) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed):
		msg := "the connection was closed or the answer was not Kafka's: a wrong port, or a listener that expects "
		switch {
		case c.tls == nil && c.mech == nil:
			msg += "TLS (-kafka-tls-ca) or SASL (-kafka-sasl-mechanism)"
		case c.tls == nil:
			msg += "TLS (-kafka-tls-ca)"
		case c.mech == nil:
			msg += "SASL (-kafka-sasl-mechanism) or a client certificate (-kafka-tls-cert)"
		default:
			msg += "another SASL mechanism or no SASL"
		}
		e.Kind, e.Msg = ErrNotKafka, msg+" ("+err.Error()+")"
	default:
		e.Msg = err.Error()
		if action != "" {
			e.Msg = "cannot " + action + ": " + e.Msg
		}
	}
	return e
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, kafka.RequestTimedOut) ||
		(errors.As(err, &ne) && ne.Timeout())
}

func saslHint(c *Connector) string {
	if c.mech == nil {
		return " or SASL"
	}
	return ""
}

// tlsAlert extracts "tls: bad certificate" from "remote error: tls: bad certificate".
func tlsAlert(err error) string {
	s := err.Error()
	if i := strings.Index(s, "remote error: "); i >= 0 {
		return s[i+len("remote error: "):]
	}
	return s
}
