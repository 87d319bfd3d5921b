package testenv

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// EnvCacheDir overrides where downloaded parts (Kafka jars, Pebble binaries)
// are kept across runs; default $XDG_CACHE_HOME/certfleet or ~/.cache/certfleet.
const EnvCacheDir = "CERTFLEET_CACHE_DIR"

// service is one process of the stack and how to bring it up.
type service struct {
	proc    proc
	ports   []string                    // addresses it listens on, checked free before start
	install func(context.Context) error // fetch binaries; idempotent
	start   func(context.Context) error // fresh data, launch; called only when not running
	ready   func(context.Context) error // deep readiness check
	data    string                      // its temporary data, removed on down and before a fresh start
}

// layout is where everything lives for one state directory.
type layout struct {
	state, data, cache, kind string
}

func newLayout() (layout, error) {
	if portOffsetErr != nil {
		return layout{}, portOffsetErr
	}
	state, err := StateDir()
	if err != nil {
		return layout{}, err
	}
	cache := os.Getenv(EnvCacheDir)
	if cache == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			base = os.TempDir()
		}
		cache = filepath.Join(base, "certfleet")
	}
	kind, err := dbKind()
	if err != nil {
		return layout{}, err
	}
	// Data goes to a temp dir keyed by the state dir, so the postgres user
	// can reach it even when the checkout sits under a private home.
	sum := sha256.Sum256([]byte(state))
	data := filepath.Join(os.TempDir(), "certfleet-testenv-"+hex.EncodeToString(sum[:4]))
	return layout{state: state, data: data, cache: cache, kind: kind}, nil
}

func (l layout) services() (svcs []*service, pebbleCA string) {
	var kafkaLibs, pebbleBin string
	pebbleDir := filepath.Join(l.state, "pebble")
	pebbleCA = filepath.Join(pebbleDir, "ca.pem")

	kp := kafkaProc(l.state)
	kafkaData := filepath.Join(l.data, "kafka")
	svcs = append(svcs, &service{
		proc: kp, ports: []string{kafkaAddr, kafkaControllerAddr, kafkaSASLAddr, kafkaMTLSAddr}, data: kafkaData,
		install: func(ctx context.Context) (err error) {
			// kcat (librdkafka) is what the events interop tests produce and
			// consume with: a Kafka client nobody here wrote.
			if _, err := exec.LookPath("kcat"); err != nil {
				if err := aptInstall(ctx, "kcat"); err != nil {
					return err
				}
			}
			kafkaLibs, err = installKafka(ctx, l.cache)
			return err
		},
		start: func(ctx context.Context) error { return startKafka(ctx, kp, kafkaLibs, kafkaData) },
		ready: func(ctx context.Context) error {
			if err := kafkaReady(ctx); err != nil {
				return err
			}
			return ensureKafkaACLs(ctx)
		},
	})

	dp := dbProc(l.state, l.kind)
	dbData := filepath.Join(l.data, l.kind)
	ds := &service{proc: dp, data: dbData, ready: func(ctx context.Context) error { return dbReady(ctx, l.kind) }}
	if l.kind == "cockroach" {
		ds.ports = []string{crdbAddr, crdbHTTP}
		ds.install = func(context.Context) error { return nil }
		ds.start = func(context.Context) error { return startCockroach(dp, dbData) }
	} else {
		ds.ports = []string{pgAddr}
		ds.install = installPostgres
		ds.start = func(ctx context.Context) error { return startPostgres(ctx, dp, dbData) }
	}
	svcs = append(svcs, ds)

	bl := bindAt(l)
	bp := bindProc(l.state, bl)
	svcs = append(svcs, &service{
		proc: bp, ports: []string{bindAddr}, data: bl.data,
		install: installBind,
		start:   func(context.Context) error { return startBind(bl, bp) },
		ready:   bindReady,
	})

	pp, cp := pebbleProcs(l.state, pebbleBuildDir(l.cache, true))
	var once sync.Once
	var installErr error
	installPebbleOnce := func(ctx context.Context) error {
		once.Do(func() { pebbleBin, installErr = installPebble(ctx, l.cache) })
		return installErr
	}
	svcs = append(svcs, &service{
		proc: cp, ports: []string{challDNSAddr, fmt.Sprintf("127.0.0.1:%d", challHTTP01), challMgmtAddr},
		install: installPebbleOnce,
		start:   func(context.Context) error { return cp.start(challCmd(pebbleBin)) },
		ready: func(ctx context.Context) error {
			// Any HTTP answer from the management API means it serves.
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+challMgmtAddr+"/", nil)
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			return err
		},
	})
	svcs = append(svcs, &service{
		proc: pp, ports: []string{pebbleAddr, pebbleMgmtAddr},
		install: installPebbleOnce,
		start: func(context.Context) error {
			return startPebble(pp, pebbleBin, pebbleDir, pebbleDir, pebbleAddr, pebbleMgmtAddr, nil)
		},
		ready: func(ctx context.Context) error { return pebbleReady(ctx, pebbleCA) },
	})
	svcs = append(svcs, l.pebbleEABService(func() string { return pebbleBin }, installPebbleOnce, pebbleDir, pebbleCA))
	return svcs, pebbleCA
}

