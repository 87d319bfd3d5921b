package pipeline_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math"
	"net/http"
	"os"
	"runtime"
	"slices"
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

// benchConcurrency is the orders in flight on each side. Pebble deadlocks at
// 16 or more concurrent orders: never exceed 8 in total.
const benchConcurrency = 8

// BenchmarkIssuance compares certificates per second through the pipeline
// (requests published to Kafka, one Worker with Concurrency 8 claiming,
// spending tokens, ordering through acmeissuer with the database-backed
// HTTP-01 responder, sealing, storing, publishing) with a plain acmez loop
// (8 goroutines calling ObtainCertificate with challtestsrv answering HTTP-01)
// against the same Pebble in the same run. Pebble validates for real on both
// sides. b.N certificates per sub-benchmark.
//
// pipeline also reports the time from publishing a request to receiving its
// cert_obtained (p50, p99) and the process's heap in use with the worker idle
// (after a GC) and its peak under load. The heap figures are the whole test
// process: worker, its Kafka reader and writer, and the benchmark's own
// event readers.
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
	issue := func(tb testing.TB, reqs []*events.IssuanceRequest) (elapsed time.Duration, ttc []time.Duration, peakHeap uint64) {
		want := map[string]bool{}
		for _, r := range reqs {
			want[r.RequestID] = true
		}
		stopSampling := sampleHeap(&peakHeap)
		defer stopSampling()
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
		return time.Since(start), ttc, peakHeap
	}
	issue(b, prepare(b, benchConcurrency)) // warm-up

	b.Run("pipeline", func(b *testing.B) {
		reqs := prepare(b, b.N)
		idle := heapInUseAfterGC()
		b.ResetTimer()
		elapsed, ttc, peak := issue(b, reqs)
		b.StopTimer()
		slices.Sort(ttc)
		b.ReportMetric(float64(b.N)/elapsed.Seconds(), "certs/s")
		b.ReportMetric(ms(percentile(ttc, 0.50)), "p50-ms")
		b.ReportMetric(ms(percentile(ttc, 0.99)), "p99-ms")
		b.ReportMetric(float64(idle)/(1<<20), "heap-idle-MiB")
		b.ReportMetric(float64(peak)/(1<<20), "heap-load-MiB")
	})

	// The baseline: the same orders without the pipeline.
	client, account := plainACMEClient(b, ctx, st.s)
	var bseq atomic.Int64
	b.Run("baseline", func(b *testing.B) {
		var next atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, benchConcurrency)
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
		b.ReportMetric(float64(b.N)/elapsed.Seconds(), "certs/s")
	})
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
	caPEM, err := os.ReadFile(s.ACMETLSCA)
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, MaxIdleConnsPerHost: 16}}
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

// heapInUseAfterGC is the heap in use once garbage is collected.
func heapInUseAfterGC() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// sampleHeap records the peak HeapInuse into *peak every 20 ms until stopped.
func sampleHeap(peak *uint64) (stop func()) {
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			*peak = max(*peak, m.HeapInuse)
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); <-finished }
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
