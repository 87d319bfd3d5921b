package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/delivery"
	"github.com/certfleet/certfleet/delivery/agent"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/secretfile"
)

const agentAbout = `Runs the edge agent: reads the delivery topic as its own consumer group,
opens the keys sealed to --recipient-key (those of --tenant only, if given),
and keeps each certificate's newest valid pair in --dir as NAME.crt (the
chain) and NAME.key (mode 0600), NAME being the first SAN in sorted order
that is not a wildcard. Files are replaced atomically; an older or the same
certificate writes nothing, so a restart rewrites no file. After a batch
that changed pairs it runs --exec with sh -c (CERTFLEET_AGENT_DIR and
CERTFLEET_AGENT_CHANGED, the names written, in its environment), then
commits. It follows the events topic to notice a newer certificate whose key
has not arrived. /metrics on --listen: pairs held, expiring soon, each
pair's expiry, keys awaited, deliveries by result, hook runs. Runs until
SIGINT or SIGTERM.`

func agentCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const cmd = "agent"
	fs := newFlagSet(cmd, "--recipient-key FILE --dir DIR [--tenant T] [--exec CMD] [flags]", agentAbout)
	keyFile := fs.String("recipient-key", "", "the recipient's private key file from 'certfleet recipient keygen' (mode 0600; required)")
	dir := fs.String("dir", "", "directory of NAME.crt and NAME.key (created 0700; required)")
	tenant := fs.String("tenant", "", "keep only certificates of this tenant")
	execCmd := fs.String("exec", "", "command run (sh -c) after a batch that changed pairs, e.g. 'nginx -s reload'")
	group := fs.String("group", "", "consumer group; default certfleet-agent-HOST-<hash of the key and --dir>, so a restart resumes where it stopped")
	listen := fs.String("listen", "127.0.0.1:9465", "address of /metrics and /healthz; empty: none")
	expiring := fs.Duration("expiring-within", 0, "a pair 'expires soon' with less than this left; 0: less than a third of its lifetime")
	kf := addKafkaFlags(fs)
	var deliveries string
	kf.env.String(&deliveries, "topic-deliveries", "CERTFLEET_TOPIC_DELIVERIES", delivery.DefaultTopic, "key delivery topic")
	if err := parseEnvFlags(fs, kf.env, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: %s: unexpected argument %q", errUsage, cmd, fs.Arg(0))
	}
	if *keyFile == "" || *dir == "" {
		return fmt.Errorf("%w: %s: --recipient-key and --dir are required", errUsage, cmd)
	}
	if *listen != "" {
		if _, _, err := net.SplitHostPort(*listen); err != nil {
			return fmt.Errorf("%w: %s: --listen %q is not host:port", errUsage, cmd, *listen)
		}
	}
	pemKey, err := secretfile.Read(*keyFile)
	if err != nil {
		return fmt.Errorf("%w: %s: --recipient-key: %v", errUsage, cmd, err)
	}
	key, err := delivery.ParsePrivateKeyPEM(pemKey)
	clear(pemKey)
	if err != nil {
		return fmt.Errorf("%w: %s: --recipient-key %s: %v", errUsage, cmd, *keyFile, err)
	}
	absDir, err := filepath.Abs(*dir)
	if err != nil {
		return fmt.Errorf("%w: %s: --dir: %v", errUsage, cmd, err)
	}
	if *group == "" {
		host, _ := os.Hostname()
		sum := sha256.Sum256([]byte(key.Public().KeyID() + "\n" + absDir))
		*group = "certfleet-agent-" + host + "-" + hex.EncodeToString(sum[:6])
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	a, err := agent.New(agent.Config{Key: key, Dir: absDir, Tenant: *tenant, Exec: *execCmd, ExpiringWithin: *expiring, Logger: log})
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	conn, err := kf.connect(ctx, cmd, deliveries, kf.topics.Events)
	if err != nil {
		return err
	}
	defer conn.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(a, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if *listen != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		l, err := net.Listen("tcp", *listen)
		if err != nil {
			return fmt.Errorf("%s: --listen: %w", cmd, err)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(l)
		defer srv.Close()
	}
	// The events topic from its end, without a group: only to notice a
	// newer certificate for a name held whose key has not come.
	evs, err := events.Follow(ctx, conn.DialerContext(ctx), conn.Brokers(), kf.topics.Events)
	if err != nil {
		return fmt.Errorf("%s: following %s: %w", cmd, kf.topics.Events, conn.Explain(err, "read "+kf.topics.Events))
	}
	go a.Events(evs)
	reader := conn.NewReader(kafka.ReaderConfig{
		GroupID: *group, GroupTopics: []string{deliveries},
		StartOffset: kafka.FirstOffset, MaxWait: 250 * time.Millisecond,
		SessionTimeout: 10 * time.Second, RebalanceTimeout: 10 * time.Second, HeartbeatInterval: time.Second,
	})
	log.Info("agent running", "dir", absDir, "tenant", *tenant, "group", *group, "topic", deliveries, "kafka", conn.String(), "listen", *listen)
	err = a.Run(ctx, reader)
	cerr := reader.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if cerr != nil && !errors.Is(cerr, context.Canceled) {
		log.Warn("closing the Kafka reader", "err", cerr)
	}
	log.Info("agent stopped")
	return nil
}
