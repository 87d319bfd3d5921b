package events

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/internal/envflag"
	"github.com/certfleet/certfleet/testenv"
)

func TestSpecsWith(t *testing.T) {
	tp := DefaultTopics()
	specs := tp.SpecsWith(ProvisionOptions{Partitions: 12, ReplicationFactor: 3, MinInsyncReplicas: 2})
	if len(specs) != 5 {
		t.Fatalf("%d specs", len(specs))
	}
	for _, s := range specs {
		if s.Partitions != 12 || s.ReplicationFactor != 3 || s.Configs["min.insync.replicas"] != "2" {
			t.Errorf("%s: %+v", s.Name, s)
		}
		want := map[string]string{tp.Retry: "1209600000", tp.DLQ: "2592000000"}[s.Name]
		if s.Configs["retention.ms"] != want {
			t.Errorf("%s: retention.ms %q, want %q", s.Name, s.Configs["retention.ms"], want)
		}
	}
	specs = tp.SpecsWith(ProvisionOptions{Partitions: 1, ReplicationFactor: 1, RetryRetention: 2 * time.Hour, DLQRetention: 3 * time.Hour})
	for _, s := range specs {
		if _, ok := s.Configs["min.insync.replicas"]; ok {
			t.Errorf("%s: min.insync.replicas set without being asked", s.Name)
		}
		want := map[string]string{tp.Retry: "7200000", tp.DLQ: "10800000"}[s.Name]
		if s.Configs["retention.ms"] != want {
			t.Errorf("%s: retention.ms %q, want %q", s.Name, s.Configs["retention.ms"], want)
		}
	}
}

func TestProvisionOptionsValidate(t *testing.T) {
	if err := (ProvisionOptions{Partitions: 12, ReplicationFactor: 3, MinInsyncReplicas: 2}).Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		o    ProvisionOptions
		want string
	}{
		{ProvisionOptions{Partitions: 0, ReplicationFactor: 1}, "partitions 0"},
		{ProvisionOptions{Partitions: 1, ReplicationFactor: 0}, "replication factor 0"},
		{ProvisionOptions{Partitions: 1, ReplicationFactor: 1, MinInsyncReplicas: 2}, "min.insync.replicas 2"},
		{ProvisionOptions{Partitions: 1, ReplicationFactor: 1, DLQRetention: time.Minute}, "at least 1h"},
	} {
		if err := tc.o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.o, err, tc.want)
		}
	}
}

// The configs reach the broker: min.insync.replicas on every topic and the
// explicit retention of the retry and dead-letter topics.
func TestProvisionSetsTopicConfigs(t *testing.T) {
	s := testenv.Require(t)
	b := make([]byte, 4)
	rand.Read(b)
	suffix := ".configs." + hex.EncodeToString(b)
	d := DefaultTopics()
	tp := Topics{Requests: d.Requests + suffix, Retry: d.Retry + suffix, DLQ: d.DLQ + suffix, Events: d.Events + suffix,
		RateLimitChanges: d.RateLimitChanges + suffix}
	client := &kafka.Client{Addr: kafka.TCP(s.KafkaBrokers...), Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t.Cleanup(func() { _, _ = client.DeleteTopics(context.Background(), &kafka.DeleteTopicsRequest{Topics: tp.All()}) })
	if err := Provision(ctx, client, tp.SpecsWith(ProvisionOptions{Partitions: 2, ReplicationFactor: 1, MinInsyncReplicas: 1,
		RetryRetention: 2 * time.Hour})...); err != nil {
		t.Fatal(err)
	}
	var res []kafka.DescribeConfigRequestResource
	for _, name := range tp.All() {
		res = append(res, kafka.DescribeConfigRequestResource{ResourceType: kafka.ResourceTypeTopic, ResourceName: name,
			ConfigNames: []string{"min.insync.replicas", "retention.ms"}})
	}
	resp, err := client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: res})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{tp.Retry: "7200000", tp.DLQ: "2592000000"}
	for _, r := range resp.Resources {
		got := map[string]string{}
		for _, e := range r.ConfigEntries {
			got[e.ConfigName] = e.ConfigValue
		}
		if got["min.insync.replicas"] != "1" {
			t.Errorf("%s: min.insync.replicas %q", r.ResourceName, got["min.insync.replicas"])
		}
		if w, ok := want[r.ResourceName]; ok && got["retention.ms"] != w {
			t.Errorf("%s: retention.ms %q, want %s", r.ResourceName, got["retention.ms"], w)
		}
	}
}

func TestRegisterProvisionFlags(t *testing.T) {
	parse := func(args []string, env map[string]string) (*ProvisionOptions, error) {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		s := envflag.New(fs, func(k string) string { return env[k] })
		o := RegisterProvisionFlags(s)
		return o, s.Parse(args)
	}
	o, err := parse(nil, nil)
	if err != nil || *o != (ProvisionOptions{Partitions: 12, ReplicationFactor: 3, MinInsyncReplicas: 2,
		RetryRetention: DefaultRetryRetention, DLQRetention: DefaultDLQRetention}) {
		t.Fatalf("defaults (production): %+v, %v", o, err)
	}
	env := map[string]string{"CERTFLEET_TOPIC_REPLICATION_FACTOR": "1", "CERTFLEET_TOPIC_MIN_INSYNC_REPLICAS": "1", "CERTFLEET_PARTITIONS": "4"}
	o, err = parse(nil, env)
	if err != nil || o.ReplicationFactor != 1 || o.MinInsyncReplicas != 1 || o.Partitions != 4 {
		t.Fatalf("testenv's values from the environment: %+v, %v", o, err)
	}
	o, err = parse([]string{"-replication-factor", "5", "-dlq-retention", "48h"}, env)
	if err != nil || o.ReplicationFactor != 5 || o.DLQRetention != 48*time.Hour || o.Validate() != nil {
		t.Fatalf("flags over the environment: %+v, %v", o, err)
	}
}
