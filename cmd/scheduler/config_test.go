package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/retention"
)

func TestParseConfig(t *testing.T) {
	env := map[string]string{"CERTFLEET_KAFKA_BROKERS": "127.0.0.1:9092", "CERTFLEET_DATABASE_URL": "postgres://x@127.0.0.1/db"}
	getenv := func(k string) string { return env[k] }
	c, err := parseConfig(nil, getenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Budget != (ratelimit.Limit{Count: 10, Period: time.Second, Burst: 10}) || c.TickInterval != 5*time.Second || !c.ARI ||
		c.ARIRecheckMin != time.Minute || c.ARIRecheckMax != 24*time.Hour {
		t.Errorf("defaults: %+v", c)
	}
	if c.Retention.Ages != retention.DefaultAges() || c.Retention.Interval != time.Hour || c.Retention.Batch != 500 {
		t.Errorf("retention defaults: %+v; want retention.DefaultAges, every hour, batches of 500", *c.Retention)
	}
	c, err = parseConfig([]string{"-budget", "300/1m/50", "-ca", "pebble=https://127.0.0.1:14000/dir"}, getenv, io.Discard)
	if err != nil || c.Budget != (ratelimit.Limit{Count: 300, Period: time.Minute, Burst: 50}) || c.CAs["pebble"] == "" {
		t.Fatalf("%+v %v", c, err)
	}
	if len(c.Names.AllowedSpecialUse) != 0 {
		t.Errorf("default names policy %s; want strict", c.Names)
	}
	if c, err := parseConfig([]string{"-allow-special-names", "test"}, getenv, io.Discard); err != nil || c.Names.String() != "strict but for .test" {
		t.Fatalf("-allow-special-names test: %s, %v", c.Names, err)
	}
	if _, err := parseConfig([]string{"-allow-special-names", "org"}, getenv, io.Discard); err == nil || !strings.Contains(err.Error(), "-allow-special-names:") {
		t.Fatalf("-allow-special-names org: %v; want refused", err)
	}
	// Tests shorten the ARI re-check below Pebble's fixed 6 h Retry-After.
	c, err = parseConfig([]string{"-ari-recheck-min", "1s", "-ari-recheck-max", "2s"}, getenv, io.Discard)
	if err != nil || c.ARIRecheckMin != time.Second || c.ARIRecheckMax != 2*time.Second {
		t.Fatalf("%+v %v", c, err)
	}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want []string
	}{
		{nil, map[string]string{}, []string{"-kafka-brokers: required", "-database-url: required"}},
		{[]string{"-brokers", "nohost"}, nil, []string{`-kafka-brokers: "nohost" is not host:port`}},
		{[]string{"-kafka-tls-cert", "/c.pem", "-kafka-tls-key", "/k.pem"}, nil, []string{"-kafka-tls-cert: needs -kafka-tls"}},
		{[]string{"-kafka-tls", "-kafka-sasl-mechanism", "scram-sha-512", "-kafka-sasl-user", "scheduler", "-kafka-sasl-password-file", "/nonexistent"}, nil,
			[]string{"-kafka-sasl-password-file", "/nonexistent"}},
		{[]string{"-database-url", "postgres://x@db.example.com/db"}, nil, []string{"-database-url", "sslmode=verify-full"}},
		{[]string{"-budget", "ten"}, nil, []string{"-budget:"}},
		{[]string{"-budget", "0/1s"}, nil, []string{"-budget:"}},
		{[]string{"-tick-interval", "1ms"}, nil, []string{"-tick-interval:"}},
		{[]string{"-tick-interval", "1m", "-lease-ttl", "10s"}, nil, []string{"-tick-interval: 1m0s is longer than -lease-ttl"}},
		{[]string{"-batch-size", "0"}, nil, []string{"-batch-size:"}},
		{[]string{"-ari-recheck-max", "30s"}, nil, []string{"-ari-recheck-max: 30s is below -ari-recheck-min 1m0s"}},
		{[]string{"-ari-recheck-min", "10ms"}, nil, []string{"-ari-recheck-min: 10ms is below 1s"}},
		{[]string{"-ca", "x=http://a/dir"}, nil, []string{"-ca:"}},
		{[]string{"-ca", "nodir"}, nil, []string{"-ca"}},
		{[]string{"-retention-ended-requests", "168h"}, nil, []string{"-retention-*:", "Ages.EndedRequests 168h0m0s is below"}},
		{nil, map[string]string{"CERTFLEET_RETENTION_KEY_GRACE": "9700h"}, []string{"Ages.ExpiredCerts 9600h0m0s is below Ages.KeyGrace 9700h0m0s"}},
		{[]string{"-retention-batch", "0"}, nil, []string{"-retention-batch: 0 is not between 1 and 10000"}},
		{[]string{"-log-level", "loud"}, nil, []string{"-log-level:"}},
		{[]string{"-listen", "9091"}, nil, []string{"-listen:"}},
		{[]string{"-budget-ca", "https://unknown.example/dir"}, nil, []string{"-budget-ca:"}},
		{[]string{"-limits", "/nonexistent.json"}, nil, []string{"-limits:"}},
		{nil, map[string]string{"CERTFLEET_TICK_INTERVAL": "soon"}, []string{"CERTFLEET_TICK_INTERVAL"}},
		{[]string{"extra"}, nil, []string{"unexpected argument"}},
	} {
		e := env
		if tc.env != nil {
			e = map[string]string{}
			for k, v := range env {
				e[k] = v
			}
			if len(tc.env) == 0 {
				e = tc.env
			}
			for k, v := range tc.env {
				e[k] = v
			}
		}
		_, err := parseConfig(tc.args, func(k string) string { return e[k] }, io.Discard)
		if err == nil {
			t.Errorf("%v: accepted", tc.args)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q does not mention %q", tc.args, err, w)
			}
		}
	}
}
