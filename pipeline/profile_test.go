package pipeline_test

import (
	"context"
	"testing"
	"time"

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
		c.CAs = []pipeline.CA{{CA: caconfig.CA{Name: "pebble", Directory: st.s.ACMEDirectory}, Issuer: st.issuer(t, st.s.ACMEDirectory, nil)}}
		c.Concurrency = 1
	}
	st.run(t, st.worker(t, "worker-no-profile", noDefaultProfile), "g-np-"+st.suffix)
	req := request("no-profile-"+st.suffix, name)
	req.Profile = ""
	st.publish(t, ctx, req)

	outcome := st.firstOutcome(t, ctx)
	obtained, ok := outcome.Data.(*events.CertObtained)
	if !ok {
		t.Fatalf("outcome %s %+v; want cert.obtained", outcome.Type(), outcome.Data)
	}
	if life := obtained.NotAfter.Sub(obtained.NotBefore); life < 5*24*time.Hour {
		t.Errorf("lifetime %v; want one of Pebble's profiles", life)
	}
}
