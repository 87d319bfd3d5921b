package pipeline_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/pipeline"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/testenv"
)

// benchConcurrency is the orders in flight on each side of
// BenchmarkIssuance, one side at a time. Other packages' tests may share
// Pebble and the 2 cores: stay within one package's share.
const benchConcurrency = testenv.MaxConcurrentOrdersPerPackage

// The fleet's shape in BenchmarkFleetIssuance: fleetWorkers workers of
// fleetPerWorker orders in flight each, against a bare acmez loop of
// fleetWorkers*fleetPerWorker. Above 16 in flight only the patched Pebble
// testenv builds keeps answering.
const (
	fleetWorkers   = 2
	fleetPerWorker = 24
)

// EnvBenchRuns is how many times BenchmarkIssuance measures the pipeline
// and the acmez loop (default 1): run_1, run_2, ... each with its own
// comparison, the side that starts the interleaving alternating from run to
// run.
const EnvBenchRuns = "CERTFLEET_BENCH_RUNS"

// BenchmarkIssuance compares certificates per second through the pipeline
// (requests published to Kafka, one Worker with Concurrency 6 claiming,
// spending tokens, ordering through acmeissuer with the database-backed
// HTTP-01 responder, sealing, storing, publishing) with a plain acmez loop
// (6 goroutines calling ObtainCertificate with challtestsrv answering HTTP-01)
// against the same Pebble in the same run: the same 6 orders in flight on
// both sides (the worker's Concurrency slot covers a whole job, so the
// pipeline never has more than 6 orders at the CA). Pebble validates for
// real on both sides. b.N certificates per sub-benchmark; an op is one
// certificate, so B/op and allocs/op are per certificate.
//
// Both sides are warmed up the same way before anything is timed (6
// certificates: the pipeline's consumer group joined and its ACME account
// registered, the loop's account registered and connections open). The
// two sides are measured interleaved, in chunks of 96 certificates
// (CERTFLEET_BENCH_CHUNK) taken in turns A B B A A B ...
// (bench_interleave_test.go), so both meet the same load of the machine and
// the same Pebble (which scans every authorization it holds on each new
// order). With CERTFLEET_BENCH_RUNS=N they are measured N times, the
// pipeline starting in odd runs.
//
// The CertMagic peer (bench/certmagic, its own module) runs alone, after
// the last run's two sides, in its group, when CERTFLEET_BENCH_CERTMAGIC names its
// binary (make bench builds it): the same number of certificates from the
// same Pebble at the same concurrency, certmagic_defaults as released and
// certmagic_throttle_off without its internal throttle.
//
// Both sides report, with the same definitions:
//   - certs/s: b.N over the side's time, the sum over its chunks of the time
//     from the start of the chunk to its last certificate;
//   - ttc-p50-ms, ttc-p99-ms: time from the start of its chunk to each
//     certificate, so a request's wait for a free slot counts. A pipeline
//     certificate is done when its cert_obtained record goes to Kafka: the
//     record's timestamp, which the worker's producer sets as it sends it
//     (after the certificate is stored), not when the benchmark's own
//     reader happens to fetch it (that reader lagged by up to a second on a
//     loaded machine, which made the pipeline's figures noisy);
//   - cpu-per-cert-ms: CPU time per certificate of the test process and
//     every service of the stack beyond what they spend idle (and of the
//     CertMagic peer's process), what the side costs the machine
//     (bench_cpu_test.go); each part's share is logged;
//   - worker memory: heap-idle-MiB (heap in use after a GC, just before the
//     side's first chunk), peak-heap-MiB (heap in use, sampled every 20 ms)
//     and peak-RSS-MiB (the kernel's VmHWM, reset before each chunk) while
//     its chunks run, and B/op and allocs/op (allocated during its chunks,
//     per certificate); ns/op is the side's time per certificate.
//
// The memory figures are the whole test process: the worker, its Kafka
// reader and writer, the benchmark's own event readers, and the idle worker
// during the baseline too (it keeps running: both sides carry it). The
// CertMagic rows, another process, report no memory.
func BenchmarkIssuance(b *testing.B) {
	st, obtained := benchStack(b)
	pipe := st.pipelineSide(b, obtained, 1, benchConcurrency)
	loop := st.acmezLoopSide(b, benchConcurrency)
	runs := 1
	if v := os.Getenv(EnvBenchRuns); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("%s=%q: want a whole number >= 1", EnvBenchRuns, v)
		}
		runs = n
	}
	for r := 1; r <= runs; r++ {
		group := fmt.Sprintf("in_flight_%d/", benchConcurrency)
		if runs > 1 {
			group += fmt.Sprintf("run_%d/", r)
		}
		// Interleaved; the side that starts alternates from run to run.
		p := &pair{sides: [2]issuanceSide{pipe, loop}, chunk: chunkSize(b, benchConcurrency)}
		order := []int{0, 1}
		if r%2 == 0 {
			slices.Reverse(order)
		}
		for _, i := range order {
			b.Run(group+p.sides[i].name, p.run(i))
		}
		if r == runs {
			for _, throttle := range []string{"defaults", "throttle_off"} {
				b.Run(group+"certmagic_"+throttle, st.certmagicSide(throttle, benchConcurrency).measure)
			}
		}
	}
}

