package testenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/mholt/acmez/v3/acme"
	"github.com/segmentio/kafka-go"
)

// A hung dependency must fail the tests that need it fast, with one message
// naming the service and its log, instead of every test waiting out its own
// timeout (a Pebble that stopped answering POSTs once cost a 21-minute run
// with 20 failures). Require probes each service for real once per test
// binary, and then a watchdog goes on probing it while the tests run.
const (
	probeEvery   = 5 * time.Second
	probeTimeout = 10 * time.Second
	// hungAfter without one successful probe, a service counts as hung and
	// the test binary stops. A service restarted on purpose (Restart) is not
	// probed while it restarts.
	hungAfter = 30 * time.Second
)

// probe is one real request to one service, the kind its users make: Kafka
// answers a metadata request, the database a query, Pebble a POST (a stuck
// Pebble still answers GETs), BIND the test zone's SOA, challtestsrv its
// management API.
type probe struct {
	service string // a process name of the stack ("kafka", "pebble", ...)
	check   func(ctx context.Context) error
}

func (s Settings) probes() []probe {
	dbName := "postgres"
	if s.DatabaseKind == "cockroach" {
		dbName = "cockroach"
	}
	return []probe{
		{"kafka", func(ctx context.Context) error {
			// A transport of its own: kafka.DefaultTransport caches metadata
			// for every client in the process, and a probe's view of the
			// topics (taken before a test creates its topic) would make the
			// test's writer see "Unknown Topic Or Partition" for seconds.
			tr := &kafka.Transport{}
			defer tr.CloseIdleConnections()
			c := &kafka.Client{Addr: kafka.TCP(s.KafkaBrokers...), Timeout: probeTimeout, Transport: tr}
			_, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{}})
			return err
		}},
		{dbName, func(ctx context.Context) error {
			conn, err := pgx.Connect(ctx, s.DatabaseURL)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			var one int
			return conn.QueryRow(ctx, "SELECT 1").Scan(&one)
		}},
		{"pebble", func(ctx context.Context) error { return pebbleAnswersPOST(ctx, s.ACMEDirectory, s.ACMETLSCA) }},
		{"bind", func(ctx context.Context) error {
			if s.DNSUpdateServer == "" {
				return nil // an env file from before BIND; tests that need it say so (Settings.DNS01Config)
			}
			return dnsSOAAnswers(ctx, s.DNSUpdateServer)
		}},
		{eabProcName, func(ctx context.Context) error {
			if s.EABACMEDirectory == "" {
				return nil // an env file from before the EAB Pebble; tests that need it say so (Settings.EAB)
			}
			eab, err := s.EAB()
			if err != nil {
				return err
			}
			return pebbleAnswersPOSTWith(ctx, s.EABACMEDirectory, s.ACMETLSCA, &eab)
		}},
		{"challtestsrv", func(ctx context.Context) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.ChallTestSrvURL+"/", nil)
			if err != nil {
				return err
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			return resp.Body.Close()
		}},
	}
}

// pebbleAnswersPOST registers a throwaway account: a POST through the store's
// write lock, which is what stops answering when Pebble hangs.
func pebbleAnswersPOST(ctx context.Context, directory, caPath string) error {
	return pebbleAnswersPOSTWith(ctx, directory, caPath, nil)
}

// pebbleAnswersPOSTWith is pebbleAnswersPOST with an External Account
// Binding (the EAB Pebble refuses accounts without one).
func pebbleAnswersPOSTWith(ctx context.Context, directory, caPath string, eab *acme.EAB) error {
	c, err := tlsClient(caPath)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	client := &acme.Client{Directory: directory, HTTPClient: c}
	acct := acme.Account{TermsOfServiceAgreed: true, PrivateKey: key}
	if eab != nil {
		if err := acct.SetExternalAccountBinding(ctx, client, *eab); err != nil {
			return fmt.Errorf("binding a probe account: %w", err)
		}
	}
	if _, err := client.NewAccount(ctx, acct); err != nil {
		return fmt.Errorf("registering a probe account: %w", err)
	}
	return nil
}

// checkServices runs every probe once, in parallel, and returns the first
// failure as a hungError.
func checkServices(ctx context.Context, s Settings) error {
	probes := s.probes()
	errs := make([]error, len(probes))
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, probeTimeout)
			defer cancel()
			if err := p.check(pctx); err != nil {
				errs[i] = &hungError{service: p.service, err: err}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// hungError names a service that did not answer, where its log is, and the
// log's last lines.
type hungError struct {
	service string
	silent  time.Duration // how long it has not answered (0: one probe)
	err     error
}

func (e *hungError) Error() string {
	log := filepath.Join(stateDirOrDefault(), e.service+".log")
	what := "did not answer"
	if e.silent > 0 {
		what = fmt.Sprintf("has not answered for %s", e.silent.Round(time.Second))
	}
	return fmt.Sprintf("testenv: %s %s (%v); its log is %s, last lines:\n%s\n"+
		"`make testenv-up` restarts a service that is not ready",
		e.service, what, e.err, log, Tail(readTail(log), 15))
}

func (e *hungError) Unwrap() error { return e.err }

func stateDirOrDefault() string {
	dir, err := StateDir()
	if err != nil {
		return ".testenv"
	}
	return dir
}

// readTail reads at most the last 16 KiB of a log.
func readTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read the log: %v)", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > 16<<10 {
		_, _ = f.Seek(fi.Size()-16<<10, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// watchdog probes the stack while a test binary runs.
type watchdog struct {
	every, timeout, hungAfter time.Duration

	mu     sync.Mutex
	paused int                  // Restarts in progress in this process
	last   map[string]time.Time // each service's last answer
}

var dog = &watchdog{every: probeEvery, timeout: probeTimeout, hungAfter: hungAfter}

// pause stops the hang verdict while a service is restarted on purpose; the
// returned func resumes it, counting every service as having just answered.
func (w *watchdog) pause() (resume func()) {
	w.mu.Lock()
	w.paused++
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.paused--
		now := time.Now()
		for k := range w.last {
			w.last[k] = now
		}
	}
}

// run probes every w.every; when a service has not answered for w.hungAfter
// it calls stop with the verdict and returns.
func (w *watchdog) run(probes []probe, stop func(error)) {
	w.mu.Lock()
	w.last = map[string]time.Time{}
	for _, p := range probes {
		w.last[p.service] = time.Now()
	}
	w.mu.Unlock()
	for {
		time.Sleep(w.every)
		for _, p := range probes {
			ctx, cancel := context.WithTimeout(context.Background(), w.timeout)
			err := p.check(ctx)
			cancel()
			w.mu.Lock()
			if err == nil {
				w.last[p.service] = time.Now()
			}
			silent, paused := time.Since(w.last[p.service]), w.paused > 0
			w.mu.Unlock()
			if err != nil && !paused && silent >= w.hungAfter {
				stop(&hungError{service: p.service, silent: silent, err: err})
				return
			}
		}
	}
}

// stopTestBinary ends a test binary whose stack hung: one message on stderr,
// the processes the tests started (workers, schedulers) killed so none is
// left behind, exit status 3. Tests blocked on the hung service would
// otherwise each wait out their own timeout.
func stopTestBinary(err error) {
	fmt.Fprintf(os.Stderr, "\n%v\nThe tests of this package stop here.\n", err)
	killChildren()
	os.Exit(3)
}

// killChildren kills this process's child processes (found through /proc).
func killChildren() {
	self := os.Getpid()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		i := strings.LastIndexByte(string(stat), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(self) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
