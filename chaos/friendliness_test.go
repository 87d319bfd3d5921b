package chaos

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/certfleet/certfleet/testenv/caproxy"
)

// TestCAFriendliness runs a backlog far above the CA's limits through the
// fleet: the CA enforces Let's Encrypt-shaped limits scaled in time, the
// workers are configured at 98% of them, and the run reports the 429s the CA
// sent (target 0) and the fraction of the CA's allowed rate actually used
// while the backlog lasted (target at least 95%).
func TestCAFriendliness(t *testing.T) {
	if os.Getenv(envFriendliness) == "" {
		t.Skipf("the CA-friendliness run takes about 18 minutes: `make friendliness` (%s=1)", envFriendliness)
	}
	jobs := 2000
	if v, err := strconv.Atoi(os.Getenv("CERTFLEET_FRIENDLINESS_JOBS")); err == nil && v > 0 {
		jobs = v
	}
	account := caproxy.Limit{Count: 300, Period: 3 * time.Minute}
	ca := caproxy.Limits{
		OrdersPerAccount: account,
		OrdersPerDomain:  caproxy.Limit{Count: 50, Period: 7 * time.Minute},
		OrdersPerFQDNSet: caproxy.Limit{Count: 5, Period: 7 * time.Minute},
	}
	limits := map[string]limitJSON{
		"NewOrdersPerAccount":                     {294, "3m0s"},
		"CertificatesPerDomain":                   {49, "7m0s"},
		"CertificatesPerFQDNSet":                  {5, "7m0s"},
		"FailedAuthorizationsPerDomainPerAccount": {5, "1h0m0s"},
		"FleetOrdersPerSecond":                    {50, "1s"},
	}
	sz := size{name: "friendliness", jobs: jobs, timeout: 40 * time.Minute}
	ctx, cancel := context.WithTimeout(context.Background(), sz.timeout)
	defer cancel()
	f := newFleet(t, ctx, fleetConfig{workers: 3, concurrency: 2, limits: limits, ca: ca})
	valid := f.requests(jobs, 50) // 40 per registered domain: the account limit binds
	f.publish(encodeAll(t, valid))
	o := f.waitDone(valid, 0, nil)
	r := f.verify("CA friendliness", sz, valid, 0, o)

	st := f.proxy.Stats()
	if len(st.OrderTimes) < 2 {
		t.Fatalf("only %d orders", len(st.OrderTimes))
	}
	span := st.OrderTimes[len(st.OrderTimes)-1].Sub(st.OrderTimes[0])
	interval := account.Period / time.Duration(account.Count)
	allowed := float64(account.Count) + float64(span)/float64(interval)
	used := float64(st.Orders) / allowed
	steady := float64(st.Orders-account.Count) / (float64(span) / float64(interval))
	t.Logf("FRIENDLINESS jobs=%d orders=%d ca_429=%d span=%v allowed=%.0f utilisation=%.1f%% steady_state=%.1f%% lost=%d",
		jobs, st.Orders, r.CA429, span.Round(time.Second), allowed, 100*used, 100*steady, r.Lost)
	if used < 0.95 {
		t.Errorf("used %.1f%% of the CA's allowed rate, want at least 95%%", 100*used)
	}
}
