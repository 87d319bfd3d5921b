package ratelimit_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/ratelimit"
)

// countingSource answers every lookup with an override for tenant "vip"
// and none for anyone else, counting the transactions it was asked about.
type countingSource struct{ asked int }

func (s *countingSource) Find(_ context.Context, _ time.Time, txns []ratelimit.Transaction) ([]*ratelimit.Override, error) {
	s.asked += len(txns)
	out := make([]*ratelimit.Override, len(txns))
	for i, t := range txns {
		if t.Value == "vip" {
			out[i] = &ratelimit.Override{Limit: ratelimit.Limit{Count: 1000, Period: time.Hour, Burst: 1000}, Enabled: true}
		}
	}
	return out, nil
}

func tenant(v string) []ratelimit.Transaction {
	return []ratelimit.Transaction{{Name: ratelimit.NewOrdersPerAccount, Value: v, Account: v}}
}

// TestOverrideCacheBounded: 100,000 distinct tenants looked up keep the
// cache at its bound; the least recently used answers go first, so a tenant
// looked up all along is still answered from the cache.
func TestOverrideCacheBounded(t *testing.T) {
	for _, tc := range []struct {
		name  string
		max   int
		bound int
	}{
		{"default size", 0, ratelimit.DefaultOverrideCacheSize},
		{"configured size", 500, 500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &countingSource{}
			clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
			c := ratelimit.NewOverrideCache(src, time.Hour, clk)
			if tc.max > 0 {
				c.MaxEntries = tc.max
			}
			ctx := context.Background()
			for i := range 100_000 {
				if _, err := c.Find(ctx, clk.Now(), tenant(fmt.Sprintf("tenant-%d", i))); err != nil {
					t.Fatal(err)
				}
				if i%10 == 0 {
					if ovs, err := c.Find(ctx, clk.Now(), tenant("vip")); err != nil || ovs[0] == nil {
						t.Fatalf("vip lookup %d: %v, %v", i, ovs, err)
					}
				}
				if n := c.Len(); n > tc.bound {
					t.Fatalf("after %d tenants the cache holds %d answers, bound %d", i+1, n, tc.bound)
				}
			}
			if n := c.Len(); n != tc.bound {
				t.Fatalf("cache holds %d answers after 100,000 tenants, want its bound %d", n, tc.bound)
			}
			if src.asked != 100_001 {
				t.Fatalf("source asked %d times, want 100,001 (each tenant once, vip once: it never left the cache)", src.asked)
			}
			// The oldest tenants were evicted: asking again goes to the source.
			if _, err := c.Find(ctx, clk.Now(), tenant("tenant-0")); err != nil || src.asked != 100_002 {
				t.Fatalf("evicted tenant answered without the source (asked %d), %v", src.asked, err)
			}
		})
	}
}
