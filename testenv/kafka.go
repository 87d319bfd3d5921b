package testenv

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
)

// Apache Kafka in KRaft mode (one process is broker and controller), from
// the Maven Central jars resolved by kafka/pom.xml.
const (
	kafkaHeap  = "512m"
	readyTopic = "certfleet.testenv.ready"
)

var (
	kafkaAddr           = addr(19092) // PLAINTEXT, open to everyone (quick tests)
	kafkaControllerAddr = addr(19093)
	kafkaSASLAddr       = addr(19094) // SASL_SSL: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
	kafkaMTLSAddr       = addr(19095) // SSL with a required client certificate
)

// kafkaConfigVersion names the broker configuration. A Kafka left running
// with another version (its pid file holds the config path) is restarted on
// fresh storage by `testenv up`: SCRAM users are created at format time.
const kafkaConfigVersion = "v2-sasl-acl"

//go:embed kafka/pom.xml
var kafkaPOM []byte

// installKafka resolves the broker's jars into the cache, once per pom
// content (changing the Kafka version in the pom makes a new cache entry).
func installKafka(ctx context.Context, cache string) (string, error) {
	sum := sha256.Sum256(kafkaPOM)
	dir := filepath.Join(cache, "kafka-"+hex.EncodeToString(sum[:6]))
	libs := filepath.Join(dir, "libs")
	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		return libs, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "pom.xml"), kafkaPOM, 0o644); err != nil {
		return "", err
	}
	os.RemoveAll(libs)
	mvn, err := exec.LookPath("mvn")
	if err != nil {
		return "", errors.New("testenv: Maven (mvn) is not on PATH; install it (apt-get install maven) to fetch the Kafka jars")
	}
	cmd := exec.CommandContext(ctx, mvn, "-B", "-q", "dependency:copy-dependencies", "-DincludeScope=runtime", "-DoutputDirectory="+libs)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("testenv: resolving Kafka jars with Maven: %w\n%s", err, out)
	}
	return libs, os.WriteFile(filepath.Join(dir, "complete"), nil, 0o644)
}

func kafkaProc(dir string) proc {
	return proc{name: "kafka", dir: dir, marker: filepath.Join(dir, "kafka", "server-"+kafkaConfigVersion+".properties")}
}

// startKafka formats storage under data unless it already holds a formatted
// log (a restart), and launches the broker.
func startKafka(ctx context.Context, p proc, libs, data string) error {
	confDir := filepath.Join(p.dir, "kafka")
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return err
	}
	k, err := ensurePKI(p.dir)
	if err != nil {
		return err
	}
	// PLAIN checks passwords listed in its JAAS line; SCRAM users are
	// created in the metadata log when the storage is formatted.
	plain := "org.apache.kafka.common.security.plain.PlainLoginModule required"
	var scram []string
	for _, pr := range principals {
		pw, err := k.password(pr)
		if err != nil {
			return err
		}
		plain += fmt.Sprintf(" user_%s=%q", pr, pw)
		for _, mech := range []string{"SCRAM-SHA-256", "SCRAM-SHA-512"} {
			scram = append(scram, "--add-scram", fmt.Sprintf("%s=[name=%s,password=%s]", mech, pr, pw))
		}
	}
	props := fmt.Sprintf(`# written by certfleet testenv
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@%[2]s
listeners=PLAINTEXT://%[1]s,CONTROLLER://%[2]s,SASL_SSL://%[4]s,SSL://%[5]s
advertised.listeners=PLAINTEXT://%[1]s,SASL_SSL://%[4]s,SSL://%[5]s
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
inter.broker.listener.name=PLAINTEXT
# Production-shaped listeners: TLS from the testenv CA, SASL or client
# certificates, ACLs through KRaft's StandardAuthorizer. The PLAINTEXT and
# CONTROLLER listeners authenticate nobody (principal ANONYMOUS), which is a
# super user: the loopback listener stays open for quick tests and admin.
ssl.keystore.type=PEM
ssl.keystore.location=%[6]s
ssl.truststore.type=PEM
ssl.truststore.location=%[7]s
listener.name.ssl.ssl.client.auth=required
ssl.principal.mapping.rules=RULE:^CN=([^,]+).*$/$1/,DEFAULT
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=%[8]s;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS;User:%[9]s
allow.everyone.if.no.acl.found=false
log.dirs=%[3]s
num.partitions=1
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
log.flush.interval.messages=9223372036854775807
`, kafkaAddr, kafkaControllerAddr, data, kafkaSASLAddr, kafkaMTLSAddr, k.kafkaKeystore, k.caPath, plain, PrincipalAdmin)
	conf := p.marker
	if err := os.WriteFile(conf, []byte(props), 0o600); err != nil {
		return err
	}
	java, err := exec.LookPath("java")
	if err != nil {
		return errors.New("testenv: java is not on PATH; install a JDK 17 (apt-get install openjdk-17-jre-headless)")
	}
	cp := filepath.Join(libs, "*")
	// Storage that is already formatted is a restart (Restart): keep it.
	if _, err := os.Stat(filepath.Join(data, "meta.properties")); err != nil {
		args := append([]string{"-cp", cp, "kafka.tools.StorageTool", "format", "-t", clusterID(), "-c", conf}, scram...)
		format := exec.CommandContext(ctx, java, args...)
		if out, err := format.CombinedOutput(); err != nil {
			return fmt.Errorf("testenv: formatting Kafka storage: %w\n%s", err, out)
		}
	}
	cmd := exec.Command(java, "-Xmx"+kafkaHeap, "-Xms128m", "-XX:+UseSerialGC",
		"-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", cp, "kafka.Kafka", conf)
	return p.start(cmd)
}

