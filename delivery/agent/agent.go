// Package agent is the edge side of key delivery: it reads the delivery
// topic, opens the deliveries sealed to its recipient key, and keeps one
// certificate and key pair per name in a directory, NAME.crt (the chain,
// leaf first) and NAME.key (PKCS#8 PEM, mode 0600), for a TLS terminator to
// serve. `certfleet agent` runs it.
//
//   - NAME is the certificate's first SAN in sorted order that is not a
//     wildcard (Name), so every delivery of one SAN set lands in one place.
//   - Only the newest valid pair is kept: a delivery replaces what NAME holds
//     only when its certificate is valid now, its key opens and matches the
//     leaf, and it expires later than the one held (an older or the same
//     certificate changes nothing, so a redelivery or a restart rewrites no
//     file).
//   - Files are written atomically: a temporary file in the directory,
//     fsync, rename, then fsync of the directory.
//   - Records arrive in batches (whatever is ready, then BatchWait more);
//     after a batch that changed a pair the hook runs once, then the batch's
//     offsets are committed: a crash before the commit redelivers the batch,
//     which changes nothing on disk but runs the hook again.
//   - Deliveries sealed to another key, of another tenant (Tenant), or that
//     do not open are counted and skipped; nothing in them is written.
//
// It also follows the events topic (Events): a cert_obtained for a name it
// holds with a newer certificate than the one held means a key is due; the
// names waiting are reported (certfleet_agent_keys_awaited) until the
// delivery arrives, which is what a recipient removed, or a lost delivery,
// looks like from the edge.
package agent

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/delivery"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/clock"
)

// Config configures an Agent. Key and Dir are required.
type Config struct {
	Key *delivery.PrivateKey
	// Dir holds the pairs; it is created (0700) when missing.
	Dir string
	// Tenant, when set, keeps only certificates of this tenant.
	Tenant string
	// Exec, when set, is run with "sh -c" after a batch that changed pairs,
	// with CERTFLEET_AGENT_DIR and CERTFLEET_AGENT_CHANGED (the names
	// written, space separated) in its environment. Its output goes to the
	// log.
	Exec string
	// HookTimeout bounds one run of Exec. Default 2 minutes.
	HookTimeout time.Duration
	// ExpiringWithin is what "expires soon" means on /metrics; 0: when less
	// than a third of a certificate's lifetime is left (past the point where
	// it should have been renewed).
	ExpiringWithin time.Duration
	// BatchWait is how long a batch waits for further records once one has
	// arrived. Default 200 ms.
	BatchWait time.Duration
	// MaxBatch caps the records of one batch. Default 500.
	MaxBatch int
	Logger   *slog.Logger
	Clock    clock.Clock
}

// Fetcher is the consumer side of Kafka: *kafka.Reader with a GroupID.
type Fetcher interface {
	FetchMessage(ctx context.Context) (kafka.Message, error)
	CommitMessages(ctx context.Context, msgs ...kafka.Message) error
}

// Results of one delivery record, the label of certfleet_agent_deliveries_total.
const (
	ResultWritten        = "written"         // the pair was written
	ResultUnchanged      = "unchanged"       // the same certificate is held already
	ResultOlder          = "older"           // a certificate that expires later is held
	ResultOtherRecipient = "other_recipient" // sealed to another key
	ResultOtherTenant    = "other_tenant"    // not the agent's tenant
	ResultNotValid       = "not_valid"       // expired or not yet valid
	ResultRefused        = "refused"         // did not decode, open or match its chain
)

// held is one pair in the directory.
type held struct {
	identity, serial    string
	notBefore, notAfter time.Time
}

// Agent keeps the pairs of one recipient key in one directory. Safe for
// concurrent use by Run, Events and the metrics collector.
type Agent struct {
	cfg    Config
	keyID  string
	mu     sync.Mutex
	held   map[string]held
	await  map[string]time.Time // name -> not-after of the certificate obtained whose key is not here
	counts map[string]float64
	hooks  map[string]float64
	// hookPending: the last run of the hook failed; it runs again after the
	// next batch, or within hookRetry.
	hookPending bool
	changed     []string // names written since the hook last succeeded
}

const hookRetry = 30 * time.Second

