package pipeline_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/caconfig"
	"github.com/certfleet/certfleet/pipeline"
)

// A request that names no profile, through a worker whose issuer has no
// default profile (an issuer-worker without -profile), against Pebble, which
// offers profiles: the certificate is obtained with the CA's default (the
// contract: an absent profile means the CA's default).
func TestPipelineRequestWithoutProfile(t *testing.T) {
	st := newStack(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	st.serveHTTP01(t)
	name := "noprofile-" + st.suffix + ".test"
	st.pointAt(t, ctx, name)
	noDefaultProfile := func(c *pipeline.Config) {
		tr, err := st.s.ACMETransport()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tr.CloseIdleConnections)
		iss, err := acmeissuer.New(acmeissuer.Config{
			Directory: st.s.ACMEDirectory, DB: st.db, Sealer: st.keyring, HTTPClient: &http.Client{Timeout: 30 * time.Second, Transport: tr},
			Solvers:      map[string]acmez.Solver{acme.ChallengeTypeHTTP01: acmeissuer.HTTP01Solver{Store: st.chall}},
			PollInterval: 10 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		c.CAs = []pipeline.CA{{CA: caconfig.CA{Name: "pebble", Directory: st.s.ACMEDirectory}, Issuer: iss}}
		c.Concurrency = 1
	}
	st.run(t, st.worker(t, "worker-no-profile", noDefaultProfile), "g-np-"+st.suffix)
	req := request("no-profile-"+st.suffix, name)
	req.Profile = ""
	st.publish(t, ctx, req)

	var outcome events.Event
	for outcome.Data == nil {
		// A topic this young may still answer "not leader": read again.
		all, _ := events.ReadTopic(ctx, nil, st.s.KafkaBrokers, st.topics.Events, 0)
		for _, m := range all {
			if ev, err := events.Decode(m); err == nil && ev.Type() != events.TypeIssuanceDeferred {
				outcome = ev
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no outcome on %s: %v", st.topics.Events, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
	obtained, ok := outcome.Data.(*events.CertObtained)
	if !ok {
		t.Fatalf("outcome %s %+v; want cert.obtained", outcome.Type(), outcome.Data)
	}
	if life := obtained.NotAfter.Sub(obtained.NotBefore); life < 5*24*time.Hour {
		t.Errorf("lifetime %v; want one of Pebble's profiles", life)
	}
}
