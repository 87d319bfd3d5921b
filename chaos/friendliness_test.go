package chaos

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/testenv/caproxy"
)

// friendlinessHot is how many registered domains of the CA-friendliness run
// hold more requests than CertificatesPerDomain allows in a burst, and how
// many requests each holds: those requests drain at that limit's rate.
const (
	friendlinessHot        = 3
	friendlinessPerHot     = 100
	friendlinessColdDomain = 50
)

// TestCAFriendliness runs a backlog far above the CA's limits through the
// fleet: the CA enforces Let's Encrypt-shaped limits scaled in time (300
// orders per 3 minutes per account, 50 certificates per 7 minutes per
// registered domain, 5 per 7 minutes per identifier set), counting
// certificates at issuance as Boulder does, and the workers are configured
// at exactly those limits (100%). Most requests spread over 50 registered
// domains, so the account limit binds; 300, published first, sit under 3
// registered domains, 100 each, so those drain at the domain limit while the
// rest flows. The run
// reports the 429s the CA sent (must be 0), the certificates the CA issued
// beyond a certificate limit (must be 0: the workers' accounting was never
// ahead of the CA's), and the fraction of the account limit's allowed rate
// used while the backlog lasted (at least 97%).
func TestCAFriendliness(t *testing.T) {
	if os.Getenv(envFriendliness) == "" {
		t.Skipf("the CA-friendliness run takes about 18 minutes: `make friendliness` (%s=1)", envFriendliness)
	}
	jobs := 2000
	if v, err := strconv.Atoi(os.Getenv("CERTFLEET_FRIENDLINESS_JOBS")); err == nil && v > 0 {
		jobs = v
	}
	account := caproxy.Limit{Count: 300, Period: 3 * time.Minute}
	domain := caproxy.Limit{Count: 50, Period: 7 * time.Minute}
	ca := caproxy.Limits{
		OrdersPerAccount: account,
		OrdersPerDomain:  domain,
		OrdersPerFQDNSet: caproxy.Limit{Count: 5, Period: 7 * time.Minute},
	}
	limits := map[string]limitJSON{
		"NewOrdersPerAccount":                     {account.Count, account.Period.String()},
		"CertificatesPerDomain":                   {domain.Count, domain.Period.String()},
		"CertificatesPerFQDNSet":                  {5, "7m0s"},
		"FailedAuthorizationsPerDomainPerAccount": {5, "1h0m0s"},
		"FleetOrdersPerSecond":                    {50, "1s"},
	}
	sz := size{name: "friendliness", jobs: jobs, timeout: 40 * time.Minute}
	ctx, cancel := context.WithTimeout(context.Background(), sz.timeout)
	defer cancel()
	f := newFleet(t, ctx, fleetConfig{workers: 3, concurrency: 2, limits: limits, ca: ca})
	// The hot domains' requests go first, so they meet their domain's limit
	// at once and drain at its rate beside the account-bound rest (behind
	// it, they would get only their share of the account's rate, below the
	// domain's).
	hot := min(friendlinessHot*friendlinessPerHot, jobs/4)
	valid := f.hotRequests(hot, friendlinessHot)
	valid = append(valid, f.requests(jobs-hot, friendlinessColdDomain)...) // at most 40 per registered domain: the account limit binds
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
	t.Logf("FRIENDLINESS jobs=%d orders=%d issued=%d ca_429=%d ca_429_by_limit=%v issued_beyond_limit=%v span=%v allowed=%.0f utilisation=%.1f%% steady_state=%.1f%% lost=%d",
		jobs, st.Orders, st.Issued, r.CA429, st.RateLimitedByLimit, st.IssuedBeyondLimit, span.Round(time.Second), allowed, 100*used, 100*steady, r.Lost)
	for i := 0; i < friendlinessHot && hot > 0; i++ {
		d := hotDomain(f, i)
		t.Logf("FRIENDLINESS hot domain %s: %d certificates issued", d, st.IssuedByDomain[d])
	}
	if n := st.IssuedBeyondLimit[caproxy.LimitCertificatesPerDomain] + st.IssuedBeyondLimit[caproxy.LimitCertificatesPerFQDNSet]; n != 0 {
		t.Errorf("the CA issued %d certificates beyond a certificate limit (%v): the workers' accounting ran ahead of the CA's", n, st.IssuedBeyondLimit)
	}
	if used < 0.97 {
		t.Errorf("used %.1f%% of the CA's allowed rate, want at least 97%%", 100*used)
	}
}

// hotDomain is the i-th registered domain of hotRequests.
func hotDomain(f *fleet, i int) string { return fmt.Sprintf("hot%d-%s.test", i, f.suffix) }

// hotRequests are n valid jobs spread over domains registered domains of
// their own (hotDomain), with request ids apart from requests'.
func (f *fleet) hotRequests(n, domains int) []events.Event {
	f.t.Helper()
	evs := make([]events.Event, 0, n)
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("h%d.%s", i, hotDomain(f, i%domains))
		ev, err := events.New("//chaos", time.Now(), &events.IssuanceRequest{RequestID: fmt.Sprintf("hot%d-%s", i, f.suffix),
			SANs: []string{name}, Tenant: tenant, KeyType: events.KeyECDSAP256, CA: caName, Reason: events.ReasonNew})
		if err != nil {
			f.t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	return evs
}
