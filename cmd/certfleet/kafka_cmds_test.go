package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/audit"
	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/seal"
	"github.com/certfleet/certfleet/testenv"
)

func kafkaTopics(t *testing.T) (testenv.Settings, events.Topics) {
	t.Helper()
	s := testenv.Require(t)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	sfx := hex.EncodeToString(b)
	tp := events.Topics{Requests: "c.req." + sfx, Retry: "c.retry." + sfx, DLQ: "c.dlq." + sfx, Events: "c.events." + sfx, RateLimitChanges: "c.rl." + sfx}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := events.Provision(ctx, &kafka.Client{Addr: kafka.TCP(s.KafkaBrokers...)}, tp.Specs(2, 1)...); err != nil {
		t.Fatal(err)
	}
	return s, tp
}

// testProducer is a producer on testenv's brokers, closed at cleanup.
func testProducer(t *testing.T, s testenv.Settings, tp events.Topics) *events.Producer {
	t.Helper()
	prod, err := events.NewProducer(events.ProducerConfig{Brokers: s.KafkaBrokers, Topics: tp})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prod.Close() })
	return prod
}

func topicArgs(s testenv.Settings, tp events.Topics) []string {
	return []string{"--brokers", strings.Join(s.KafkaBrokers, ","), "--topic-requests", tp.Requests, "--topic-events", tp.Events, "--topic-dlq", tp.DLQ}
}

