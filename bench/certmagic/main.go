// Command certmagic-peer is the peer of the pipeline's issuance benchmark
// (pipeline/bench_test.go, BenchmarkIssuance): CertMagic, the library a user
// would pick instead of certfleet, obtaining certificates from the same
// Pebble at the same concurrency. It lives in its own module so CertMagic
// and its dependencies never enter certfleet's go.mod; `make bench` builds
// it and the benchmark runs it as a child process.
//
// What it runs is CertMagic as a user would: certmagic.New with a
// FileStorage in a fresh directory, one ACMEIssuer (Pebble's directory, its
// HTTPS root trusted, an email, the terms agreed, the benchmark's profile,
// TLS-ALPN-01 off because nothing can answer it on the test bed) and
// Config.ObtainCertSync per name, each in one of -concurrency goroutines.
// HTTP-01 is CertMagic's own: its built-in challenge server listens on
// -listen, and the names are pointed there through pebble-challtestsrv's DNS
// (-challtestsrv), as the pipeline's names are pointed at its responder.
// With -throttle=off CertMagic's internal throttle (RateLimitEvents per
// RateLimitEventsWindow per CA and account, 10 per 10 s in this release) is
// disabled; with -throttle=default it stays as released. Everything else is
// CertMagic's default, its logger (to stderr) included.
//
// Protocol, on stdin and stdout: the peer obtains -concurrency certificates
// first (the account registered, the challenge server started: the same
// warm-up the pipeline and the acmez loop get), prints "ready", waits for
// one line on stdin, then obtains -n certificates and prints one JSON line,
// a result: the batch's elapsed time, the peer's CPU time and allocations
// during it, and each certificate's time from the start of the batch (so a name's wait for
// a free goroutine, or for the throttle, counts, as it does on the other
// sides). Any failure ends it with a non-zero status and the error on
// stderr.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddyserver/certmagic"
)

// result is what the peer prints after the measured batch.
type result struct {
	ElapsedNS int64   `json:"elapsed_ns"`
	TTCNS     []int64 `json:"ttc_ns"` // per certificate, from the start of the batch, in completion order
	CPUNS     int64   `json:"cpu_ns"` // this process's CPU time (user + system) during the batch
	// This process's heap allocations during the batch: bytes and count.
	AllocBytes uint64 `json:"alloc_bytes"`
	Allocs     uint64 `json:"allocs"`
}

type options struct {
	directory    string // ACME directory URL
	caFile       string // PEM roots trusted for the directory's HTTPS
	challtestsrv string // pebble-challtestsrv management URL
	listen       string // host:port of CertMagic's HTTP-01 server
	concurrency  int
	n            int
	throttle     string // "default" or "off"
	profile      string
	prefix       string // of every name: unique per run
}