// BenchmarkFleetIssuance compares the pipeline at fleet concurrency (2
// workers of 24 orders in flight each, one consumer group, as two
// issuer-worker processes would run) with a bare acmez loop of 48
// goroutines, against the same Pebble in the same run, with
// BenchmarkIssuance's definitions (certs/s, time to certificate from the
// start of the chunk; interleaved in chunks of 768, CERTFLEET_BENCH_CHUNK).
// Both workers hold partitions of the requests topic (the group is stable
// with both members assigned) and both sides are warmed up with 48
// certificates before anything is timed.
func BenchmarkFleetIssuance(b *testing.B) {
	st, obtained := benchStack(b)
	pipe := st.pipelineSide(b, obtained, fleetWorkers, fleetPerWorker)
	loop := st.acmezLoopSide(b, fleetWorkers*fleetPerWorker)
	group := fmt.Sprintf("in_flight_%d/", fleetWorkers*fleetPerWorker)
	pipe.name = fmt.Sprintf("pipeline_%dx%d", fleetWorkers, fleetPerWorker)
	p := &pair{sides: [2]issuanceSide{pipe, loop}, chunk: chunkSize(b, fleetWorkers*fleetPerWorker)}
	b.Run(group+pipe.name, p.run(0))
	b.Run(group+loop.name, p.run(1))
}

// issuanceSide is one side of an issuance comparison. prepare does, outside
// the timer, what the side needs before its batch of n certificates (names,
// DNS records, a child process) and returns the batch; the batch returns
// its elapsed time and each certificate's time from its start.
type issuanceSide struct {
	name    string
	memory  bool // report this process's memory (false: the side runs elsewhere)
	prepare func(tb testing.TB, n int) (batch func() batchResult)
}

// batchResult is what one side's batch measured.
type batchResult struct {
	elapsed time.Duration
	ttc     []time.Duration
	// childCPU is CPU the side spent in a process of its own during the
	// batch (the CertMagic peer), beyond this process and the stack;
	// childAllocBytes and childAllocs are that process's heap allocations.
	childCPU                     time.Duration
	childAllocBytes, childAllocs uint64
}

// benchStack is a stack whose limits never deny (the pipeline still spends,
// and so writes, every order's tokens), the database-backed HTTP-01
// responder serving, and the outcomes of its events topic watched.
func benchStack(b *testing.B) (*stack, <-chan outcome) {
	limits := ratelimit.LetsEncryptLimits()
	for name, l := range limits {
		l.Limit = ratelimit.Limit{Count: 1_000_000, Period: time.Second, Burst: 1_000_000}
		limits[name] = l
	}
	st := newStack(b, limits)
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	st.serveHTTP01(b)
	return st, st.watchOutcomes(b, ctx)
}

