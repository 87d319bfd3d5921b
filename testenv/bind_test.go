package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func tsigOf(t *testing.T, path string) (name, alg, secret string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := os.Stat(path); info.Mode().Perm() != 0o600 {
		t.Fatalf("%s has mode %v, want 0600", path, info.Mode().Perm())
	}
	text := string(data)
	_, rest, _ := strings.Cut(text, `secret "`)
	secret, _, _ = strings.Cut(rest, `"`)
	return DNSTSIGKeyName + ".", dns.HmacSHA256, secret
}

func update(t *testing.T, server, zone, keyName, alg, secret string, rrs ...string) (*dns.Msg, error) {
	t.Helper()
	m := new(dns.Msg)
	m.SetUpdate(zone)
	for _, r := range rrs {
		rr, err := dns.NewRR(r)
		if err != nil {
			t.Fatal(err)
		}
		m.Insert([]dns.RR{rr})
	}
	m.SetTsig(keyName, alg, 300, time.Now().Unix())
	c := &dns.Client{Net: "tcp", TsigSecret: map[string]string{keyName: secret}, Timeout: 5 * time.Second}
	in, _, err := c.Exchange(m, server)
	return in, err
}

func query(t *testing.T, server, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	in, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, server)
	if err != nil {
		t.Fatalf("%s %s: %v", name, dns.TypeToString[qtype], err)
	}
	return in
}

// BIND holds both test zones, takes updates signed with the stack's key
// (and only those), serves a CNAME into the delegation zone with its target,
// and forwards every other name to challtestsrv (which answers 127.0.0.1).
func TestBindServesTestZones(t *testing.T) {
	s := Require(t)
	cfg, err := s.DNS01Config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg["resolvers"].([]string)[0] != s.DNSServer {
		t.Fatalf("DNS01Config resolvers %v", cfg["resolvers"])
	}
	keyName, alg, secret := tsigOf(t, s.DNSTSIGKeyFile)
	for _, z := range []string{DNSZone, DNSDelegationZone} {
		in := query(t, s.DNSUpdateServer, z+".", dns.TypeSOA)
		if in.Rcode != dns.RcodeSuccess || !in.Authoritative || len(in.Answer) != 1 {
			t.Fatalf("SOA %s: %v", z, in)
		}
	}
	label := "t" + strings.ReplaceAll(time.Now().Format("150405.000000"), ".", "")
	name := "_acme-challenge." + label + "." + DNSZone + "."
	target := label + "." + DNSDelegationZone + "."
	if in, err := update(t, s.DNSUpdateServer, DNSZone+".", keyName, alg, secret, name+" 5 IN CNAME "+target); err != nil || in.Rcode != dns.RcodeSuccess {
		t.Fatalf("signed update: %v %v", in, err)
	}
	if in, err := update(t, s.DNSUpdateServer, DNSDelegationZone+".", keyName, alg, secret, target+` 5 IN TXT "token-value"`); err != nil || in.Rcode != dns.RcodeSuccess {
		t.Fatalf("signed update: %v %v", in, err)
	}
	in := query(t, s.DNSServer, name, dns.TypeTXT)
	if len(in.Answer) != 2 || !strings.Contains(in.Answer[1].String(), `"token-value"`) {
		t.Fatalf("TXT through the CNAME: %v", in.Answer)
	}

	// A key BIND does not know, and the right name with a wrong secret.
	bad := "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="
	for _, k := range []string{"stranger.", keyName} {
		in, err := update(t, s.DNSUpdateServer, DNSZone+".", k, alg, bad, "_acme-challenge.evil."+DNSZone+`. 5 IN TXT "x"`)
		if err == nil && in.Rcode == dns.RcodeSuccess {
			t.Fatalf("update signed with a wrong key (%s) accepted", k)
		}
		t.Logf("wrong key %s refused: %v", k, err)
	}
	if in := query(t, s.DNSServer, "_acme-challenge.evil."+DNSZone+".", dns.TypeTXT); len(in.Answer) != 0 {
		t.Fatalf("the refused record is served: %v", in.Answer)
	}

	// Everything else: challtestsrv, through BIND.
	in = query(t, s.DNSServer, "anything."+label+".test.", dns.TypeA)
	if len(in.Answer) != 1 || in.Answer[0].(*dns.A).A.String() != "127.0.0.1" {
		t.Fatalf("forwarded name: %v", in)
	}
}

// A process started with another fingerprint (BIND's configuration,
// Pebble's resolver) is stale; the pid file of an older testenv (no
// fingerprint line) is stale only for a process that has one now.
func TestProcFingerprint(t *testing.T) {
	dir := t.TempDir()
	marker := "certfleet-fp-test-" + filepath.Base(dir)
	p := proc{name: "fp", dir: dir, marker: marker, fingerprint: "conf-a"}
	if err := p.start(exec.Command("sh", "-c", "sleep 30; true", marker)); err != nil {
		t.Fatal(err)
	}
	defer p.stop(5 * time.Second)
	if p.pid() == 0 || p.stale() {
		t.Fatalf("pid %d, stale %v", p.pid(), p.stale())
	}
	q := p
	q.fingerprint = "conf-b"
	if !q.stale() || q.pid() == 0 {
		t.Fatalf("another fingerprint: stale %v, pid %d", q.stale(), q.pid())
	}
	// An older pid file: pid and marker only.
	if err := os.WriteFile(p.pidFile(), []byte(strings.Join([]string{strconv.Itoa(p.pid()), marker, ""}, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	if !p.stale() {
		t.Fatal("a pid file without fingerprint is not stale for a process that has one")
	}
	if r := (proc{name: "fp", dir: dir, marker: marker}); r.stale() || r.pid() == 0 {
		t.Fatalf("without fingerprint on either side: stale %v pid %d", r.stale(), r.pid())
	}
}