// New checks cfg, creates Dir if needed and reads the pairs it holds (a pair
// whose files do not load together is treated as absent).
func New(cfg Config) (*Agent, error) {
	if cfg.Key == nil || cfg.Dir == "" {
		return nil, errors.New("agent: Key and Dir are required")
	}
	if cfg.BatchWait <= 0 {
		cfg.BatchWait = 200 * time.Millisecond
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 500
	}
	if cfg.HookTimeout <= 0 {
		cfg.HookTimeout = 2 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Clock = clock.Or(cfg.Clock)
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a := &Agent{cfg: cfg, keyID: cfg.Key.Public().KeyID(), held: map[string]held{}, await: map[string]time.Time{},
		counts: map[string]float64{}, hooks: map[string]float64{}}
	crts, err := filepath.Glob(filepath.Join(cfg.Dir, "*.crt"))
	if err != nil {
		return nil, err
	}
	for _, crt := range crts {
		name := strings.TrimSuffix(filepath.Base(crt), ".crt")
		h, err := loadPair(crt, filepath.Join(cfg.Dir, name+".key"))
		if err != nil {
			cfg.Logger.Warn("a pair in the directory does not load; the next delivery for it replaces it", "name", name, "err", err)
			continue
		}
		a.held[name] = h
	}
	cfg.Logger.Info("agent holds", "pairs", len(a.held), "dir", cfg.Dir, "recipient_key_id", a.keyID[:16])
	return a, nil
}

// loadPair reads a pair as a TLS server would.
func loadPair(crt, key string) (held, error) {
	pair, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		return held{}, err
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return held{}, err
	}
	names := slices.Clone(leaf.DNSNames)
	for i := range names {
		names[i] = strings.ToLower(names[i])
	}
	return held{identity: events.Identity(names), serial: leaf.SerialNumber.Text(16), notBefore: leaf.NotBefore, notAfter: leaf.NotAfter}, nil
}

// Name is where a SAN set's pair lives: the first name in sorted order that
// is not a wildcard, or with only wildcards the first of them with "*"
// written "_wildcard" (NAME.crt, NAME.key).
func Name(sans []string) string {
	s := slices.Clone(sans)
	slices.Sort(s)
	for _, n := range s {
		if !strings.HasPrefix(n, "*.") {
			return n
		}
	}
	return "_wildcard" + strings.TrimPrefix(s[0], "*")
}

// Run reads batches from r until ctx ends: each record is handled, the hook
// runs when pairs changed, and the batch is committed. It returns nil when
// ctx ends.
func (a *Agent) Run(ctx context.Context, r Fetcher) error {
	for ctx.Err() == nil {
		batch, err := a.fetchBatch(ctx, r)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			a.cfg.Logger.Warn("fetching deliveries failed; retrying", "err", err)
			if clock.Sleep(ctx, time.Second) != nil {
				return nil
			}
			continue
		}
		var written []string
		for _, m := range batch {
			if name, res := a.handle(m); res == ResultWritten {
				written = append(written, name)
			}
		}
		a.mu.Lock()
		for _, n := range written {
			if !slices.Contains(a.changed, n) {
				a.changed = append(a.changed, n)
			}
		}
		runHook := len(a.changed) > 0 && (len(written) > 0 || a.hookPending)
		a.mu.Unlock()
		if runHook {
			a.hook(ctx)
		}
		if len(batch) > 0 {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			if err := r.CommitMessages(cctx, batch...); err != nil {
				// Redelivered after a restart or rebalance: changes nothing.
				a.cfg.Logger.Warn("committing offsets failed", "err", err)
			}
			cancel()
		}
	}
	return nil
}

// fetchBatch waits for a record (at most hookRetry while a hook is due
// again), then takes what arrives within BatchWait of the last, up to
// MaxBatch.
func (a *Agent) fetchBatch(ctx context.Context, r Fetcher) ([]kafka.Message, error) {
	first := ctx
	a.mu.Lock()
	pending := a.hookPending
	a.mu.Unlock()
	if pending {
		var cancel context.CancelFunc
		first, cancel = context.WithTimeout(ctx, hookRetry)
		defer cancel()
	}
	m, err := r.FetchMessage(first)
	if err != nil {
		if pending && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return nil, nil // time to run the hook again
		}
		return nil, err
	}
	batch := []kafka.Message{m}
	for len(batch) < a.cfg.MaxBatch {
		wctx, cancel := context.WithTimeout(ctx, a.cfg.BatchWait)
		m, err := r.FetchMessage(wctx)
		cancel()
		if err != nil {
			break
		}
		batch = append(batch, m)
	}
	return batch, nil
}