// pipelineSide starts workers workers of perWorker orders in flight in one
// consumer group, waits until every one holds partitions, warms them up
// with workers*perWorker certificates and returns the side.
func (st *stack) pipelineSide(b *testing.B, obtained <-chan outcome, workers, perWorker int) issuanceSide {
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	group := "g-bench-" + st.suffix
	for i := range workers {
		w := st.worker(b, fmt.Sprintf("bench-worker-%d", i), func(c *pipeline.Config) { c.Concurrency = perWorker })
		st.run(b, w, group)
	}
	var seq atomic.Int64
	prepare := func(tb testing.TB, n int) []*events.IssuanceRequest {
		reqs := make([]*events.IssuanceRequest, n)
		names := make([]string, n)
		for i := range reqs {
			k := seq.Add(1)
			names[i] = fmt.Sprintf("www.b%d-%s.test", k, st.suffix)
			reqs[i] = request(fmt.Sprintf("bench-%d-%s", k, st.suffix), names[i])
		}
		st.pointAt(tb, ctx, names...)
		return reqs
	}
	// issue publishes reqs in one batch and waits for all their certificates.
	issue := func(tb testing.TB, reqs []*events.IssuanceRequest) (elapsed time.Duration, ttc []time.Duration) {
		want := map[string]bool{}
		for _, r := range reqs {
			want[r.RequestID] = true
		}
		start := time.Now()
		st.publish(tb, ctx, reqs...)
		deadline := time.After(time.Duration(len(reqs))*2*time.Second + time.Minute)
		for len(want) > 0 {
			select {
			case o := <-obtained:
				if !want[o.requestID] {
					continue
				}
				if o.failed != "" {
					tb.Fatalf("request %s failed: %s", o.requestID, o.failed)
				}
				delete(want, o.requestID)
				// Sent (the record's timestamp, a millisecond clock) from
				// the start of publishing the batch: each request's wait for
				// a free order slot is part of its time to certificate.
				ttc = append(ttc, max(o.sent.Sub(start), 0))
			case <-deadline:
				tb.Fatalf("%d of %d certificates still missing", len(want), len(reqs))
			}
		}
		return slices.Max(ttc), ttc
	}
	st.waitGroupStable(b, ctx, group, workers)
	issue(b, prepare(b, workers*perWorker)) // warm-up
	return issuanceSide{name: "pipeline", memory: true, prepare: func(tb testing.TB, n int) func() batchResult {
		reqs := prepare(tb, n)
		return func() batchResult {
			elapsed, ttc := issue(tb, reqs)
			return batchResult{elapsed: elapsed, ttc: ttc}
		}
	}}
}

