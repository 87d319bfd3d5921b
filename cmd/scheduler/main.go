// Command scheduler keeps managed certificates valid: while it holds the
// leader lease it emits due renewal jobs to Kafka, and every instance
// (leader or standby) records certificate outcomes from the events topic and
// plans the next renewal. Run two or more for availability; see package
// scheduler, and -h for the configuration (flags, each with an environment
// fallback).
//
// Exit status: 0 after a clean shutdown (SIGTERM/SIGINT), 1 on a runtime
// failure, 2 on bad configuration.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/names"
	"github.com/certfleet/certfleet/scheduler"
)

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "scheduler: configuration:", err)
		os.Exit(2)
	}
	log := newLogger(cfg.LogLevel)
	if err := names.SetProcessPolicy(cfg.Names); err != nil { // checked by parseConfig already
		fmt.Fprintln(os.Stderr, "scheduler: configuration: -allow-special-names:", err)
		os.Exit(2)
	}
	if len(cfg.Names.AllowedSpecialUse) > 0 {
		log.Warn("names under special-use TLDs are accepted (-allow-special-names): for a lab CA only", "names_policy", cfg.Names.String())
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, cfg, log, nil); err != nil {
		log.Error("scheduler stopped", "err", err)
		os.Exit(1)
	}
	log.Info("scheduler stopped cleanly")
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

// run builds the parts and runs them until ctx ends, then shuts down in
// order: stop ticking and release the lease (a standby takes over at once),
// finish the event in hand and commit offsets, stop serving, close writers.
// listening, when not nil, receives the HTTP address once it is bound.
func run(ctx context.Context, cfg config, log *slog.Logger, listening chan<- string) error {
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	d, err := db.Open(octx, cfg.db)
	cancel()
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer d.Close()
	topics := cfg.Topics.WithDefaults()
	kc := cfg.kafka
	defer kc.Close()
	// An untrusted certificate, a wrong password, a missing ACL or a silent
	// broker ends the scheduler here, named, within -kafka-timeout.
	if err := kc.Check(ctx, topics.Requests, topics.Events, topics.DLQ); err != nil {
		return err
	}
	producer, err := events.NewProducer(events.ProducerConfig{Brokers: kc.Brokers(), Topics: topics, BatchSize: cfg.BatchSize,
		Transport: kc.Transport(topics.Requests, topics.DLQ)})
	if err != nil {
		return fmt.Errorf("kafka producer: %w", err)
	}
	defer producer.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := scheduler.NewMetrics(reg)
	var ari *scheduler.ARIClient
	if cfg.ARI {
		hc, err := acmeissuer.NewHTTPClient(cfg.ACMETLSCA, 15*time.Second)
		if err != nil {
			return err
		}
		ari = &scheduler.ARIClient{HTTP: hc, Directories: cfg.CAs}
	}
	sched, err := scheduler.New(scheduler.Config{
		DB: d, Writer: producer, Holder: cfg.Holder, Topics: topics, Budget: cfg.Budget, Horizon: cfg.Horizon,
		TickInterval: cfg.TickInterval, BatchSize: cfg.BatchSize, Watchdog: cfg.Watchdog, LeaseTTL: cfg.LeaseTTL,
		Policy: scheduler.Policy{ARIRecheckMin: cfg.ARIRecheckMin, ARIRecheckMax: cfg.ARIRecheckMax},
		ARI:    ari, Logger: log, Metrics: metrics,
	})
	if err != nil {
		return err
	}
	sub, err := events.NewSubscriber(events.SubscriberConfig{
		Brokers: kc.Brokers(), Dialer: kc.Dialer(), GroupID: cfg.Group, Topics: []string{topics.Events},
		DeadLetter: producer, DeadLetterTopic: topics.DLQ, Logger: log,
		// No dedupe by ce_id: ids are predictable (UUIDv5 of the request id)
		// and anyone who may write the topic may send one, so a forged record
		// would make the window skip the genuine outcome with the same id, for
		// as long as its re-publications keep the id in the window. The
		// handler is idempotent (every update is conditional), which is all
		// the window saved work for.
		DedupeWindow: -1,
	})
	if err != nil {
		return fmt.Errorf("kafka subscriber: %w", err)
	}
	// Every record the scheduler gives up on: undecodable, refused as not what
	// a worker stored (certfleet_scheduler_events_refused_total says which),
	// or failing past its attempts.
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "certfleet_scheduler_events_dead_lettered_total",
		Help: "Certificate events written to the dead-letter topic by this scheduler's subscriber.",
	}, func() float64 { return float64(sub.Stats().DeadLettered) }))

	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !sched.Ready() {
			http.Error(w, "not ready: the database has not answered the lease yet", http.StatusServiceUnavailable)
			return
		}
		role := "standby"
		if sched.Lease().Held {
			role = "leader"
		}
		fmt.Fprintln(w, "ready:", role)
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	if listening != nil {
		listening <- ln.Addr().String()
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "err", err)
		}
	}()
	log.Info("scheduler started", "holder", cfg.Holder, "budget", cfg.Budget.String(), "listen", ln.Addr().String())

	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	// The retention job, leader-only on its own lease (-retention-*).
	retentionDone, err := startRetention(runCtx, d, cfg.Holder, cfg.Retention, log, reg)
	if err != nil {
		return err
	}
	// The subscriber runs on its own context: at shutdown it is stopped with
	// Shutdown (finish the event in hand, commit, leave the group) rather
	// than by cancellation, which would leave the record in hand uncommitted.
	subErr := make(chan error, 1)
	go func() { subErr <- sub.Run(context.Background(), sched.Handle) }()
	schedErr := make(chan error, 1)
	go func() { schedErr <- sched.Run(runCtx) }()

	var runErr error
	subDone := false
	select {
	case <-ctx.Done():
	case runErr = <-subErr:
		subDone = true
		runErr = fmt.Errorf("event subscriber: %w", runErr)
	}
	log.Info("shutting down")
	sctx, cancelS := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancelS()
	stopRun() // stop ticking and release the lease: a standby takes over now
	if err := <-schedErr; err != nil {
		log.Warn("scheduler run", "err", err)
	}
	<-retentionDone
	if err := sub.Shutdown(sctx); err != nil {
		log.Warn("subscriber shutdown", "err", err)
	}
	if !subDone {
		if err := <-subErr; err != nil {
			log.Warn("subscriber run", "err", err)
		}
	}
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	return runErr
}