// Up starts every service that is not already running and ready, waits for
// all to be ready, and writes the env file. Running it twice is fine: live,
// ready services are kept. Leftovers of a crashed run (pid files of dead
// processes, their data) are removed before a fresh start. Progress goes to out.
func Up(ctx context.Context, out io.Writer) (Settings, error) {
	l, err := newLayout()
	if err != nil {
		return Settings{}, err
	}
	for _, d := range []string{l.state, l.data, l.cache} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return Settings{}, fmt.Errorf("testenv: creating %s: %w", d, err)
		}
	}
	svcs, pebbleCA := l.services()
	errs := make([]error, len(svcs))
	var wg sync.WaitGroup
	for i, s := range svcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.up(ctx, out)
		}()
	}
	wg.Wait()
	var msgs []string
	for _, err := range errs {
		if err != nil {
			msgs = append(msgs, err.Error())
		}
	}
	if len(msgs) > 0 {
		return Settings{}, fmt.Errorf("testenv up failed:\n%s", strings.Join(msgs, "\n"))
	}

	root, err := savePebbleRoot(ctx, l.state, pebbleCA)
	if err != nil {
		return Settings{}, err
	}
	k, err := ensurePKI(l.state)
	if err != nil {
		return Settings{}, err
	}
	// After readiness, so a failure here stops up and restarts nothing.
	if err := ensureKafkaUsers(ctx, l.state); err != nil {
		return Settings{}, err
	}
	s := Settings{
		KafkaBrokers:        []string{kafkaAddr},
		DatabaseURL:         dbURL(l.kind),
		DatabaseKind:        l.kind,
		ACMEDirectory:       "https://" + pebbleAddr + "/dir",
		ACMETLSCA:           pebbleCA,
		PebbleRoot:          root,
		PebbleManagementURL: "https://" + pebbleMgmtAddr,
		ChallTestSrvURL:     "http://" + challMgmtAddr,
		DNSServer:           bindAddr,
		DNSUpdateServer:     bindAddr,
		DNSTSIGKeyFile:      bindAt(l).keyFile,
		HTTP01Port:          challHTTP01,
		KafkaSASLBrokers:    []string{kafkaSASLAddr},
		KafkaMTLSBrokers:    []string{kafkaMTLSAddr},
		KafkaTLSCA:          k.caPath,
		SecretsDir:          k.secrets,
		DatabaseTLSURL:      dbTLSURL(l.kind, k),
		EABACMEDirectory:    "https://" + pebbleEABAddr + "/dir",
		EABKeyID:            PebbleEABKeyID,
		EABKeyFile:          eabKeyFile(l.state),
	}
	if err := os.WriteFile(filepath.Join(l.state, "env"), []byte(s.EnvFile()), 0o644); err != nil {
		return Settings{}, fmt.Errorf("testenv: writing env file: %w", err)
	}
	return s, nil
}

// up brings one service to ready.
func (s *service) up(ctx context.Context, out io.Writer) error {
	t0 := time.Now()
	if err := s.install(ctx); err != nil {
		return err
	}
	if s.proc.pid() != 0 && s.proc.stale() {
		fmt.Fprintf(out, "%-13s running from another build or configuration; restarting\n", s.proc.name)
		if err := s.proc.stop(15 * time.Second); err != nil {
			return err
		}
	}
	if s.proc.pid() != 0 {
		if err := s.proc.waitFor(withTimeout(ctx, 15*time.Second), "readiness", s.ready); err == nil {
			fmt.Fprintf(out, "%-13s already running (pid %d), ready\n", s.proc.name, s.proc.pid())
			return nil
		}
		fmt.Fprintf(out, "%-13s running but not ready; restarting\n", s.proc.name)
		if err := s.proc.stop(15 * time.Second); err != nil {
			return err
		}
	}
	// A process that dies during start-up is started again, up to three
	// attempts; the error of the last one says how the process ended.
	const attempts = 3
	for attempt := 1; ; attempt++ {
		err := s.startFresh(ctx)
		if err == nil {
			break
		}
		var exited *exitedError
		if !errors.As(err, &exited) || attempt == attempts {
			return err
		}
		fmt.Fprintf(out, "%-13s exited during start-up (%s); starting again (attempt %d of %d)\n", s.proc.name, exited.how, attempt+1, attempts)
	}
	fmt.Fprintf(out, "%-13s started (pid %d), ready in %.1fs\n", s.proc.name, s.proc.pid(), time.Since(t0).Seconds())
	return nil
}