// waitGroupStable waits until group is stable with members members, each
// assigned partitions: a member still joining would rebalance the group in
// the middle of a measured batch.
func (st *stack) waitGroupStable(b *testing.B, ctx context.Context, group string, members int) {
	b.Helper()
	client := &kafka.Client{Addr: kafka.TCP(st.s.KafkaBrokers...)}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := client.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
		if err == nil && len(resp.Groups) == 1 && resp.Groups[0].GroupState == "Stable" && len(resp.Groups[0].Members) == members {
			assigned := 0
			for _, m := range resp.Groups[0].Members {
				for _, t := range m.MemberAssignments.Topics {
					if len(t.Partitions) > 0 {
						assigned++
						break
					}
				}
			}
			if assigned == members {
				return
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("consumer group %s not stable with %d assigned members after 2 minutes (last: %+v, %v)", group, members, resp, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// loopAttempts is how many times the acmez loop orders a name before it
// gives up (and fails the benchmark).
const loopAttempts = 3

// acmezLoopSide is the baseline: the same orders without the pipeline,
// concurrency goroutines calling ObtainCertificate with one client, warmed
// up with concurrency certificates.
func (st *stack) acmezLoopSide(b *testing.B, concurrency int) issuanceSide {
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	// The pipeline's workers keep up to 16 idle connections to the CA each.
	client, account := plainACMEClient(b, ctx, st.s, 16*max(1, concurrency/fleetPerWorker))
	var seq, retries atomic.Int64
	batch := func(n int) (time.Duration, []time.Duration, error) {
		var next atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, concurrency)
		var mu sync.Mutex
		var ttc []time.Duration
		start := time.Now()
		for range concurrency {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= int64(n) {
					key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
					if err != nil {
						errs <- err
						return
					}
					name := fmt.Sprintf("plain%d-%s.certfleet.test", seq.Add(1), st.suffix)
					csr, err := acmez.NewCSR(key, []string{name})
					if err != nil {
						errs <- err
						return
					}
					params, err := acmez.OrderParametersFromCSR(account, csr)
					if err != nil {
						errs <- err
						return
					}
					params.Profile = testenv.PebbleShortProfile
					// A failed order is ordered again, as the pipeline
					// retries its own (a loaded machine's DNS timed out a
					// validation once at 48 in flight); the time counts.
					for attempt := 1; ; attempt++ {
						_, err := client.ObtainCertificate(ctx, params)
						if err == nil {
							break
						}
						if attempt == loopAttempts {
							errs <- fmt.Errorf("%s, attempt %d: %w", name, attempt, err)
							return
						}
						retries.Add(1)
					}
					mu.Lock()
					ttc = append(ttc, time.Since(start))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		close(errs)
		return elapsed, ttc, <-errs
	}
	if _, _, err := batch(concurrency); err != nil {
		b.Fatalf("warming up the acmez loop: %v", err)
	}
	return issuanceSide{name: "baseline_acmez_loop", memory: true, prepare: func(tb testing.TB, n int) func() batchResult {
		return func() batchResult {
			r0 := retries.Load()
			elapsed, ttc, err := batch(n)
			if err != nil {
				tb.Fatal(err)
			}
			if r := retries.Load() - r0; r > 0 {
				tb.Logf("acmez loop: %d orders failed and were ordered again", r)
			}
			return batchResult{elapsed: elapsed, ttc: ttc}
		}
	}}
}

// outcome is a cert_obtained (or cert_failed) seen on the events topic.
type outcome struct {
	requestID string
	failed    string    // problem of a cert_failed; empty for cert_obtained
	sent      time.Time // the record's timestamp: when the worker's producer sent it
}

// watchOutcomes reads every partition of the events topic from the start
// until ctx ends and sends each outcome as it arrives. Its readers long-poll
// (the broker answers as soon as a record is there): polling every 10 ms, as
// they did, was 400 fetches a second against the broker the pipeline uses,
// a load only the benchmark made, and the outcomes' times are their records'
// timestamps anyway.
func (st *stack) watchOutcomes(b *testing.B, ctx context.Context) <-chan outcome {
	b.Helper()
	conn, err := kafka.DialContext(ctx, "tcp", st.s.KafkaBrokers[0])
	if err != nil {
		b.Fatal(err)
	}
	parts, err := conn.ReadPartitions(st.topics.Events)
	conn.Close()
	if err != nil {
		b.Fatal(err)
	}
	out := make(chan outcome, 1<<16)
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	b.Cleanup(func() { cancel(); wg.Wait() })
	for _, p := range parts {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: st.s.KafkaBrokers, Topic: st.topics.Events, Partition: p.ID,
			StartOffset: kafka.FirstOffset, MaxWait: 500 * time.Millisecond})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.Close()
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					return
				}
				switch header(m, "ce_type") {
				case string(events.TypeCertObtained), string(events.TypeCertFailed):
				default:
					continue
				}
				ev, err := events.Decode(m)
				if err != nil {
					continue
				}
				o := outcome{sent: m.Time}
				switch p := ev.Data.(type) {
				case *events.CertObtained:
					o.requestID = p.RequestID
				case *events.CertFailed:
					o.requestID, o.failed = p.RequestID, p.ProblemType+": "+p.Detail
				}
				select {
				case out <- o:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	return out
}

// plainACMEClient is the baseline's acmez client: Pebble's serving CA
// trusted, a fresh account, HTTP-01 answered by pebble-challtestsrv, and the
// same poll interval as the workers' issuer, keeping up to idle connections
// to the CA.
func plainACMEClient(b *testing.B, ctx context.Context, s testenv.Settings, idle int) (acmez.Client, acme.Account) {
	b.Helper()
	tr, err := s.ACMETransport()
	if err != nil {
		b.Fatal(err)
	}
	tr.MaxIdleConnsPerHost = idle
	hc := &http.Client{Timeout: 30 * time.Second, Transport: tr}
	client := acmez.Client{
		Client:           &acme.Client{Directory: s.ACMEDirectory, HTTPClient: hc, PollInterval: 10 * time.Millisecond},
		ChallengeSolvers: map[string]acmez.Solver{acme.ChallengeTypeHTTP01: challtestsrvSolver{testenv.ChallTestSrv{URL: s.ChallTestSrvURL}}},
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	account, err := client.NewAccount(ctx, acme.Account{Contact: []string{"mailto:bench@certfleet.test"}, TermsOfServiceAgreed: true, PrivateKey: key})
	if err != nil {
		b.Fatalf("creating the baseline's ACME account: %v", err)
	}
	return client, account
}

// challtestsrvSolver answers HTTP-01 through pebble-challtestsrv.
type challtestsrvSolver struct{ srv testenv.ChallTestSrv }

func (s challtestsrvSolver) Present(ctx context.Context, ch acme.Challenge) error {
	return s.srv.AddHTTP01(ctx, ch.Token, ch.KeyAuthorization)
}

func (s challtestsrvSolver) CleanUp(ctx context.Context, ch acme.Challenge) error {
	return s.srv.DelHTTP01(ctx, ch.Token)
}

// percentile of sorted durations (nearest rank).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
