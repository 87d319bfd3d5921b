package testenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// TestPebbleLockOrder reproduces the lock-order deadlock of Pebble's
// in-memory store against stock Pebble and shows that the build testenv runs
// (with testenv/pebblepatch/memorystore-lock-order.patch) survives the same
// load. The load is what hangs stock Pebble in the field: one account, many
// new orders at once (each scans every authorization of the store under the
// store's lock) while authorizations and orders are polled (each takes an
// authorization's lock, then the store's), with thousands of authorizations
// already in the store so the scan is long.
//
// Both Pebbles are built from module source into the download cache (a minute
// on a cold cache) and run on ports of their own, beside the stack.
func TestPebbleLockOrder(t *testing.T) {
	if os.Getenv(EnvSwitch) == "off" {
		t.Skipf("builds and runs two Pebbles: skipped with %s=off", EnvSwitch)
	}
	l, err := newLayout()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	t.Run("stock Pebble hangs", func(t *testing.T) {
		dir, err := buildPebble(ctx, l.cache, false)
		if err != nil {
			t.Fatal(err)
		}
		res := stressPebble(t, startTestPebble(t, dir), 90*time.Second)
		t.Logf("stock %s: %s", PebbleVersion, res)
		if !errors.Is(res.err, errPebbleHung) {
			t.Fatalf("the stress did not hang stock Pebble %s (%s): it no longer reproduces the bug the patch fixes; "+
				"if upstream fixed it, drop the patch", PebbleVersion, res)
		}
	})
	t.Run("patched Pebble survives", func(t *testing.T) {
		dir, err := buildPebble(ctx, l.cache, true)
		if err != nil {
			t.Fatal(err)
		}
		res := stressPebble(t, startTestPebble(t, dir), 40*time.Second)
		t.Logf("patched %s: %s", PebbleVersion, res)
		if res.err != nil {
			t.Fatalf("patched Pebble failed the stress: %s", res)
		}
	})
}

var errPebbleHung = errors.New("Pebble hung: a POST got no answer within its deadline while GET /dir still answered")

type stressResult struct {
	seeded, ops int
	took        time.Duration
	err         error
}

func (r stressResult) String() string {
	s := fmt.Sprintf("%d authorizations seeded, %d requests in %s", r.seeded, r.ops, r.took.Round(time.Second))
	if r.err != nil {
		s += ": " + r.err.Error()
	}
	return s
}

type testPebble struct {
	dir    string // ACME directory URL
	client *http.Client
	log    *LogBuffer
}

