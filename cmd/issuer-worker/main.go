// Command issuer-worker turns issuance requests from Kafka into certificates.
// Run many, in one consumer group; each acquires rate-limit tokens from the
// database before every ACME order. See package pipeline for the job, and
// -h for the configuration (flags, each with an environment fallback).
//
// Exit status: 0 after a clean shutdown (SIGTERM/SIGINT), 1 on a runtime
// failure, 2 on bad configuration.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/cahealth"
	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/delivery"
	"github.com/certfleet/certfleet/dns01"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/caconfig"
	"github.com/certfleet/certfleet/internal/lanesignal"
	"github.com/certfleet/certfleet/kafkaconn"
	"github.com/certfleet/certfleet/names"
	"github.com/certfleet/certfleet/pipeline"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/ratelimit/changefeed"
	"github.com/certfleet/certfleet/seal"
)

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "issuer-worker: configuration:", err)
		os.Exit(2)
	}
	sec, err := loadSecrets(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "issuer-worker: configuration:", err)
		os.Exit(2)
	}
	log := newLogger(os.Stderr, cfg.LogLevel)
	if err := names.SetProcessPolicy(cfg.Names); err != nil { // checked by parseConfig already
		fmt.Fprintln(os.Stderr, "issuer-worker: configuration: -allow-special-names:", err)
		os.Exit(2)
	}
	if len(cfg.Names.AllowedSpecialUse) > 0 {
		log.Warn("names under special-use TLDs are accepted (-allow-special-names): for a lab CA only", "names_policy", cfg.Names.String())
	}
	if cfg.SealKeysFile == "" {
		log.Warn("the keyring comes from the environment (CERTFLEET_SEAL_KEYS): for local use only; mount it as a file and pass -seal-keys-file in production")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, cfg, sec, log); err != nil {
		log.Error("issuer-worker stopped", "err", err)
		os.Exit(1)
	}
	log.Info("issuer-worker stopped cleanly")
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}

// caLogger is the logger of one CA's issuer. Its lines carry the CA's name
// as "ca_name": acmez adds its own "ca" (the directory URL) to some lines,
// and a second "ca" key would repeat the key in one JSON object.
func caLogger(log *slog.Logger, name string) *slog.Logger {
	return log.With("ca_name", name)
}

// secrets is what the configuration names on disk, read and checked before
// anything starts: a weak keyring, a secret file others may read, a missing
// certificate or a database URL without verify-full is a configuration
// error (exit status 2).
type secrets struct {
	kafka   *kafkaconn.Connector
	keyring *seal.Keyring
	db      db.Config
	eab     map[string]*acme.EAB // by CA name: the CAs with External Account Binding
	dns01   *dns01.Set           // -dns01-config, with its providers' credentials read
}

func loadSecrets(cfg config) (secrets, error) {
	var s secrets
	var err error
	if s.kafka, err = kafkaconn.New(*cfg.Kafka); err != nil {
		return s, err
	}
	if s.keyring, err = loadKeyring(cfg); err != nil {
		return s, fmt.Errorf("-seal-keys-file: %w", err)
	}
	s.db = db.Config{URL: cfg.DatabaseURL, Insecure: cfg.DatabaseInsecure, MaxConns: int32(cfg.Concurrency*2 + 8)}
	if err := s.db.Check(); err != nil {
		return s, fmt.Errorf("-database-url: %w", err)
	}
	if cfg.DNS01Config != "" {
		if s.dns01, err = dns01.Load(cfg.DNS01Config); err != nil {
			return s, fmt.Errorf("-dns01-config: %w", err)
		}
		if p := s.dns01.PropagationTimeout(); p >= cfg.OrderTimeout {
			return s, fmt.Errorf("-dns01-config: propagation_timeout %v must be below -order-timeout (%v): the order would end first", p, cfg.OrderTimeout)
		}
	}
	s.eab = map[string]*acme.EAB{}
	for _, ca := range cfg.CAs {
		kid, key, ok, err := ca.EAB()
		if err != nil {
			return s, fmt.Errorf("-ca: %w", err)
		}
		if ok {
			s.eab[ca.Name] = &acme.EAB{KeyID: kid, MACKey: key}
		}
	}
	return s, nil
}

