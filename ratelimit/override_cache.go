package ratelimit

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/certfleet/certfleet/internal/clock"
)

// OverrideCache is an OverrideSource in front of another (the database) that
// remembers answers, including "no override", for TTL. Change notifications
// (HandleChange, fed from the certfleet.ratelimit.changes topic) drop the
// cached answers of the changed limit at once, so a change takes effect as
// fast as the notification arrives; the TTL only bounds how long a missed
// notification can keep a stale answer, and how late an override whose
// valid_from was in the future at lookup time starts to apply. Cached
// overrides whose valid_until passes stop applying without a refresh.
type OverrideCache struct {
	src   OverrideSource
	clock clock.Clock
	ttl   time.Duration

	mu      sync.Mutex
	entries map[cacheKey]cacheEntry
	gen     map[Name]uint64 // bumped by invalidation; fills from older lookups are dropped
}

type cacheKey struct {
	name                   Name
	value, account, domain string
}

type cacheEntry struct {
	o       *Override
	fetched time.Time
}

var _ OverrideSource = (*OverrideCache)(nil)

// NewOverrideCache caches src's answers for ttl (30s if zero); clk tells
// the time (nil: the wall clock).
func NewOverrideCache(src OverrideSource, ttl time.Duration, clk clock.Clock) *OverrideCache {
	if ttl <= 0 {
		ttl = 30 * time.Second
	}
	return &OverrideCache{src: src, clock: clock.Or(clk), ttl: ttl, entries: map[cacheKey]cacheEntry{}, gen: map[Name]uint64{}}
}

// Find implements OverrideSource, asking src in one batch for the misses.
func (c *OverrideCache) Find(ctx context.Context, now time.Time, txns []Transaction) ([]*Override, error) {
	out := make([]*Override, len(txns))
	var missIdx []int
	var miss []Transaction
	wall := c.clock.Now()
	c.mu.Lock()
	gens := make(map[Name]uint64, len(txns))
	for i, t := range txns {
		k := cacheKey{t.Name, t.Value, t.Account, t.Domain}
		e, ok := c.entries[k]
		if ok && wall.Sub(e.fetched) < c.ttl && (e.o == nil || e.o.activeAt(now) || now.Before(e.o.ValidFrom)) {
			if e.o != nil && e.o.activeAt(now) {
				out[i] = e.o
			}
			continue
		}
		gens[t.Name] = c.gen[t.Name]
		missIdx, miss = append(missIdx, i), append(miss, t)
	}
	c.mu.Unlock()
	if len(miss) == 0 {
		return out, nil
	}
	found, err := c.src.Find(ctx, now, miss)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for j, i := range missIdx {
		out[i] = found[j]
		t := miss[j]
		if c.gen[t.Name] == gens[t.Name] {
			c.entries[cacheKey{t.Name, t.Value, t.Account, t.Domain}] = cacheEntry{o: found[j], fetched: wall}
		}
	}
	return out, nil
}

// Invalidate drops every cached answer for limit name n (all names if
// empty). A wildcard change can affect any key, so the whole name goes.
func (c *OverrideCache) Invalidate(n Name) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.entries {
		if n == "" || k.name == n {
			delete(c.entries, k)
		}
	}
	if n == "" {
		for _, name := range Names {
			c.gen[name]++
		}
		return
	}
	c.gen[n]++
}

// HandleChange applies one message from the changes topic. A message that
// does not decode invalidates everything rather than being ignored.
func (c *OverrideCache) HandleChange(value []byte) error {
	var ev ChangeEvent
	if err := json.NewDecoder(strings.NewReader(string(value))).Decode(&ev); err != nil || !ev.Name.Valid() {
		c.Invalidate("")
		if err == nil {
			err = fmt.Errorf("unknown limit name %q", truncate(string(ev.Name), 64))
		}
		return fmt.Errorf("ratelimit: change message not understood, dropped whole cache: %w", err)
	}
	c.Invalidate(ev.Name)
	return nil
}
