package pipeline_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/caconfig"
	"github.com/certfleet/certfleet/pipeline"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/testenv"
)

// Through the pipeline, against testenv's Pebble that requires External
// Account Binding: with the CA's key id and MAC key the tenant's account is
// created bound and the certificate obtained; with a wrong MAC key the
// request ends with a permanent cert_failed whose detail says which setting
// to fix.
func TestPipelineEAB(t *testing.T) {
	eab, err := testenv.Require(t).EAB()
	if err != nil {
		t.Fatal(err)
	}
	wrong := make([]byte, 32)
	_, _ = rand.Read(wrong)
	for _, tc := range []struct {
		name string
		eab  acme.EAB
		want events.Type
	}{
		{"right MAC key", eab, events.TypeCertObtained},
		{"wrong MAC key", acme.EAB{KeyID: eab.KeyID, MACKey: base64.RawURLEncoding.EncodeToString(wrong)}, events.TypeCertFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newStack(t, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			st.serveHTTP01(t)
			name := "eab-" + st.suffix + ".test"
			st.pointAt(t, ctx, name)
			onEABPebble := func(c *pipeline.Config) {
				iss := st.issuer(t, st.s.EABACMEDirectory, func(ic *acmeissuer.Config) { ic.Profile, ic.EAB = testenv.PebbleShortProfile, &tc.eab })
				c.CAs = []pipeline.CA{{CA: caconfig.CA{Name: "pebble", Directory: st.s.EABACMEDirectory}, Issuer: iss}}
				limits := ratelimit.LetsEncryptLimits()
				limits[ratelimit.FleetOrdersPerSecond] = ratelimit.LimitConfig{Limit: ratelimit.Limit{Count: 1000, Period: time.Second, Burst: 1000}}
				cat, err := ratelimit.NewCatalogue(ratelimit.CA{ID: "pebble-eab", Directory: st.s.EABACMEDirectory, Limits: limits})
				if err != nil {
					t.Fatal(err)
				}
				c.Limits, c.Tokens = cat, ratelimit.NewLimiter(ratelimit.LimiterConfig{Store: ratelimit.NewDBStore(st.db), Catalogue: cat})
				c.Concurrency = 1
			}
			st.run(t, st.worker(t, "worker-eab", onEABPebble), "g-eab-"+st.suffix)
			st.publish(t, ctx, request("eab-"+st.suffix, name))
			outcome := st.firstOutcome(t, ctx)
			if outcome.Type() != tc.want {
				t.Fatalf("outcome %s %+v; want %s", outcome.Type(), outcome.Data, tc.want)
			}
			if f, ok := outcome.Data.(*events.CertFailed); ok {
				if f.Retryable || f.ProblemType != acme.ProblemTypeUnauthorized ||
					!strings.Contains(f.Detail, `the CA refused the External Account Binding with key id "`+eab.KeyID+`": check eab-kid and the MAC key in eab-key-file`) {
					t.Errorf("cert_failed %+v; want a permanent unauthorized saying to check the binding", f)
				}
				if strings.Contains(f.Detail, tc.eab.MACKey) {
					t.Error("cert_failed quotes the MAC key")
				}
			}
		})
	}
}