// clusterID is a random Kafka cluster id (a base64url UUID without padding)
// that does not start with '-': StorageTool's argument parser takes "-t
// -abc..." for a missing value and an unknown option (one format in 64
// failed so; Kafka's own Uuid.randomUuid avoids it the same way).
func clusterID() string {
	b := make([]byte, 16)
	for {
		_, _ = rand.Read(b)
		if id := base64.RawURLEncoding.EncodeToString(b); id[0] != '-' {
			return id
		}
	}
}

// kafkaReady means a consumer group can join and commit, not merely that the
// port is open: for about a second after start the group coordinator answers
// "Group Coordinator Not Available".
func kafkaReady(ctx context.Context) error {
	if err := CreateTopic(ctx, []string{kafkaAddr}, readyTopic, 1); err != nil {
		return err
	}
	w := &kafka.Writer{Addr: kafka.TCP(kafkaAddr), Topic: readyTopic, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(ctx, kafka.Message{Value: []byte("ready")}); err != nil {
		return fmt.Errorf("producing: %w", err)
	}
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: []string{kafkaAddr}, Topic: readyTopic, GroupID: "certfleet-testenv-ready",
		StartOffset: kafka.FirstOffset, MaxWait: 100 * time.Millisecond,
	})
	defer r.Close()
	m, err := r.FetchMessage(ctx)
	if err != nil {
		return fmt.Errorf("consuming in a group: %w", err)
	}
	if err := r.CommitMessages(ctx, m); err != nil {
		return fmt.Errorf("committing: %w", err)
	}
	return nil
}

// CreateTopic creates a topic with the given partitions (replication 1) on
// the controller; an existing topic is not an error. Tests use it because the
// stack disables automatic topic creation.
func CreateTopic(ctx context.Context, brokers []string, topic string, partitions int) error {
	var d kafka.Dialer
	conn, err := d.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		return fmt.Errorf("testenv: dialing Kafka: %w", err)
	}
	defer conn.Close()
	ctrl, err := conn.Controller()
	if err != nil {
		return fmt.Errorf("testenv: finding the Kafka controller: %w", err)
	}
	cc, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ctrl.Host, strconv.Itoa(ctrl.Port)))
	if err != nil {
		return fmt.Errorf("testenv: dialing the Kafka controller: %w", err)
	}
	defer cc.Close()
	err = cc.CreateTopics(kafka.TopicConfig{Topic: topic, NumPartitions: partitions, ReplicationFactor: 1})
	if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
		return fmt.Errorf("testenv: creating topic %s: %w", topic, err)
	}
	// The controller answers before the broker knows the partitions' leaders;
	// a producer right after would get "Unknown Topic Or Partition". Wait
	// until the broker's metadata shows every partition with a leader.
	for {
		parts, err := conn.ReadPartitions(topic)
		led := 0
		for _, p := range parts {
			if p.Leader.ID >= 0 && p.Leader.Host != "" {
				led++
			}
		}
		if err == nil && led >= partitions {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testenv: topic %s created but %d of %d partitions have a leader (%v): %w", topic, led, partitions, err, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
