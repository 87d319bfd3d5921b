package pipeline_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/seal"
)

type tally struct {
	obtained map[string]*events.CertObtained // by request id
	ids      map[string]map[string]bool      // request id -> ce_ids of cert_obtained
	failed   map[string]*events.CertFailed
	deferred int
}

func summarize(t *testing.T, msgs []kafka.Message) tally {
	t.Helper()
	ty := tally{obtained: map[string]*events.CertObtained{}, ids: map[string]map[string]bool{}, failed: map[string]*events.CertFailed{}}
	for _, m := range msgs {
		ev, err := events.Decode(m)
		if err != nil {
			t.Fatalf("undecodable record on the events topic: %v", err)
		}
		switch p := ev.Data.(type) {
		case *events.CertObtained:
			ty.obtained[p.RequestID] = p
			if ty.ids[p.RequestID] == nil {
				ty.ids[p.RequestID] = map[string]bool{}
			}
			ty.ids[p.RequestID][ev.ID] = true
		case *events.CertFailed:
			ty.failed[p.RequestID] = p
		case *events.IssuanceDeferred:
			ty.deferred++
		}
	}
	return ty
}

// The end-to-end check, at CI size: requests through two workers
// with real HTTP-01 validation by Pebble against the database-backed
// responder; duplicates and redeliveries order nothing twice; hostile
// records land in the DLQ while valid ones around them succeed; keys are
// sealed in the database and appear in no topic.
func TestPipelineEndToEnd(t *testing.T) {
	st := newStack(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	st.serveHTTP01(t)
	const n = 200
	var reqs []*events.IssuanceRequest
	var names []string
	for i := 0; i < n; i++ {
		// Distinct registered domains: this test is about the pipeline, not the
		// CertificatesPerDomain limit (TestPipelineDefersOnLimit is).
		name := fmt.Sprintf("www.site%d-%s.test", i, st.suffix)
		names = append(names, name)
		reqs = append(reqs, request(fmt.Sprintf("req-%d-%s", i, st.suffix), name))
	}
	st.pointAt(t, ctx, names...)

	st.run(t, st.worker(t, "worker-a"), "g-"+st.suffix)
	st.run(t, st.worker(t, "worker-b"), "g-"+st.suffix)

	// Every request twice (an upstream retry), interleaved with hostile records.
	st.publish(t, ctx, reqs...)
	hostile := []kafka.Message{
		{Topic: st.topics.Requests, Key: []byte("x"), Value: []byte("{not json")},
		{Topic: st.topics.Requests, Key: []byte("x"), Value: make([]byte, 70<<10)},
		{Topic: st.topics.Requests, Value: []byte(`{}`), Headers: []kafka.Header{{Key: "ce_specversion", Value: []byte("0.3")}}},
	}
	bad := request("bad-name-"+st.suffix, "exa mple..com")
	badEv, _ := events.New("//t", time.Now(), &events.IssuanceRequest{RequestID: "x", SANs: []string{"ok.test"}, Tenant: "t", KeyType: events.KeyECDSAP256, CA: "pebble", Reason: events.ReasonNew})
	badMsg, err := events.Encode(badEv)
	if err != nil {
		t.Fatal(err)
	}
	badMsg.Topic = st.topics.Requests
	badMsg.Value = []byte(strings.Replace(string(badMsg.Value), `"ok.test"`, `"`+bad.SANs[0]+`"`, 1))
	unknownCA := request("unknown-ca-"+st.suffix, "www.unknown-"+st.suffix+".test")
	unknownCA.CA = "no-such-ca"
	ucaEv, _ := events.New("//t", time.Now(), unknownCA)
	ucaMsg, _ := events.Encode(ucaEv)
	ucaMsg.Topic = st.topics.Requests
	hostile = append(hostile, badMsg, ucaMsg)
	if err := st.producer.WriteMessages(ctx, hostile...); err != nil {
		t.Fatal(err)
	}
	st.publish(t, ctx, reqs...)

	wctx, wcancel := context.WithTimeout(ctx, 40*time.Second)
	defer wcancel()
	msgs := collect(t, wctx, st.s.KafkaBrokers, st.topics.Events, func(all []kafka.Message) bool {
		seen := map[string]bool{}
		for _, m := range all {
			if h := header(m, "ce_type"); h == string(events.TypeCertObtained) {
				seen[header(m, "ce_id")] = true
			}
		}
		return len(seen) >= n
	})
	ty := summarize(t, msgs)
	t.Logf("events: %d records, %d requests obtained, %d failed, %d deferrals; CA orders %d", len(msgs), len(ty.obtained), len(ty.failed), ty.deferred, st.orders.Load())
	if len(ty.obtained) != n {
		rows, _ := st.db.Pool().Query(context.Background(), `SELECT request_id, state, owner, owner_until, attempts, updated_at FROM issuance_requests WHERE state <> 'succeeded'`)
		for rows.Next() {
			var id, state, owner string
			var until *time.Time
			var attempts int
			var upd time.Time
			_ = rows.Scan(&id, &state, &owner, &until, &attempts, &upd)
			t.Logf("unfinished request %s: state %s owner %s until %v attempts %d updated %v", id, state, owner, until, attempts, upd)
		}
		rows.Close()
		for id, f := range ty.failed {
			t.Logf("failed %s: %s %s retryable=%v", id, f.ProblemType, f.Detail, f.Retryable)
		}
		t.Fatalf("cert_obtained for %d requests, want %d", len(ty.obtained), n)
	}
	for id, ids := range ty.ids {
		if len(ids) != 1 {
			t.Errorf("request %s: %d different cert_obtained ids; duplicates must repeat the same id", id, len(ids))
		}
	}
	// Redelivery after completion: publish them all again; nothing is ordered.
	before := st.orders.Load()
	st.publish(t, ctx, reqs[:10]...)
	collect(t, ctx, st.s.KafkaBrokers, st.topics.Events, func(all []kafka.Message) bool {
		// Each of the ten was published twice before (two cert_obtained
		// records) and once now: wait for the third record of every one.
		// (Counting all records against the first collect's total was wrong:
		// deferral events in that total made the wait unsatisfiable.)
		per := map[string]int{}
		for _, m := range all {
			if header(m, "ce_type") != string(events.TypeCertObtained) {
				continue
			}
			if ev, err := events.Decode(m); err == nil {
				per[ev.Data.(*events.CertObtained).RequestID]++
			}
		}
		for _, r := range reqs[:10] {
			if per[r.RequestID] < 3 {
				return false
			}
		}
		return true
	})
	if got := st.orders.Load(); got != n || got != before {
		t.Fatalf("CA saw %d new orders (%d before the redelivery); want exactly %d, one per request", got, before, n)
	}

	// Every certificate verifies against Pebble's root for its SANs.
	roots := x509.NewCertPool()
	rootPEM, _ := os.ReadFile(st.s.PebbleRoot)
	roots.AppendCertsFromPEM(rootPEM)
	for _, ob := range ty.obtained {
		certs := parseChain(t, ob.ChainPEM)
		inter := x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
		if _, err := certs[0].Verify(x509.VerifyOptions{DNSName: ob.SANs[0], Roots: roots, Intermediates: inter}); err != nil {
			t.Errorf("request %s: %v", ob.RequestID, err)
		}
	}
	// Keys are sealed in the database and open to the certificate's key.
	rows, err := st.db.Pool().Query(ctx, `SELECT identity, request_id, chain_pem, sealed_key FROM issued_certificates`)
	if err != nil {
		t.Fatal(err)
	}
	stored := 0
	for rows.Next() {
		var identity, reqID, chain string
		var blob []byte
		if err := rows.Scan(&identity, &reqID, &chain, &blob); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(blob), "PRIVATE KEY") {
			t.Fatalf("request %s: key stored in the clear", reqID)
		}
		key, err := seal.OpenPrivateKey(ctx, st.keyring, blob, seal.AAD(seal.PurposeCertKey, identity, reqID))
		if err != nil {
			t.Fatalf("request %s: sealed key does not open: %v", reqID, err)
		}
		leaf := parseChain(t, chain)[0]
		if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(leaf.PublicKey) {
			t.Fatalf("request %s: sealed key is not the certificate's key", reqID)
		}
		stored++
	}
	if stored != n {
		t.Fatalf("%d certificates stored, want %d", stored, n)
	}
	// Hostile records are in the DLQ with reasons. Delivery is at least once:
	// after a rebalance a record can be dead-lettered twice, so count origins.
	origins := map[string]bool{}
	dlq := collect(t, ctx, st.s.KafkaBrokers, st.topics.DLQ, func(all []kafka.Message) bool {
		clear(origins)
		for _, m := range all {
			if d, ok := events.ReadDeadLetter(m); ok {
				origins[fmt.Sprintf("%s/%d/%d", d.Topic, d.Partition, d.Offset)] = true
			}
		}
		return len(origins) >= len(hostile)
	})
	if len(origins) != len(hostile) {
		t.Fatalf("DLQ holds %d distinct records, want the %d hostile ones", len(origins), len(hostile))
	}
	for _, m := range dlq {
		d, ok := events.ReadDeadLetter(m)
		if !ok || d.Reason == "" || d.Topic != st.topics.Requests {
			t.Errorf("DLQ record without reason or origin: %+v", d)
		}
		t.Logf("dead-lettered: %s", d.Reason)
	}
	// No key material in any topic.
	for _, topic := range []string{st.topics.Events, st.topics.Retry, st.topics.DLQ, st.topics.Requests} {
		for _, m := range readAll(t, ctx, st.s.KafkaBrokers, topic) {
			if strings.Contains(string(m.Value), "PRIVATE KEY") {
				t.Fatalf("key material on topic %s", topic)
			}
		}
	}
}
