package main

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/certfleet/certfleet/retention"
)

// Two schedulers run the retention job on the scheduler's lease protocol
// (lease row "retention"): the idle buckets go, one holder owns the lease
// while they run, and stopping releases it so a standby need not wait.
func TestRetentionJobOnTheLease(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, d := migratedDatabase(t, ctx)
	old := time.Now().Add(-48 * time.Hour)
	for i := range 5 {
		if _, err := d.Pool().Exec(ctx, `INSERT INTO ratelimit_buckets (bucket_key, tat_ns, updated_at) VALUES ($1, $2, $3)`,
			fmt.Sprintf("idle-%d", i), old.UnixNano(), old); err != nil {
			t.Fatal(err)
		}
	}
	rc := &retentionConfig{Ages: retention.DefaultAges(), Interval: time.Hour, Batch: 2, LeaseTTL: time.Minute}
	runCtx, stop := context.WithCancel(ctx)
	var dones []<-chan struct{}
	for _, holder := range []string{"sched-a", "sched-b"} {
		done, err := startRetention(runCtx, d, holder, rc, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		dones = append(dones, done)
	}
	for {
		var left int
		if err := d.Pool().QueryRow(ctx, `SELECT count(*) FROM ratelimit_buckets`).Scan(&left); err != nil {
			t.Fatal(err)
		}
		if left == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d idle buckets left", left)
		case <-time.After(50 * time.Millisecond):
		}
	}
	var holder string
	if err := d.Pool().QueryRow(ctx, `SELECT holder FROM leases WHERE name = 'retention' AND expires_at > now()`).Scan(&holder); err != nil {
		t.Fatalf("no live retention lease while the job ran: %v", err)
	}
	if holder != "sched-a" && holder != "sched-b" {
		t.Fatalf("retention lease held by %q", holder)
	}
	stop()
	for _, done := range dones {
		<-done
	}
	var live bool
	if err := d.Pool().QueryRow(ctx, `SELECT expires_at > now() FROM leases WHERE name = 'retention'`).Scan(&live); err != nil || live {
		t.Fatalf("retention lease still live after both stopped (%v)", err)
	}
}
