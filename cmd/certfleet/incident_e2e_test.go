package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/incident"
	eventschema "github.com/certfleet/certfleet/schema/events"
	"github.com/certfleet/certfleet/testenv"
)

// incidentStack is a fresh database and topics with one issuer-worker
// (4 orders in flight, DNS-01 through challtestsrv) ordering from Pebble.
type incidentStack struct {
	s      testenv.Settings
	topics events.Topics
	dbURL  string
	env    []string // the CLI's environment: database, topics, keyring, CA
	sfx    string
}

func newIncidentStack(t *testing.T, ctx context.Context) *incidentStack {
	t.Helper()
	s, topics := kafkaTopics(t)
	st := &incidentStack{s: s, topics: topics, dbURL: migratedDatabase(t)}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	st.sfx = hex.EncodeToString(b)
	st.env = []string{"CERTFLEET_KAFKA_BROKERS=" + strings.Join(s.KafkaBrokers, ","), "CERTFLEET_DATABASE_URL=" + st.dbURL,
		"CERTFLEET_TOPIC_REQUESTS=" + topics.Requests, "CERTFLEET_TOPIC_RETRY=" + topics.Retry, "CERTFLEET_TOPIC_DLQ=" + topics.DLQ,
		"CERTFLEET_TOPIC_EVENTS=" + topics.Events, "CERTFLEET_TOPIC_RATELIMIT_CHANGES=" + topics.RateLimitChanges,
		"CERTFLEET_SEAL_KEYS=" + testKeyring(t), "CERTFLEET_CAS=pebble=" + s.ACMEDirectory, "CERTFLEET_ACME_TLS_CA=" + s.ACMETLSCA}
	dir := t.TempDir()
	bin, err := testenv.BuildCommand(ctx, dir, "issuer-worker", "../issuer-worker")
	if err != nil {
		t.Fatal(err)
	}
	listen := testenv.FreeAddr(t, "127.0.0.1")
	log := &testenv.LogBuffer{}
	cmd := exec.Command(bin, "-owner", "incident-"+st.sfx, "-group", "certfleet-incident-"+st.sfx, "-concurrency", "4",
		"-challenge-types", "dns-01", "-dns01-challtestsrv", s.ChallTestSrvURL, "-profile", testenv.PebbleShortProfile,
		"-shutdown-timeout", "10s", "--listen", listen)
	cmd.Env = append(os.Environ(), st.env...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("worker log:\n%s", log.Tail(40))
		}
	})
	waitHTTP(t, ctx, "http://"+listen+"/readyz")
	for _, kv := range st.env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	return st
}

