package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libdns/libdns"
	"github.com/libdns/rfc2136"
	"github.com/miekg/dns"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/dns01"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/seal"
	"github.com/certfleet/certfleet/testenv"
)

// hiddenPrimary acknowledges every signed update and serves nothing: a
// provider whose writes never reach the zone's authoritative servers.
func hiddenPrimary(t *testing.T, keyName, secret string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{Listener: l, TsigSecret: map[string]string{keyName: secret},
		MsgAcceptFunc: func(dns.Header) dns.MsgAcceptAction { return dns.MsgAccept }, // updates too
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(r)
			if r.IsTsig() != nil && w.TsigStatus() == nil {
				m.SetTsig(keyName, dns.HmacSHA256, 300, time.Now().Unix())
			}
			_ = w.WriteMsg(m)
		})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return l.Addr().String()
}

// The worker with -dns01-config against testenv's BIND and Pebble: a
// wildcard and a name whose _acme-challenge is a CNAME into the delegation
// zone are obtained; a tenant whose provider has a wrong TSIG key and one
// whose provider's writes never reach the zone's servers each end with a
// permanent cert_failed naming the problem.
func TestWorkerDNS01Providers(t *testing.T) {
	s := testenv.Require(t)
	cfg, err := s.DNS01Config()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := newFixture(t, ctx, s, "d", 2)
	bin, dbURL, d, suffix, topics := f.bin, f.dbURL, f.d, f.suffix, f.topics

	// Providers: the stack's BIND, the same with a wrong key, and a hidden
	// primary with the right key. Routing: the delegation zone by zone, two
	// tenants by tenant, everything else by default.
	dir := t.TempDir()
	key, err := dns01.ReadTSIGKey(s.DNSTSIGKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	wrong := key
	wrong.Secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="
	wrongFile := filepath.Join(dir, "wrong.key")
	if err := os.WriteFile(wrongFile, []byte(wrong.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	hidden := hiddenPrimary(t, key.Name+".", key.Secret)
	providers := cfg["providers"].(map[string]any)
	providers["wrongkey"] = map[string]any{"type": "rfc2136", "server": s.DNSUpdateServer, "tsig_key_file": wrongFile}
	providers["hidden"] = map[string]any{"type": "rfc2136", "server": hidden, "tsig_key_file": s.DNSTSIGKeyFile}
	cfg["zones"] = []any{map[string]any{"zone": testenv.DNSDelegationZone, "provider": "bind", "delegation": true}}
	cfg["tenants"] = map[string]string{"t-badkey": "wrongkey", "t-hidden": "hidden"}
	cfg["default_provider"] = "bind"
	cfg["propagation_timeout"] = "3s"
	data, _ := json.Marshal(cfg)
	confFile := filepath.Join(dir, "dns01.json")
	if err := os.WriteFile(confFile, data, 0o644); err != nil {
		t.Fatal(err)
	}

	// The customer's CNAME into the delegation zone.
	cnamed := "c" + suffix + "." + testenv.DNSZone
	target := dns01.DelegationTarget(cnamed, testenv.DNSDelegationZone)
	bind := &rfc2136.Provider{KeyName: key.Name, KeyAlg: key.Algorithm, Key: key.Secret, Server: s.DNSUpdateServer}
	if _, err := bind.AppendRecords(ctx, testenv.DNSZone+".", []libdns.Record{libdns.CNAME{Name: "_acme-challenge.c" + suffix, TTL: 5 * time.Second, Target: target}}); err != nil {
		t.Fatal(err)
	}

	listen := testenv.FreeAddr(t, "127.0.0.1")
	log := &testenv.LogBuffer{}
	cmd := exec.Command(bin, "-owner", "dns01-worker", "-listen", listen, "-concurrency", "4",
		"-topic-requests", topics.Requests, "-topic-retry", topics.Retry, "-topic-dlq", topics.DLQ,
		"-topic-events", topics.Events, "-topic-ratelimit-changes", topics.RateLimitChanges,
		"-group", "certfleet-d-"+suffix, "-profile", testenv.PebbleShortProfile,
		"-challenge-types", "dns-01", "-dns01-config", confFile)
	keyLine, err := seal.GenerateKeyText("k1")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), "CERTFLEET_KAFKA_BROKERS="+strings.Join(s.KafkaBrokers, ","), "CERTFLEET_DATABASE_URL="+dbURL,
		"CERTFLEET_SEAL_KEYS="+keyLine, "CERTFLEET_CAS=pebble="+s.ACMEDirectory, "CERTFLEET_ACME_TLS_CA="+s.ACMETLSCA,
		"CERTFLEET_ALLOW_SPECIAL_NAMES=test")
	cmd.Stdout, cmd.Stderr = io.Discard, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("worker log:\n%s", testenv.Tail(log.String(), 40))
		}
	})
	waitReady(t, ctx, listen)

	wild := "w" + suffix + "." + testenv.DNSZone
	reqs := map[string]*events.IssuanceRequest{
		"wildcard": {SANs: []string{"*." + wild, wild}, Tenant: "t-ok"},
		"cname":    {SANs: []string{cnamed}, Tenant: "t-ok"},
		"badkey":   {SANs: []string{"k" + suffix + "." + testenv.DNSZone}, Tenant: "t-badkey"},
		"hidden":   {SANs: []string{"h" + suffix + "." + testenv.DNSZone}, Tenant: "t-hidden"},
	}
	var evs []events.Event
	for id, r := range reqs {
		r.RequestID, r.KeyType, r.CA, r.Reason = id+"-"+suffix, events.KeyECDSAP256, "pebble", events.ReasonNew
		ev, err := events.New("//test", time.Now(), r)
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	prod, err := events.NewProducer(events.ProducerConfig{Brokers: s.KafkaBrokers, Topics: topics})
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	if err := prod.Publish(ctx, evs...); err != nil {
		t.Fatal(err)
	}
	obtained, failed := map[string]*events.CertObtained{}, map[string]*events.CertFailed{}
	err = waitTopic(ctx, s.KafkaBrokers, topics.Events, func(all []kafka.Message) bool {
		for _, m := range all {
			ev, err := events.Decode(m)
			if err != nil {
				continue
			}
			switch x := ev.Data.(type) {
			case *events.CertObtained:
				obtained[strings.TrimSuffix(x.RequestID, "-"+suffix)] = x
			case *events.CertFailed:
				failed[strings.TrimSuffix(x.RequestID, "-"+suffix)] = x
			}
		}
		return len(obtained)+len(failed) >= len(reqs)
	})
	if err != nil {
		t.Fatalf("outcomes: obtained %v, failed %v: %v", keys(obtained), keys(failed), err)
	}
	for _, id := range []string{"wildcard", "cname"} {
		if obtained[id] == nil {
			t.Errorf("%s: not obtained (failed: %+v)", id, failed[id])
		}
	}
	for id, want := range map[string][]string{
		"badkey": {"urn:certfleet:error:dns01Provider", `provider "wrongkey"`, "bad authentication"},
		"hidden": {"urn:certfleet:error:dns01Propagation", "_acme-challenge.h" + suffix + "." + testenv.DNSZone + ".", s.DNSUpdateServer + " (ns1." + testenv.DNSZone + ".)"},
	} {
		f := failed[id]
		if f == nil {
			t.Errorf("%s: no cert_failed (obtained: %v)", id, obtained[id] != nil)
			continue
		}
		if f.Retryable || f.ProblemType != want[0] {
			t.Errorf("%s: cert_failed %s retryable %v, want %s permanent", id, f.ProblemType, f.Retryable, want[0])
		}
		for _, w := range want[1:] {
			if !strings.Contains(f.Detail, w) {
				t.Errorf("%s: detail %q does not name %q", id, f.Detail, w)
			}
		}
		t.Logf("%s: cert_failed %s: %s", id, f.ProblemType, f.Detail)
	}
	var rows int
	if err := d.Pool().QueryRow(ctx, `SELECT count(*) FROM acme_dns01_records`).Scan(&rows); err != nil || rows != 0 {
		t.Errorf("%d dns-01 rows left (%v)", rows, err)
	}
	m := new(dns.Msg)
	m.SetQuestion(target, dns.TypeTXT)
	if in, _, err := (&dns.Client{}).Exchange(m, s.DNSUpdateServer); err != nil || len(in.Answer) != 0 {
		t.Errorf("TXT left at %s: %v %v", target, in, err)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
