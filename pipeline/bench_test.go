package pipeline_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certfleet/certfleet/internal/benchmem"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/pipeline"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/testenv"
)

// benchConcurrency is the orders in flight on each side, one side at a time.
// Other packages' tests may share Pebble and the 2 cores: stay within one
// package's share.
const benchConcurrency = testenv.MaxConcurrentOrdersPerPackage

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
// Both sides report, with the same definitions:
//   - ttc-p50-ms, ttc-p99-ms: time from the start of the batch to each
//     certificate (for the pipeline: to its cert_obtained event), so a
//     request's wait for a free slot counts;
//   - worker memory: heap-idle-MiB (heap in use after a GC, just before the
//     batch), peak-heap-MiB (heap in use, sampled every 20 ms) and
//     peak-RSS-MiB (the kernel's VmHWM, reset before the batch) while the
//     batch runs, and B/op (bytes allocated per certificate).
//
// The memory figures are the whole test process: the worker, its Kafka
// reader and writer, the benchmark's own event readers, and the idle worker
// during the baseline too (it keeps running: both sides carry it).
func BenchmarkIssuance(b *testing.B) {
	limits := ratelimit.LetsEncryptLimits()
	for name, l := range limits {
		// This measures the pipeline, not the limits: nothing is ever denied,
		// but every order still spends (and so writes) its tokens.
		l.Limit = ratelimit.Limit{Count: 1_000_000, Period: time.Second, Burst: 1_000_000}
		limits[name] = l
	}
	st := newStack(b, limits)
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	st.serveHTTP01(b)

	// The pipeline side: one worker, one consumer-group member, warmed up
	// (group joined, ACME account registered) before anything is timed.
	w := st.worker(b, "bench-worker", func(c *pipeline.Config) { c.Concurrency = benchConcurrency })
	st.run(b, w, "g-bench-"+st.suffix)
	obtained := st.watchOutcomes(b, ctx)
	var seq atomic.Int64
	// prepare makes n requests for new names that Pebble resolves to the
	// database-backed responder.
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
				// From the start of publishing the batch: each request's wait
				// for a free order slot is part of its time to certificate.
				ttc = append(ttc, o.at.Sub(start))
			case <-deadline:
				tb.Fatalf("%d of %d certificates still missing", len(want), len(reqs))
			}
		}
		return time.Since(start), ttc
	}
	issue(b, prepare(b, benchConcurrency)) // warm-up

	group := fmt.Sprintf("in_flight_%d/", benchConcurrency)
	b.Run(group+"pipeline", func(b *testing.B) {
		reqs := prepare(b, b.N)
		mem := benchmem.Start()
		b.ResetTimer()
		elapsed, ttc := issue(b, reqs)
		b.StopTimer()
		reportIssuance(b, elapsed, ttc, mem)
	})

	// The baseline: the same orders without the pipeline.
	client, account := plainACMEClient(b, ctx, st.s)
	var bseq atomic.Int64
	b.Run(group+"baseline_acmez_loop", func(b *testing.B) {
		var next atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, benchConcurrency)
		var mu sync.Mutex
		var ttc []time.Duration
		mem := benchmem.Start()
		b.ResetTimer()
		start := time.Now()
		for g := 0; g < benchConcurrency; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= int64(b.N) {
					key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
					if err != nil {
						errs <- err
						return
					}
					name := fmt.Sprintf("plain%d-%s.certfleet.test", bseq.Add(1), st.suffix)
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
					if _, err := client.ObtainCertificate(ctx, params); err != nil {
						errs <- fmt.Errorf("%s: %w", name, err)
						return
					}
					mu.Lock()
					ttc = append(ttc, time.Since(start))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		b.StopTimer()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		reportIssuance(b, elapsed, ttc, mem)
	})
}

// reportIssuance reports one side's throughput, time-to-certificate
// percentiles and memory.
func reportIssuance(b *testing.B, elapsed time.Duration, ttc []time.Duration, mem *benchmem.Peak) {
	slices.Sort(ttc)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "certs/s")
	b.ReportMetric(ms(percentile(ttc, 0.50)), "ttc-p50-ms")
	b.ReportMetric(ms(percentile(ttc, 0.99)), "ttc-p99-ms")
	mem.Report(b, true)
}

// outcome is a cert_obtained (or cert_failed) seen on the events topic.
type outcome struct {
	requestID string
	failed    string // problem of a cert_failed; empty for cert_obtained
	at        time.Time
}

// watchOutcomes reads every partition of the events topic from the start
// until ctx ends and sends each outcome as it arrives.
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
			StartOffset: kafka.FirstOffset, MaxWait: 10 * time.Millisecond})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.Close()
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					return
				}
				at := time.Now()
				switch header(m, "ce_type") {
				case string(events.TypeCertObtained), string(events.TypeCertFailed):
				default:
					continue
				}
				ev, err := events.Decode(m)
				if err != nil {
					continue
				}
				o := outcome{at: at}
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
// same connection reuse and poll interval as the workers' issuer.
func plainACMEClient(b *testing.B, ctx context.Context, s testenv.Settings) (acmez.Client, acme.Account) {
	b.Helper()
	tr, err := s.ACMETransport()
	if err != nil {
		b.Fatal(err)
	}
	tr.MaxIdleConnsPerHost = 16
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