// startFresh clears the leftovers of a crashed run (pid file, data), checks
// the ports are free, starts the service and waits until it is ready.
func (s *service) startFresh(ctx context.Context) error {
	_ = os.Remove(s.proc.pidFile())
	if s.data != "" {
		if err := os.RemoveAll(s.data); err != nil {
			return fmt.Errorf("testenv: removing stale %s data: %w", s.proc.name, err)
		}
	}
	for _, addr := range s.ports {
		if err := portFree(addr); err != nil {
			return fmt.Errorf("%s: %w", s.proc.name, err)
		}
	}
	if err := s.start(ctx); err != nil {
		return err
	}
	return s.proc.waitFor(withTimeout(ctx, 120*time.Second), "readiness", s.ready)
}

func withTimeout(ctx context.Context, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(ctx, d)
	context.AfterFunc(c, cancel) // release the timer once c ends
	return c
}

// savePebbleRoot fetches Pebble's current issuing root (a new one each time
// Pebble starts) to a file tests verify chains against.
func savePebbleRoot(ctx context.Context, state, caPath string) (string, error) {
	c, err := tlsClient(caPath)
	if err != nil {
		return "", err
	}
	pem, err := httpGet(ctx, c, "https://"+pebbleMgmtAddr+"/roots/0")
	if err != nil {
		return "", fmt.Errorf("testenv: fetching Pebble's root: %w", err)
	}
	path := filepath.Join(state, "pebble", "root.pem")
	return path, os.WriteFile(path, pem, 0o644)
}

// Down stops every process testenv started (by its pid files, both database
// kinds) and removes the temporary data and the state directory.
func Down(out io.Writer) error {
	l, err := newLayout()
	if err != nil {
		return err
	}
	procs := []proc{kafkaProc(l.state), dbProc(l.state, "postgres"), dbProc(l.state, "cockroach")}
	pp, cp := pebbleProcs(l.state, pebbleBuildDir(l.cache, true))
	procs = append(procs, bindProc(l.state, bindAt(l)))
	procs = append(procs, pp, cp, l.pebbleEABProc())
	var msgs []string
	for _, p := range procs {
		pid := p.pid()
		if err := p.stop(20 * time.Second); err != nil {
			msgs = append(msgs, err.Error())
		} else if pid != 0 {
			fmt.Fprintf(out, "%-13s stopped (pid %d)\n", p.name, pid)
		}
	}
	if len(msgs) > 0 {
		return fmt.Errorf("testenv down: %s", strings.Join(msgs, "; "))
	}
	if err := os.RemoveAll(l.data); err != nil {
		return fmt.Errorf("testenv: removing %s: %w", l.data, err)
	}
	return os.RemoveAll(l.state)
}

// Status reports each service's process and readiness to out; it returns an
// error when any service is down or not ready.
func Status(ctx context.Context, out io.Writer) error {
	l, err := newLayout()
	if err != nil {
		return err
	}
	svcs, _ := l.services()
	down := 0
	for _, s := range svcs {
		pid := s.proc.pid()
		if pid == 0 {
			fmt.Fprintf(out, "%-13s stopped\n", s.proc.name)
			down++
			continue
		}
		if err := s.ready(withTimeout(ctx, 5*time.Second)); err != nil {
			fmt.Fprintf(out, "%-13s running (pid %d), NOT ready: %v\n", s.proc.name, pid, err)
			down++
			continue
		}
		fmt.Fprintf(out, "%-13s running (pid %d), ready\n", s.proc.name, pid)
	}
	if down > 0 {
		return fmt.Errorf("testenv: %d of %d services down or not ready", down, len(svcs))
	}
	return nil
}