// request publishes a valid request, and with --wait reports the outcome a
// worker publishes for it (here the test plays the worker: a permanent
// failure, exit status 1).
func TestRequestCommand(t *testing.T) {
	s, tp := kafkaTopics(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	args := append([]string{"request", "--san", "WWW.Example.ORG", "--tenant", "t1", "--ca", "pebble", "--request-id", "req-cli-1"}, topicArgs(s, tp)...)
	if code := run(ctx, args, &out, &errb); code != exitOK {
		t.Fatalf("code %d: %s", code, errb.String())
	}
	msgs, err := events.ReadTopic(ctx, nil, s.KafkaBrokers, tp.Requests, 0)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("requests topic: %d records, %v", len(msgs), err)
	}
	ev, err := events.Decode(msgs[0])
	if err != nil {
		t.Fatal(err)
	}
	req := ev.Data.(*events.IssuanceRequest)
	if req.RequestID != "req-cli-1" || req.SANs[0] != "www.example.org" || req.CA != "pebble" {
		t.Fatalf("published %+v", req)
	}

	// --wait: answer the second request with a permanent failure.
	prod := testProducer(t, s, tp)
	go func() {
		for ctx.Err() == nil {
			msgs, _ := events.ReadTopic(ctx, nil, s.KafkaBrokers, tp.Requests, 0)
			if len(msgs) >= 2 {
				f, _ := events.New("//test", time.Now(), &events.CertFailed{RequestID: "req-cli-2", SANs: []string{"www.example.org"},
					Tenant: "t1", CA: "pebble", ProblemType: "urn:ietf:params:acme:error:rejectedIdentifier", Detail: "no", Attempt: 1})
				_ = prod.Publish(ctx, f)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	out.Reset()
	errb.Reset()
	args = append([]string{"request", "--san", "www.example.org", "--tenant", "t1", "--ca", "pebble", "--request-id", "req-cli-2", "--wait", "30s"}, topicArgs(s, tp)...)
	if code := run(ctx, args, &out, &errb); code != exitError || !strings.Contains(out.String(), "rejectedIdentifier") {
		t.Fatalf("--wait on a failed request: code %d, out %q, err %q", code, out.String(), errb.String())
	}

	// --wait on a request a worker dead-letters (here the test plays the
	// worker): reported at once, with the reason and the record to replay.
	go func() {
		for ctx.Err() == nil {
			msgs, _ := events.ReadTopic(ctx, nil, s.KafkaBrokers, tp.Requests, 0)
			for _, m := range msgs {
				if ev, err := events.Decode(m); err == nil && requestID(ev) == "req-cli-3" {
					_ = prod.WriteMessages(ctx, events.DeadLetterRecord(tp.DLQ, m, events.DeadLetter{Reason: `unknown CA "nosuchca": this worker orders only from its configured CAs`,
						Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Group: "worker-7", Time: time.Now()}))
					return
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	out.Reset()
	errb.Reset()
	t0 := time.Now()
	args = append([]string{"request", "--san", "www.example.org", "--tenant", "t1", "--ca", "nosuchca", "--request-id", "req-cli-3", "--wait", "2m"}, topicArgs(s, tp)...)
	code := run(ctx, args, &out, &errb)
	for _, want := range []string{"dead-lettered", `unknown CA "nosuchca"`, "worker-7", "certfleet dlq replay --record "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("dead-lettered request: output lacks %q:\n%s", want, out.String())
		}
	}
	if code != exitError || !strings.Contains(errb.String(), "was dead-lettered") || time.Since(t0) > 30*time.Second {
		t.Fatalf("dead-lettered request: code %d after %v, err %q", code, time.Since(t0), errb.String())
	}

	for _, bad := range [][]string{{"request"}, {"request", "--san", "exa mple.com", "--brokers", "x:1"}, {"request", "--san", "a.example", "--tenant", "t1", "--brokers", ""}} {
		if code := run(ctx, bad, &out, &errb); code != exitUsage {
			t.Errorf("%v: code %d, want %d", bad, code, exitUsage)
		}
	}
}

// dlq list shows dead-lettered records with their origin and reason; replay
// sends one back to its source topic without the DLQ headers.
func TestDLQCommands(t *testing.T) {
	s, tp := kafkaTopics(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	prod := testProducer(t, s, tp)
	// By design (issue 16) replay sends only records that decode: the record
	// here is a request dead-lettered for an unknown CA.
	orig := dlqRequest(t, "req-dlq-1", tp.Requests)
	rec := events.DeadLetterRecord(tp.DLQ, orig, events.DeadLetter{Reason: "malformed JSON", Topic: tp.Requests, Partition: 1, Offset: 42, Group: "worker-3", Time: time.Now()})
	if err := prod.WriteMessages(ctx, rec); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run(ctx, append([]string{"dlq", "list", "--json"}, topicArgs(s, tp)...), &out, &errb); code != exitOK {
		t.Fatalf("list: %d %s", code, errb.String())
	}
	var rows []dlqRow
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil || len(rows) != 1 {
		t.Fatalf("list --json: %v %q", err, out.String())
	}
	if !strings.Contains(out.String(), `"owner": "worker-3"`) {
		t.Errorf("list --json does not name the owner: %s", out.String())
	}
	if rows[0].Reason != "malformed JSON" || rows[0].Source != tp.Requests+"/1/42" || rows[0].Owner != "worker-3" {
		t.Fatalf("row %+v", rows[0])
	}
	out.Reset()
	if code := run(ctx, append([]string{"dlq", "list"}, topicArgs(s, tp)...), &out, &errb); code != exitOK || !strings.Contains(out.String(), "malformed JSON") {
		t.Fatalf("list table: %d %q", code, out.String())
	}
	out.Reset()
	if code := run(ctx, append([]string{"dlq", "list", "--quiet"}, topicArgs(s, tp)...), &out, &errb); code != exitOK || out.String() != rows[0].Record+"\n" {
		t.Fatalf("list --quiet: %d %q", code, out.String())
	}
	out.Reset()
	url := migratedDatabase(t)
	if code := run(ctx, append([]string{"dlq", "replay", "--record", rows[0].Record, "--database-url", url}, topicArgs(s, tp)...), &out, &errb); code != exitOK {
		t.Fatalf("replay: %d %s", code, errb.String())
	}
	back, err := events.ReadTopic(ctx, nil, s.KafkaBrokers, tp.Requests, 0)
	if err != nil || len(back) != 1 || !bytes.Equal(back[0].Value, orig.Value) {
		t.Fatalf("replayed: %v %v", back, err)
	}
	for _, h := range back[0].Headers {
		if strings.HasPrefix(h.Key, "certfleet_dlq_") {
			t.Fatalf("replayed record keeps DLQ header %s", h.Key)
		}
	}
	if e := wantOneAudit(t, url, audit.DLQReplay, tp.DLQ+"/"+rows[0].Record); e.Detail["destination"] != tp.Requests {
		t.Errorf("replay audit detail %v; want destination %s", e.Detail, tp.Requests)
	}
	for _, bad := range [][]string{{"dlq"}, append([]string{"dlq", "replay"}, topicArgs(s, tp)...), append([]string{"dlq", "replay", "--record", "x"}, topicArgs(s, tp)...),
		append([]string{"dlq", "replay", "--all", "--database-url", ""}, topicArgs(s, tp)...)} {
		if code := run(ctx, bad, &out, &errb); code != exitUsage {
			t.Errorf("%v: code %d, want %d", bad[:2], code, exitUsage)
		}
	}
}

// dlqRequest is an encoded issuance request for topic, with a tracing
// header a replay must not copy back.
func dlqRequest(t *testing.T, id, topic string) kafka.Message {
	t.Helper()
	ev, err := events.New("//test", time.Now(), &events.IssuanceRequest{RequestID: id, SANs: []string{"www.example.org"}, Tenant: "t1",
		KeyType: events.KeyECDSAP256, CA: "nosuchca", Reason: events.ReasonNew})
	if err != nil {
		t.Fatal(err)
	}
	m, err := events.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	m.Topic = topic
	m.Headers = append(m.Headers, kafka.Header{Key: "traceparent", Value: []byte("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")})
	return m
}

func migratedDatabase(t *testing.T) string {
	t.Helper()
	url := testenv.FreshDatabase(t)
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"migrate", "--database-url", url}, &out, &errb); code != exitOK {
		t.Fatalf("migrate: %s", errb.String())
	}
	return url
}

// issue 16: replay sends a record only back to the requests or retry topic
// (never to the topic its own certfleet_dlq_topic header names), only when
// it still decodes as a request, with its ce_* and content-type headers
// only, and each DLQ record once: --all run twice sends nothing new. list
// shows every record's full cause first, sanitised, in partition/offset
// order.
func TestDLQReplayIsBounded(t *testing.T) {
	s, tp := kafkaTopics(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	prod := testProducer(t, s, tp)
	dl := func(m kafka.Message, reason, from string) kafka.Message {
		return events.DeadLetterRecord(tp.DLQ, m, events.DeadLetter{Reason: reason, Topic: from, Partition: 0, Offset: 1, Group: "worker-1", Time: time.Now()})
	}
	long := "events: sans[0]: invalid SAN: " + strings.Repeat("x", 150) + " THE CAUSE AT THE END"
	broken := dlqRequest(t, "req-broken", tp.Requests)
	broken.Value = []byte("{broken")
	keyed := dlqRequest(t, "req-key", tp.Requests)
	keyed.Value = []byte(`{"k":"-----BEGIN PRIVATE KEY-----"}`)
	recs := []kafka.Message{
		dl(dlqRequest(t, "req-ok", tp.Requests), long, tp.Requests),                     // replayable, to requests
		dl(dlqRequest(t, "req-retry", tp.Retry), "unknown CA \x1b[31m\u202e", tp.Retry), // replayable, to retry
		dl(dlqRequest(t, "req-elsewhere", tp.Requests), "forged origin", tp.Events),     // names the events topic
		dl(dlqRequest(t, "req-far", tp.Requests), "forged origin", "some.other.topic"),  // names a foreign topic
		dl(broken, "malformed JSON", tp.Requests),                                       // still does not decode
		dl(keyed, "private key", tp.Requests),                                           // a stub
	}
	for _, r := range recs { // one at a time: offsets in the order written
		if err := prod.WriteMessages(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	var out, errb bytes.Buffer
	if code := run(ctx, append([]string{"dlq", "list", "--json"}, topicArgs(s, tp)...), &out, &errb); code != exitOK {
		t.Fatalf("list: %d %s", code, errb.String())
	}
	var rows []dlqRow
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil || len(rows) != len(recs) {
		t.Fatalf("list --json: %v %q", err, out.String())
	}
	byReq := map[string]dlqRow{}
	for i, r := range rows {
		if i > 0 {
			var p0, o0, p1, o1 int
			fmt.Sscanf(rows[i-1].Record, "%d:%d", &p0, &o0)
			fmt.Sscanf(r.Record, "%d:%d", &p1, &o1)
			if p0 > p1 || p0 == p1 && o0 >= o1 {
				t.Errorf("list not in partition/offset order: %s before %s", rows[i-1].Record, r.Record)
			}
		}
		if strings.ContainsAny(r.Reason, "\x1b\u202e") {
			t.Errorf("reason %q not sanitised", r.Reason)
		}
		switch {
		case strings.Contains(r.Reason, "THE CAUSE"):
			byReq["ok"] = r
		case strings.HasPrefix(r.Reason, "unknown CA"):
			byReq["retry"] = r
		case r.Stub != "":
			byReq["stub"] = r
		}
	}
	if byReq["ok"].Reason != long || byReq["stub"].Stub != events.StubPrivateKey {
		t.Errorf("rows %+v: want the long reason whole and the stub marked", byReq)
	}
	out.Reset()
	if code := run(ctx, append([]string{"dlq", "list"}, topicArgs(s, tp)...), &out, &errb); code != exitOK ||
		!strings.Contains(out.String(), byReq["ok"].Record+"  "+long+"\n") || strings.Contains(out.String(), "\x1b") {
		t.Fatalf("list: want each record's cause first and whole: %q", out.String())
	}

	url := migratedDatabase(t)
	replay := func(args ...string) (int, string) {
		var out, errb bytes.Buffer
		code := run(ctx, append(append([]string{"dlq", "replay", "--database-url", url, "--topic-retry", tp.Retry}, args...), topicArgs(s, tp)...), &out, &errb)
		return code, out.String() + errb.String()
	}
	// A named record that is refused: exit 1 with the reason, nothing sent.
	if code, text := replay("--record", byReq["stub"].Record); code != exitError || !strings.Contains(text, "a stub (private_key)") {
		t.Fatalf("replay of a stub: %d %q", code, text)
	}
	code, text := replay("--all")
	t.Logf("replay --all:\n%s", text)
	if code != exitOK || !strings.Contains(text, "replayed 2 record(s)") {
		t.Fatalf("replay --all: %d %q", code, text)
	}
	for _, want := range []string{"not the requests (" + tp.Requests, `"some.other.topic"`, "still does not decode", "a stub (private_key)"} {
		if !strings.Contains(text, want) {
			t.Errorf("replay --all does not say %q", want)
		}
	}
	check := func() {
		t.Helper()
		reqs, err := events.ReadTopic(ctx, nil, s.KafkaBrokers, tp.Requests, 0)
		if err != nil || len(reqs) != 1 {
			t.Fatalf("requests topic holds %d records (%v), want the one replayed request", len(reqs), err)
		}
		for _, h := range reqs[0].Headers {
			if !strings.HasPrefix(h.Key, "ce_") && h.Key != "content-type" {
				t.Errorf("replayed record carries header %s: only ce_* and content-type are copied", h.Key)
			}
		}
		if ev, err := events.Decode(reqs[0]); err != nil || ev.Data.(*events.IssuanceRequest).RequestID != "req-ok" {
			t.Errorf("replayed to requests: %v %v", ev, err)
		}
		retry, err := events.ReadTopic(ctx, nil, s.KafkaBrokers, tp.Retry, 0)
		if err != nil || len(retry) != 1 {
			t.Fatalf("retry topic holds %d records (%v), want 1", len(retry), err)
		}
		for _, topic := range []string{tp.Events, tp.RateLimitChanges} {
			if other, err := events.ReadTopic(ctx, nil, s.KafkaBrokers, topic, 0); err != nil || len(other) != 0 {
				t.Errorf("a replayed record reached %s (%d records, %v)", topic, len(other), err)
			}
		}
	}
	check()
	// Again: nothing new; a named replayed record says when and by whom.
	if code, text := replay("--all"); code != exitOK || !strings.Contains(text, "nothing new to replay: 2 already replayed") {
		t.Fatalf("second replay --all: %d %q", code, text)
	}
	if code, text := replay("--record", byReq["ok"].Record); code != exitError || !strings.Contains(text, "already replayed to "+tp.Requests) {
		t.Fatalf("replay of a replayed record: %d %q", code, text)
	}
	check()
}

// export writes the stored chain and the unsealed key, which belong together.
func TestExportCommand(t *testing.T) {
	url := testenv.FreshDatabase(t)
	ctx := context.Background()
	var out, errb bytes.Buffer
	if code := run(ctx, []string{"migrate", "--database-url", url}, &out, &errb); code != exitOK {
		t.Fatal(errb.String())
	}
	d, err := db.Open(ctx, db.Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	keyLine, _ := seal.GenerateKeyText("k1")
	kr, err := seal.ParseKeyring(keyLine)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "x.example.org"}, DNSNames: []string{"x.example.org"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	chain := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	identity := events.Identity([]string{"x.example.org"})
	sealed, err := seal.SealPrivateKey(ctx, kr, key, seal.AAD(seal.PurposeCertKey, identity, "r1"))
	if err != nil {
		t.Fatal(err)
	}
	st := certstore.New(d)
	if _, err := st.Claim(ctx, "r1", identity, "o", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := st.Complete(ctx, "o", certstore.Issued{Identity: identity, RequestID: "r1", Serial: "7", ARICertID: "a.b",
		NotBefore: tmpl.NotBefore, NotAfter: tmpl.NotAfter, ChainPEM: chain, SealedKey: sealed}, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	t.Setenv("CERTFLEET_SEAL_KEYS", keyLine)
	if code := run(ctx, []string{"export", "--database-url", url, "--san", "X.example.org", "--out", dir}, &out, &errb); code != exitOK {
		t.Fatalf("export: %d %s", code, errb.String())
	}
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, identity[:16]+".chain.pem"), filepath.Join(dir, identity[:16]+".key.pem")); err != nil {
		t.Fatalf("exported chain and key do not match: %v", err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, identity[:16]+".key.pem")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", fi.Mode().Perm())
	}
	if strings.Contains(out.String(), "PRIVATE KEY") {
		t.Fatal("key printed to stdout")
	}
	other, _ := seal.GenerateKeyText("k2")
	t.Setenv("CERTFLEET_SEAL_KEYS", other)
	if code := run(ctx, []string{"export", "--database-url", url, "--san", "x.example.org", "--out", dir}, &out, &errb); code != exitError {
		t.Fatalf("export with the wrong keyring: code %d", code)
	}
	// One export, one audit event (the refused one left none).
	if e := wantOneAudit(t, url, audit.KeyExport, identity); e.Serial != "7" || len(e.SANs) != 1 || e.SANs[0] != "x.example.org" {
		t.Errorf("export audit %+v; want serial 7 and the SAN set", e)
	}
	// A key destroyed by retention is said to be so, and nothing is exported.
	if _, err := d.Pool().Exec(ctx, `UPDATE issued_certificates SET sealed_key = ''::BYTEA`); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CERTFLEET_SEAL_KEYS", keyLine)
	errb.Reset()
	if code := run(ctx, []string{"export", "--database-url", url, "--san", "x.example.org", "--out", t.TempDir()}, &out, &errb); code != exitError ||
		!strings.Contains(errb.String(), "destroyed by the retention job") {
		t.Fatalf("export of a destroyed key: code %d %q", code, errb.String())
	}
}

func requestID(ev events.Event) string {
	if r, ok := ev.Data.(*events.IssuanceRequest); ok {
		return r.RequestID
	}
	return ""
}