// startTestPebble runs dir/pebble on free loopback ports with every challenge
// valid (no validation traffic), no nonce rejects and no reuse of valid
// authorizations, and stops it at the end of the test.
func startTestPebble(t *testing.T, dir string) testPebble {
	t.Helper()
	state := t.TempDir()
	_, cert, key, err := writeServingCerts(state)
	if err != nil {
		t.Fatal(err)
	}
	var c pebbleConfig
	p := &c.Pebble
	p.ListenAddress, p.ManagementListenAddress = FreeAddr(t, "127.0.0.1"), FreeAddr(t, "127.0.0.1")
	p.Certificate, p.PrivateKey = cert, key
	p.HTTPPort, p.TLSPort = 5002, 5001 // never used: every challenge is valid
	p.KeyAlgorithm = "ecdsa"
	p.Profiles = map[string]pebbleProfile{PebbleProfile: {Description: "90 days", ValidityPeriod: 7776000}}
	data, _ := json.Marshal(c)
	conf := filepath.Join(state, "pebble-config.json")
	if err := os.WriteFile(conf, data, 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &LogBuffer{}
	cmd := exec.Command(filepath.Join(dir, "pebble"), "-config", conf)
	cmd.Dir, cmd.Stdout, cmd.Stderr = state, logs, logs
	cmd.Env = append(os.Environ(), "PEBBLE_VA_ALWAYS_VALID=1", "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	client, err := tlsClient(filepath.Join(state, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	tp := testPebble{dir: "https://" + p.ListenAddress + "/dir", client: client, log: logs}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := httpGet(ctx, client, tp.dir)
		cancel()
		if err == nil {
			return tp
		}
		if time.Now().After(deadline) {
			t.Fatalf("test Pebble did not start: %v\n%s", err, logs.Tail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stressPebble seeds thousands of authorizations, then runs new orders and
// polls of authorizations and orders from many goroutines for up to d. It
// stops at the first request that gets no answer within 10 s; if GET /dir
// still answers then, Pebble has hung (errPebbleHung).
func stressPebble(t *testing.T, p testPebble, d time.Duration) stressResult {
	t.Helper()
	const (
		seedOrders, namesPerSeed = 40, 100 // 4,000 authorizations
		orderers, pollers        = 24, 24
		reqTimeout               = 10 * time.Second
	)
	start := time.Now()
	client := &acme.Client{Directory: p.dir, HTTPClient: p.client, PollTimeout: reqTimeout}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	acct, err := client.NewAccount(actx, acme.Account{TermsOfServiceAgreed: true, PrivateKey: key})
	cancel()
	if err != nil {
		t.Fatalf("registering an account: %v", err)
	}

	var (
		mu     sync.Mutex
		authzs []string
		orders []acme.Order
	)
	remember := func(o acme.Order) {
		mu.Lock()
		defer mu.Unlock()
		orders = append(orders, o)
		authzs = append(authzs, o.Authorizations...)
	}
	newOrder := func(ctx context.Context, prefix string, n int) error {
		ids := make([]acme.Identifier, n)
		for i := range ids {
			ids[i] = acme.Identifier{Type: "dns", Value: fmt.Sprintf("%s-%d-%d.example", prefix, i, mrand.Int64())}
		}
		o, err := client.NewOrder(ctx, acct, acme.Order{Identifiers: ids, Profile: PebbleProfile})
		if err == nil {
			remember(o)
		}
		return err
	}
	for i := range seedOrders {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := newOrder(ctx, fmt.Sprintf("seed%d", i), namesPerSeed)
		cancel()
		if err != nil {
			t.Fatalf("seeding order %d: %v\n%s", i, err, p.log.Tail(20))
		}
	}
	res := stressResult{seeded: len(authzs)}

	var (
		ops   atomic.Int64
		first sync.Once
		fail  error
	)
	runCtx, stop := context.WithTimeout(context.Background(), d)
	defer stop()
	record := func(err error) {
		if err == nil {
			ops.Add(1)
			return
		}
		first.Do(func() {
			gctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, gerr := httpGet(gctx, p.client, p.dir); gerr == nil && errors.Is(err, context.DeadlineExceeded) {
				fail = fmt.Errorf("%w (%v)", errPebbleHung, err)
			} else {
				fail = fmt.Errorf("request failed: %v (GET /dir: %v)", err, gerr)
			}
			stop()
		})
	}
	call := func(f func(ctx context.Context) error) {
		ctx, cancel := context.WithTimeout(runCtx, reqTimeout)
		defer cancel()
		err := f(ctx)
		if runCtx.Err() != nil {
			return // the run ended (or failed) under this request
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("%w: %v", context.DeadlineExceeded, err)
		}
		record(err)
	}
	pick := func() (string, acme.Order) {
		mu.Lock()
		defer mu.Unlock()
		return authzs[mrand.IntN(len(authzs))], orders[mrand.IntN(len(orders))]
	}
	var wg sync.WaitGroup
	for w := range orderers + pollers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; runCtx.Err() == nil; i++ {
				if w < orderers {
					call(func(ctx context.Context) error { return newOrder(ctx, fmt.Sprintf("w%d-%d", w, i), 1) })
					continue
				}
				authz, order := pick()
				call(func(ctx context.Context) error { _, err := client.GetAuthorization(ctx, acct, authz); return err })
				// GetOrder decodes into the order it is given: a fresh one, so the
				// goroutines share no slices.
				call(func(ctx context.Context) error {
					_, err := client.GetOrder(ctx, acct, acme.Order{Location: order.Location})
					return err
				})
			}
		}()
	}
	wg.Wait()
	res.ops, res.took, res.err = int(ops.Load()), time.Since(start), fail
	return res
}