// run wires the parts and runs them until ctx ends.
func run(ctx context.Context, cfg config, sec secrets, log *slog.Logger) error {
	startCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	d, err := db.Open(startCtx, sec.db)
	if err != nil {
		return err
	}
	defer d.Close()
	keyring, kc := sec.keyring, sec.kafka
	defer kc.Close()
	topics := cfg.Topics.WithDefaults()
	// Every topic the worker uses: the five, and the delivery topic when it
	// delivers keys.
	used := topics.All()
	if cfg.DeliverKeys {
		used = append(used, cfg.TopicDeliveries)
	}
	if cfg.ProvisionTopics {
		specs := topics.SpecsWith(*cfg.Provision)
		if cfg.DeliverKeys {
			specs = append(specs, delivery.TopicSpec(cfg.TopicDeliveries, *cfg.Provision))
		}
		if err := events.Provision(startCtx, kc.Client(used...), specs...); err != nil {
			return fmt.Errorf("provisioning topics: %w", kc.Explain(err, "create topics"))
		}
	}
	// An untrusted certificate, a wrong password, a missing ACL or a silent
	// broker ends the worker here, named, instead of an endless retry inside
	// kafka-go.
	if err := kc.Check(startCtx, used...); err != nil {
		return err
	}
	producer, err := events.NewProducer(events.ProducerConfig{Brokers: kc.Brokers(), Topics: cfg.Topics,
		Transport: kc.Transport(used...)})
	if err != nil {
		return err
	}
	defer producer.Close()

	// Rate limits: catalogue, database buckets, overrides cached and
	// invalidated through the changes topic.
	cat, err := catalogue(cfg)
	if err != nil {
		return err
	}
	buckets := ratelimit.NewDBStore(d)
	overrides := ratelimit.NewOverrideCache(ratelimit.NewOverrideStore(d, nil), 30*time.Second, nil)
	limiter := ratelimit.NewLimiter(ratelimit.LimiterConfig{Store: buckets, Catalogue: cat, Overrides: overrides})
	changes, err := changefeed.NewConsumer(changefeed.ConsumerConfig{Brokers: kc.Brokers(), Topic: cfg.Topics.RateLimitChanges,
		Dialer: kc.Dialer(), Transport: kc.Transport(topics.RateLimitChanges)}, overrides)
	if err != nil {
		return err
	}

	// ACME: one issuer per CA, HTTP-01 from the database (any worker serves
	// any worker's challenges), DNS-01 through the providers of
	// -dns01-config (or challtestsrv in tests).
	challenges := acmeissuer.NewChallengeStore(d, 15*time.Minute)
	hc, err := acmeissuer.NewHTTPClient(cfg.ACMETLSCA, 30*time.Second)
	if err != nil {
		return err
	}
	solvers := map[string]acmez.Solver{}
	var routed *acmeissuer.RoutedDNS01Solver
	for _, ct := range cfg.ChallengeTypes {
		switch {
		case ct == acme.ChallengeTypeHTTP01:
			solvers[ct] = acmeissuer.HTTP01Solver{Store: challenges}
		case ct == acme.ChallengeTypeDNS01 && cfg.DNS01ChallTest != "":
			solvers[ct] = &acmeissuer.DNS01Solver{Provider: &acmeissuer.ChallTestSrvDNS{URL: cfg.DNS01ChallTest}}
		case ct == acme.ChallengeTypeDNS01 && sec.dns01 != nil:
			// Records outlive the longest order; a crashed worker's are
			// removed once expired (below).
			routed = acmeissuer.NewRoutedDNS01Solver(sec.dns01, acmeissuer.NewDNS01Records(d, max(30*time.Minute, 3*cfg.OrderTimeout)))
			solvers[ct] = routed
		}
	}
	// New ACME accounts spend the CA's registration limits when the worker
	// knows the address the CA sees.
	var regs acmeissuer.RegistrationLimiter
	if cfg.EgressAddress.IsValid() {
		regs = registrations{limiter: limiter, catalogue: cat, egress: cfg.EgressAddress}
	}
	var cas []pipeline.CA
	for _, ca := range cfg.CAs {
		iss, err := acmeissuer.New(acmeissuer.Config{
			Directory: ca.Directory, DB: d, Sealer: keyring, Solvers: solvers, HTTPClient: hc,
			Profile: cfg.Profile, Logger: caLogger(log, ca.Name), EAB: sec.eab[ca.Name],
			AccountMode: cfg.AccountMode, Registrations: regs,
		})
		if err != nil {
			return fmt.Errorf("CA %s: %w", ca.Name, err)
		}
		cas = append(cas, pipeline.CA{CA: ca, Issuer: auditedIssuer{next: iss, ca: ca.Name, db: d.Pool(), log: log}, AccountKey: iss.AccountKey})
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := pipeline.NewMetrics(reg)
	// The CAs' circuit breaker, shared by the fleet through the database.
	var caNames []string
	for _, ca := range cfg.CAs {
		caNames = append(caNames, ca.Name)
	}
	breaker, err := cahealth.New(cahealth.Config{DB: d, Threshold: cfg.Breaker.Failures, Cooldown: cfg.Breaker.Cooldown,
		MaxCooldown: cfg.Breaker.MaxCooldown, Metrics: cahealth.NewMetrics(reg), CAs: caNames})
	if err != nil {
		return err
	}
	store := certstore.New(d)
	pcfg := pipeline.Config{
		Owner: cfg.Owner, Topics: cfg.Topics, Claims: store, Orders: store, Renewer: store, Previous: store, Tokens: limiter, Limits: cat,
		Parking: store, Booker: limiter, Lead: cfg.Lead, LaneSignals: lanesignal.New(d), FairShare: lanesignal.New(d),
		Writer: producer, Sealer: keyring, CAs: cas, Groups: cfg.CAGroups, Breaker: breaker, FailoverAfter: cfg.FailoverAfter,
		Concurrency: cfg.Concurrency, MaxPending: cfg.MaxPending,
		Lease: cfg.Lease, OrderTimeout: cfg.OrderTimeout, Logger: log, Metrics: metrics,
	}
	// Key delivery: each certificate's key sealed to its recipients (read
	// from the database for every certificate), and a backfill for
	// recipients added or rotated.
	var backfill *delivery.Backfill
	if cfg.DeliverKeys {
		recipients := delivery.NewStore(d)
		deliverer := &delivery.Deliverer{Recipients: recipients, Writer: producer, Topic: cfg.TopicDeliveries,
			Logger: log, Metrics: delivery.NewMetrics(reg)}
		pcfg.Delivery = deliverer
		backfill = &delivery.Backfill{Store: recipients, Certs: store, Sealer: keyring, Deliverer: deliverer, Owner: cfg.Owner}
	}
	worker, err := pipeline.New(pcfg)
	if err != nil {
		return err
	}
	reader := kafka.NewReader(kafka.ReaderConfig{
		Brokers: kc.Brokers(), Dialer: kc.Dialer(), GroupID: cfg.Group, GroupTopics: []string{cfg.Topics.Requests, cfg.Topics.Retry},
		StartOffset: kafka.FirstOffset, MaxWait: 250 * time.Millisecond,
		// A dead worker's partitions wait for its session to expire, and a
		// rebalance for every member to rejoin: both bounded by the session.
		SessionTimeout: cfg.SessionTimeout, RebalanceTimeout: cfg.SessionTimeout, HeartbeatInterval: cfg.SessionTimeout / 10,
	})

	// Background parts end with bg; the HTTP servers last until the end.
	bg, stopBg := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBg()
	go func() {
		if err := changes.Run(bg); err != nil && bg.Err() == nil {
			log.Error("override change consumer stopped", "err", err)
		}
	}()
	if backfill != nil {
		go backfill.Run(bg)
	}
	// Requests parked until their slot (or another owner's lease, or a far
	// not_before) go back to the retry topic when due; every worker relays.
	parked := &pipeline.ParkRelay{Source: store, Writer: producer, Topic: cfg.Topics.Retry, Owner: cfg.Owner, Logger: log}
	go parked.Run(bg)
	if cfg.Relay {
		relay := ratelimit.NewRelay(d, changefeed.NewPublisher(producer, cfg.Topics.RateLimitChanges))
		go relay.Run(bg, 200*time.Millisecond, func(err error) { log.Warn("override outbox relay", "err", err) })
	}
	go func() {
		// Each CA's breaker state in the metrics, also while no job asks.
		for bg.Err() == nil {
			if err := breaker.Refresh(bg); err != nil && bg.Err() == nil {
				log.Warn("reading the CAs' breakers", "err", err)
			}
			select {
			case <-bg.Done():
			case <-time.After(5 * time.Second):
			}
		}
	}()
	go func() {
		for bg.Err() == nil {
			metrics.ConsumerLag.Set(float64(reader.Stats().Lag))
			select {
			case <-bg.Done():
			case <-time.After(5 * time.Second):
			}
		}
	}()
	go func() {
		for bg.Err() == nil {
			if _, err := challenges.DeleteExpired(bg); err != nil && bg.Err() == nil {
				log.Warn("deleting expired challenges", "err", err)
			}
			if routed != nil {
				if n, err := routed.RemoveExpired(bg, 100); err != nil && bg.Err() == nil {
					log.Warn("removing expired dns-01 records", "removed", n, "err", err)
				} else if n > 0 {
					log.Info("removed dns-01 records a previous order left", "removed", n)
				}
			}
			select {
			case <-bg.Done():
			case <-time.After(time.Minute):
			}
		}
	}()

	ops := http.NewServeMux()
	ops.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ops.HandleFunc("/healthz", healthz(worker, cfg.StallTimeout))
	ops.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := ready(r.Context(), d, kc.Brokers()); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	servers := []*http.Server{{Addr: cfg.Listen, Handler: ops, ReadHeaderTimeout: 5 * time.Second}}
	if cfg.HTTP01Listen != "" {
		// Internet-facing: read, write and idle timeouts and a header cap.
		servers = append(servers, acmeissuer.NewHTTP01Server(cfg.HTTP01Listen, acmeissuer.HTTP01Handler(challenges, http.NotFoundHandler())))
	}
	for _, srv := range servers {
		l, err := net.Listen("tcp", srv.Addr)
		if err != nil {
			return fmt.Errorf("listening on %s: %w", srv.Addr, err)
		}
		go srv.Serve(l)
		defer srv.Close()
	}
	log.Info("issuer-worker running", "owner", cfg.Owner, "group", cfg.Group, "cas", len(cas), "concurrency", cfg.Concurrency, "listen", cfg.Listen,
		"deliver_keys", cfg.DeliverKeys)

	runErr := worker.Run(ctx, reader, cfg.ShutdownTimeout)
	// Orders are done or handed back: stop the rest, leave the group.
	stopBg()
	if err := reader.Close(); err != nil {
		log.Warn("closing the Kafka reader", "err", err)
	}
	return runErr
}

func loadKeyring(cfg config) (*seal.Keyring, error) {
	if cfg.SealKeysFile != "" {
		return seal.LoadKeyringFile(cfg.SealKeysFile)
	}
	return seal.LoadKeyringEnv(seal.EnvKeyring)
}

// catalogue is the limits file's catalogue (ratelimit.ServingCatalogue),
// plus Let's Encrypt's limits for every configured CA the file does not list
// (keyed by the CA's name). A file naming a directory no -ca entry orders
// from is refused.
func catalogue(cfg config) (*ratelimit.Catalogue, error) {
	cat, err := ratelimit.ServingCatalogue(cfg.LimitsFile, caconfig.LimitsView(cfg.CAs)...)
	if err != nil {
		return nil, fmt.Errorf("-limits: %w", err)
	}
	return cat, nil
}

// ready: the database answers and a Kafka broker accepts connections.
func ready(ctx context.Context, d *db.DB, brokers []string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := d.Pool().Ping(ctx); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	var dl net.Dialer
	c, err := dl.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	return c.Close()
}