// handle decides one record and writes its pair when it is newer than what
// its name holds. It returns the name (when it got that far) and the result.
func (a *Agent) handle(m kafka.Message) (string, string) {
	name, res := a.decide(m)
	a.mu.Lock()
	a.counts[res]++
	a.mu.Unlock()
	return name, res
}

func (a *Agent) decide(m kafka.Message) (string, string) {
	log := a.cfg.Logger
	if id := delivery.Header(m, delivery.HeaderRecipientKeyID); id != "" && id != a.keyID {
		return "", ResultOtherRecipient
	}
	r, err := delivery.Decode(m)
	if err != nil {
		log.Warn("delivery refused", "partition", m.Partition, "offset", m.Offset, "err", events.Sanitize(err.Error(), 300))
		return "", ResultRefused
	}
	if r.RecipientKeyID != a.keyID {
		return "", ResultOtherRecipient
	}
	if a.cfg.Tenant != "" && r.Tenant != a.cfg.Tenant {
		return "", ResultOtherTenant
	}
	name := Name(r.SANs)
	now := a.cfg.Clock.Now()
	if now.Before(r.NotBefore) || !now.Before(r.NotAfter) {
		return name, ResultNotValid
	}
	a.mu.Lock()
	h, ok := a.held[name]
	a.mu.Unlock()
	if ok && h.serial == r.Serial && h.identity == r.Identity {
		a.arrived(name)
		return name, ResultUnchanged
	}
	if ok && now.Before(h.notAfter) && (h.notAfter.After(r.NotAfter) || h.notAfter.Equal(r.NotAfter) && !r.NotBefore.After(h.notBefore)) {
		return name, ResultOlder
	}
	key, err := delivery.Open(a.cfg.Key, r)
	if err != nil {
		log.Warn("delivery does not open", "name", name, "serial", r.Serial, "err", err)
		return name, ResultRefused
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		log.Warn("delivery key does not encode", "name", name, "serial", r.Serial, "err", err)
		return name, ResultRefused
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	clear(der)
	defer clear(keyPEM)
	if _, err := tls.X509KeyPair([]byte(r.ChainPEM), keyPEM); err != nil {
		log.Warn("delivery is not a usable pair", "name", name, "serial", r.Serial, "err", err)
		return name, ResultRefused
	}
	if err := a.writePair(name, []byte(r.ChainPEM), keyPEM); err != nil {
		// The directory is the agent's state: without it nothing works, so
		// the record is not skipped silently.
		log.Error("writing the pair failed", "name", name, "serial", r.Serial, "err", err)
		return name, ResultRefused
	}
	a.mu.Lock()
	a.held[name] = held{identity: r.Identity, serial: r.Serial, notBefore: r.NotBefore, notAfter: r.NotAfter}
	a.mu.Unlock()
	a.arrived(name)
	log.Info("pair written", "name", name, "serial", r.Serial, "not_after", r.NotAfter, "tenant", r.Tenant, "reason", r.Reason)
	return name, ResultWritten
}

// writePair replaces NAME.key, then NAME.crt, each atomically.
func (a *Agent) writePair(name string, chain, key []byte) error {
	if name == "" || strings.ContainsAny(name, "/\\") || name == "." || name == ".." {
		return fmt.Errorf("unsafe name %q", name)
	}
	if err := writeAtomic(a.cfg.Dir, name+".key", key, 0o600); err != nil {
		return err
	}
	if err := writeAtomic(a.cfg.Dir, name+".crt", chain, 0o644); err != nil {
		return err
	}
	d, err := os.Open(a.cfg.Dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// writeAtomic writes b to dir/name through a temporary file in dir: write,
// fsync, chmod, rename.
func writeAtomic(dir, name string, b []byte, mode os.FileMode) error {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(dir, "."+name+".tmp-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(b); err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	ok = true
	return nil
}

// hook runs Exec for the names changed since it last succeeded.
func (a *Agent) hook(ctx context.Context) {
	a.mu.Lock()
	changed := slices.Clone(a.changed)
	a.mu.Unlock()
	if a.cfg.Exec == "" {
		a.mu.Lock()
		a.changed, a.hookPending = nil, false
		a.mu.Unlock()
		return
	}
	sort.Strings(changed)
	hctx, cancel := context.WithTimeout(ctx, a.cfg.HookTimeout)
	defer cancel()
	cmd := exec.CommandContext(hctx, "sh", "-c", a.cfg.Exec)
	cmd.Env = append(os.Environ(), "CERTFLEET_AGENT_DIR="+a.cfg.Dir, "CERTFLEET_AGENT_CHANGED="+strings.Join(changed, " "))
	cmd.Stdin = nil
	out := &capped{max: 4096}
	cmd.Stdout, cmd.Stderr = out, out
	t0 := time.Now()
	err := cmd.Run()
	result := "ok"
	if err != nil {
		result = "failed"
	}
	a.mu.Lock()
	a.hooks[result]++
	if err == nil {
		a.changed, a.hookPending = nil, false
	} else {
		a.hookPending = true
	}
	a.mu.Unlock()
	if err != nil {
		a.cfg.Logger.Error("hook failed; it runs again after the next batch or within 30s", "exec", a.cfg.Exec, "changed", len(changed),
			"err", err, "output", events.Sanitize(out.String(), 1000))
		return
	}
	a.cfg.Logger.Info("hook ran", "changed", strings.Join(changed, " "), "took", time.Since(t0).Round(time.Millisecond),
		"output", events.Sanitize(out.String(), 1000))
}

// capped keeps the first max bytes written to it.
type capped struct {
	mu  sync.Mutex
	b   []byte
	max int
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := c.max - len(c.b); room > 0 {
		c.b = append(c.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (c *capped) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.b)
}

var _ io.Writer = (*capped)(nil)

// Events reads the events topic (events.Follow's channel) until it closes:
// a cert_obtained of the agent's tenant for a name it holds, newer than the
// pair held, marks that name's key as awaited until its delivery arrives.
func (a *Agent) Events(msgs <-chan kafka.Message) {
	for m := range msgs {
		ev, err := events.Decode(m)
		if err != nil {
			continue
		}
		ob, ok := ev.Data.(*events.CertObtained)
		if !ok || (a.cfg.Tenant != "" && ob.Tenant != a.cfg.Tenant) {
			continue
		}
		name := Name(ob.SANs)
		a.mu.Lock()
		h, holds := a.held[name]
		if holds && h.serial != ob.Serial && ob.NotAfter.After(h.notAfter) && ob.NotAfter.After(a.await[name]) {
			a.await[name] = ob.NotAfter
		}
		a.mu.Unlock()
	}
}

// arrived clears name's awaited key once the pair held is at least as new
// as the certificate awaited.
func (a *Agent) arrived(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if at, ok := a.await[name]; ok && !a.held[name].notAfter.Before(at) {
		delete(a.await, name)
	}
}

// Held reports the pairs held, by name: serial and not-after.
func (a *Agent) Held() map[string]Pair {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]Pair, len(a.held))
	for n, h := range a.held {
		out[n] = Pair{Identity: h.identity, Serial: h.serial, NotBefore: h.notBefore, NotAfter: h.notAfter}
	}
	return out
}

// Pair describes a pair held.
type Pair struct {
	Identity, Serial    string
	NotBefore, NotAfter time.Time
}

// Awaited lists the names whose newer certificate the fleet obtained and
// whose key has not arrived.
func (a *Agent) Awaited() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]string, 0, len(a.await))
	for n := range a.await {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// expiring reports whether h expires soon at now.
func (a *Agent) expiring(h held, now time.Time) bool {
	within := a.cfg.ExpiringWithin
	if within <= 0 {
		within = h.notAfter.Sub(h.notBefore) / 3
	}
	return h.notAfter.Sub(now) < within
}