func main() {
	var o options
	flag.StringVar(&o.directory, "directory", "", "ACME directory URL")
	flag.StringVar(&o.caFile, "ca-file", "", "PEM file of the roots the directory's HTTPS certificate chains to")
	flag.StringVar(&o.challtestsrv, "challtestsrv", "", "pebble-challtestsrv management URL (names are pointed at -listen's host there)")
	flag.StringVar(&o.listen, "listen", "", "host:port where CertMagic serves HTTP-01 (the port Pebble validates on)")
	flag.IntVar(&o.concurrency, "concurrency", 6, "certificates obtained at once")
	flag.IntVar(&o.n, "n", 1, "certificates in the measured batch")
	flag.StringVar(&o.throttle, "throttle", "default", "CertMagic's internal throttle: default (as released) or off")
	flag.StringVar(&o.profile, "profile", "", "ACME profile ordered")
	flag.StringVar(&o.prefix, "prefix", "", "first label of every name (unique per run)")
	flag.Parse()
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "certmagic-peer:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	if o.directory == "" || o.caFile == "" || o.challtestsrv == "" || o.listen == "" || o.prefix == "" || o.concurrency < 1 || o.n < 1 {
		return errors.New("-directory, -ca-file, -challtestsrv, -listen, -prefix, -concurrency >= 1 and -n >= 1 are required")
	}
	switch o.throttle {
	case "default":
	case "off":
		// A zero-size window with no events is CertMagic's "rate limiting
		// is disabled"; read when the first order's limiter is made.
		certmagic.RateLimitEvents, certmagic.RateLimitEventsWindow = 0, 0
	default:
		return fmt.Errorf("-throttle %q: want default or off", o.throttle)
	}
	host, portText, ok := strings.Cut(o.listen, ":")
	port, err := strconv.Atoi(portText)
	if !ok || err != nil {
		return fmt.Errorf("-listen %q: want host:port", o.listen)
	}
	pem, err := os.ReadFile(o.caFile)
	if err != nil {
		return fmt.Errorf("reading the CA file: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return fmt.Errorf("no certificate in %s", o.caFile)
	}
	storage, err := os.MkdirTemp("", "certmagic-peer-")
	if err != nil {
		return fmt.Errorf("making the storage directory: %w", err)
	}
	defer os.RemoveAll(storage)

	var cfg *certmagic.Config
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return cfg, nil },
	})
	defer cache.Stop()
	cfg = certmagic.New(cache, certmagic.Config{Storage: &certmagic.FileStorage{Path: storage}})
	cfg.Issuers = []certmagic.Issuer{certmagic.NewACMEIssuer(cfg, certmagic.ACMEIssuer{
		CA: o.directory, Email: "peer@certfleet.test", Agreed: true, Profile: o.profile,
		TrustedRoots: roots, ListenHost: host, AltHTTPPort: port, DisableTLSALPNChallenge: true,
	})}

	var seq atomic.Int64
	// batch obtains n certificates for new names in o.concurrency
	// goroutines; ttc is each one's time from the start.
	batch := func(n int) (elapsed time.Duration, ttc []time.Duration, err error) {
		names := make([]string, n)
		for i := range names {
			names[i] = fmt.Sprintf("%s-%d.certmagic.test", o.prefix, seq.Add(1))
			if err := pointAt(ctx, o.challtestsrv, names[i], host); err != nil {
				return 0, nil, err
			}
		}
		var (
			next atomic.Int64
			wg   sync.WaitGroup
			mu   sync.Mutex
			errs []error
		)
		start := time.Now()
		for g := 0; g < o.concurrency; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
					err := cfg.ObtainCertSync(ctx, names[i])
					mu.Lock()
					if err != nil {
						errs = append(errs, fmt.Errorf("obtaining %s: %w", names[i], err))
					} else {
						ttc = append(ttc, time.Since(start))
					}
					mu.Unlock()
					if err != nil {
						return
					}
				}
			}()
		}
		wg.Wait()
		return time.Since(start), ttc, errors.Join(errs...)
	}

	if _, _, err := batch(o.concurrency); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return fmt.Errorf("waiting for the go line on stdin: %w", err)
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	cpu0 := cpuTime()
	elapsed, ttc, err := batch(o.n)
	if err != nil {
		return err
	}
	cpu := cpuTime() - cpu0
	runtime.ReadMemStats(&m1)
	res := result{ElapsedNS: int64(elapsed), CPUNS: int64(cpu),
		AllocBytes: m1.TotalAlloc - m0.TotalAlloc, Allocs: m1.Mallocs - m0.Mallocs}
	for _, d := range ttc {
		res.TTCNS = append(res.TTCNS, int64(d))
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// cpuTime is this process's CPU time so far (user + system).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pointAt makes challtestsrv's DNS answer name with addr, where CertMagic's
// HTTP-01 server listens.
func pointAt(ctx context.Context, challtestsrv, name, addr string) error {
	body, _ := json.Marshal(map[string]any{"host": name, "addresses": []string{addr}})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(challtestsrv, "/")+"/add-a", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("pointing %s at %s: %w", name, addr, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("pointing %s at %s: challtestsrv answered %s", name, addr, resp.Status)
	}
	return nil
}