// issue publishes one request per name for tenant and waits for every
// certificate.
func (st *incidentStack) issue(t *testing.T, ctx context.Context, tenant string, names ...string) map[string]*events.CertObtained {
	t.Helper()
	prod := testProducer(t, st.s, st.topics)
	var evs []events.Event
	for _, n := range names {
		ev, err := events.New("//test", time.Now(), &events.IssuanceRequest{RequestID: "ie-" + n, SANs: []string{n}, Tenant: tenant,
			KeyType: events.KeyECDSAP256, CA: "pebble", Reason: events.ReasonNew})
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	if err := prod.Publish(ctx, evs...); err != nil {
		t.Fatal(err)
	}
	got := map[string]*events.CertObtained{}
	for len(got) < len(names) {
		all := waitObtained(t, ctx, st.s.KafkaBrokers, st.topics.Events, 1)
		for _, n := range names {
			if ob, ok := all["ie-"+n]; ok {
				got[n] = ob
			}
		}
		if len(got) < len(names) {
			select {
			case <-ctx.Done():
				t.Fatalf("%d of %d certificates obtained", len(got), len(names))
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
	return got
}

// cli runs certfleet in process and returns its exit code and output.
func cli(ctx context.Context, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

// pebbleStatus asks Pebble's management API for a serial's status and
// revocation reason.
func pebbleStatus(t *testing.T, ctx context.Context, s testenv.Settings, serial string) (string, *int) {
	t.Helper()
	tr, err := s.ACMETransport()
	if err != nil {
		t.Fatal(err)
	}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.PebbleManagementURL+"/cert-status-by-serial/"+serial, nil)
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var st struct {
		Status string
		Reason *int
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &st) != nil {
		t.Fatalf("cert-status-by-serial/%s: %s %s", serial, resp.Status, body)
	}
	return st.Status, st.Reason
}

func revokedSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	b, err := eventschema.FS.ReadFile("v1/cert.revoked.json")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	uri := events.TypeCertRevoked.SchemaURI()
	if err := c.AddResource(uri, doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile(uri)
	if err != nil {
		t.Fatal(err)
	}
	return sch
}

// certfleet revoke on Pebble: the dry run lists and changes nothing; a
// revocation by serial with --replace is revoked at Pebble (management API)
// with its reason, reported by one cert.revoked that the published schema
// accepts and that names the replacement, whose request is in the emergency
// lane (priority 9, reason reissue, replacing the revoked certificate) and
// gets a certificate from the worker; by SAN set without --replace; a second
// run finds it revoked already and publishes the same event id again.
func TestRevokeCommandOnPebble(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	st := newIncidentStack(t, ctx)
	tenant := "rv-" + st.sfx
	a, b := "rva-"+st.sfx+".test", "rvb-"+st.sfx+".test"
	got := st.issue(t, ctx, tenant, a, b)
	obA, obB := got[a], got[b]

	code, out, errOut := cli(ctx, "revoke", "--serial", obA.Serial, "--reason", "keyCompromise", "--dry-run")
	if code != exitOK || !strings.Contains(out, obA.Serial) || !strings.Contains(out, "would revoke 1 certificates") || strings.Contains(out, obB.Serial) {
		t.Fatalf("dry run: %d\n%s%s", code, out, errOut)
	}
	if s, _ := pebbleStatus(t, ctx, st.s, obA.Serial); s != "Valid" {
		t.Fatalf("after the dry run Pebble holds %q", s)
	}
	if code, _, errOut := cli(ctx, "revoke", "--serial", obA.Serial, "--reason", "7"); code != exitUsage || !strings.Contains(errOut, "keyCompromise") {
		t.Errorf("reason 7: exit %d %s; want a usage error listing the reasons", code, errOut)
	}

	follow := func() <-chan kafka.Message {
		t.Helper()
		msgs, err := events.Follow(ctx, nil, st.s.KafkaBrokers, st.topics.Events, st.topics.Requests)
		if err != nil {
			t.Fatal(err)
		}
		return msgs
	}
	msgs := follow()
	code, out, errOut = cli(ctx, "revoke", "--serial", obA.Serial, "--reason", "keyCompromise", "--replace")
	if code != exitOK || !strings.Contains(out, "revoked "+obA.Serial) || !strings.Contains(out, "signed with the account") {
		t.Fatalf("revoke --replace: exit %d\n%s%s", code, out, errOut)
	}
	if s, reason := pebbleStatus(t, ctx, st.s, obA.Serial); s != "Revoked" || reason == nil || *reason != 1 {
		t.Fatalf("Pebble holds %q reason %v; want Revoked, keyCompromise (1)", s, reason)
	}
	sch := revokedSchema(t)
	var revoked *events.CertRevoked
	var revokedID string
	var replacement *events.IssuanceRequest
	for revoked == nil || replacement == nil {
		select {
		case m := <-msgs:
			e, err := events.Decode(m)
			if err != nil {
				t.Fatalf("record on %s does not decode: %v", m.Topic, err)
			}
			switch d := e.Data.(type) {
			case *events.CertRevoked:
				inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(m.Value))
				if err != nil {
					t.Fatal(err)
				}
				if err := sch.Validate(inst); err != nil {
					t.Fatalf("cert.revoked does not validate against its schema: %v\n%s", err, m.Value)
				}
				revoked, revokedID = d, e.ID
			case *events.IssuanceRequest:
				replacement = d
			}
		case <-ctx.Done():
			t.Fatal("no cert.revoked and replacement published")
		}
	}
	if revoked.Serial != obA.Serial || revoked.ReasonCode != events.RevokeKeyCompromise || revoked.Tenant != tenant || revoked.CA != "pebble" ||
		revoked.RequestID != obA.RequestID || revoked.ARICertID != obA.ARICertID || !revoked.ReplacementRequested || revoked.ReplacementRequestID != replacement.RequestID {
		t.Errorf("cert.revoked %+v; want the certificate %+v and the replacement %s", revoked, obA, replacement.RequestID)
	}
	if replacement.Priority != incident.EmergencyPriority || replacement.Reason != events.ReasonReissue || replacement.Replaces != obA.ARICertID ||
		replacement.Tenant != tenant || strings.Join(replacement.SANs, ",") != a {
		t.Errorf("replacement %+v; want the emergency lane, reason reissue, replacing %s", replacement, obA.ARICertID)
	}
	// The worker issues the replacement.
	for {
		if _, ok := waitObtained(t, ctx, st.s.KafkaBrokers, st.topics.Events, 1)[replacement.RequestID]; ok {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the replacement was not obtained")
		case <-time.After(500 * time.Millisecond):
		}
	}

	// By SAN set, without a replacement; then again: already revoked.
	code, out, errOut = cli(ctx, "revoke", "--san", b, "--tenant", tenant, "--reason", "4", "--json")
	if code != exitOK || !strings.Contains(out, `"revoked":true`) || strings.Contains(out, "replacement_request_id") {
		t.Fatalf("revoke --san: exit %d\n%s%s", code, out, errOut)
	}
	if s, reason := pebbleStatus(t, ctx, st.s, obB.Serial); s != "Revoked" || reason == nil || *reason != 4 {
		t.Fatalf("Pebble holds %q reason %v; want Revoked, superseded (4)", s, reason)
	}
	msgs = follow()
	code, out, errOut = cli(ctx, "revoke", "--serial", obA.Serial, "--reason", "keyCompromise", "--replace")
	if code != exitOK || !strings.Contains(out, "the CA had revoked it already") {
		t.Fatalf("second revoke: exit %d\n%s%s", code, out, errOut)
	}
	for {
		m := <-msgs
		if e, err := events.Decode(m); err == nil && e.Type() == events.TypeCertRevoked {
			if e.ID != revokedID {
				t.Errorf("the second run's cert.revoked has id %s; want the first's %s", e.ID, revokedID)
			}
			break
		}
	}
}

// certfleet reissue end to end with a small count: the estimate is printed
// first (every bucket within its burst: met at once), four replacements
// are published in the emergency lane and followed to the end; the store
// then holds a newer certificate for every SAN set, ordered for the
// replacement's request id. A dry run against an account override of 1
// per 3 hours says the deadline cannot be met and which override (or how
// many accounts) would meet it, and publishes nothing.
func TestReissueCommandOnPebble(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	st := newIncidentStack(t, ctx)
	tenant := "rs-" + st.sfx
	var names []string
	for i := range 4 {
		names = append(names, fmt.Sprintf("rs%d-%s.test", i, st.sfx))
	}
	got := st.issue(t, ctx, tenant, names...)

	code, out, errOut := cli(ctx, "reissue", "--tenant", tenant, "--deadline", "+1h", "--progress-every", "1s")
	if code != exitOK {
		t.Fatalf("reissue: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("certfleet reissue:\n%s", out)
	for _, want := range []string{"4 certificates to replace", "the deadline can be met", "pebble:NewOrdersPerAccount:" + tenant,
		"published 4 replacement requests (reason reissue, priority 9)", "4/4 obtained, 0 failed", "done", "estimated at least 0s at the allowed rate"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Index(out, "certificates to replace") > strings.Index(out, "published") {
		t.Errorf("the estimate is not printed before publishing:\n%s", out)
	}
	obtained := waitObtained(t, ctx, st.s.KafkaBrokers, st.topics.Events, 8)
	for _, n := range names {
		old := got[n]
		id := incident.ReplacementID(incident.Certificate{CA: "pebble", Serial: old.Serial, RequestID: old.RequestID})
		ob, ok := obtained[id]
		if !ok || ob.Serial == old.Serial || !ob.NotBefore.After(old.NotBefore.Add(-time.Second)) || ob.SANs[0] != n {
			t.Errorf("%s: no newer certificate for replacement %s (%+v)", n, id, ob)
		}
	}

	// An account limit of 1 per 3 hours: the deadline cannot be met.
	if code, out, errOut := cli(ctx, "override", "set", "--limit", "NewOrdersPerAccount", "--key", tenant, "--count", "1", "--period", "3h"); code != exitOK {
		t.Fatalf("override set: %d %s%s", code, out, errOut)
	}
	before := len(readAll(t, ctx, st.s.KafkaBrokers, st.topics.Requests))
	code, out, errOut = cli(ctx, "reissue", "--tenant", tenant, "--deadline", "+1h", "--dry-run")
	if code != exitOK {
		t.Fatalf("reissue --dry-run: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("certfleet reissue --dry-run:\n%s", out)
	for _, want := range []string{"the deadline CANNOT be met", "override", "--limit NewOrdersPerAccount --key " + tenant + " --count 3 --period 3h", "spread the tenant over 3 accounts"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, out)
		}
	}
	if after := len(readAll(t, ctx, st.s.KafkaBrokers, st.topics.Requests)); after != before {
		t.Errorf("the dry run published %d requests", after-before)
	}
}
