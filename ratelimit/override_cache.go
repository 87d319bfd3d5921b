package ratelimit

import (
	"container/list"
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
//
// It holds at most MaxEntries answers, evicting the least recently used, so
// a worker's memory stays flat however many tenants' buckets it looks up.
type OverrideCache struct {
	// MaxEntries bounds the cached answers (default DefaultOverrideCacheSize).
	// Set before first use.
	MaxEntries int

	src   OverrideSource
	clock clock.Clock
	ttl   time.Duration

	mu      sync.Mutex
	entries map[cacheKey]*list.Element // of *cacheEntry
	lru     list.List                  // most recently used first
	gen     map[Name]uint64            // bumped by invalidation; fills from older lookups are dropped
}

// DefaultOverrideCacheSize is OverrideCache.MaxEntries when not set.
const DefaultOverrideCacheSize = 10_000

type cacheKey struct {
	name                   Name
	value, account, domain string
}

type cacheEntry struct {
	key     cacheKey
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
	return &OverrideCache{MaxEntries: DefaultOverrideCacheSize, src: src, clock: clock.Or(clk), ttl: ttl,
		entries: map[cacheKey]*list.Element{}, gen: map[Name]uint64{}}
}

// Len is how many answers the cache holds.
func (c *OverrideCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// lookup returns k's entry, marking it most recently used. c.mu is held.
func (c *OverrideCache) lookup(k cacheKey) (*cacheEntry, bool) {
	el, ok := c.entries[k]
	if !ok {
		return nil, false
	}
	c.lru.MoveToFront(el)
	return el.Value.(*cacheEntry), true
}

// store records an answer, evicting the least recently used beyond
// MaxEntries. c.mu is held.
func (c *OverrideCache) store(e *cacheEntry) {
	if el, ok := c.entries[e.key]; ok {
		el.Value = e
		c.lru.MoveToFront(el)
		return
	}
	c.entries[e.key] = c.lru.PushFront(e)
	for limit := max(c.MaxEntries, 1); len(c.entries) > limit; {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.entries, old.Value.(*cacheEntry).key)
	}
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
		e, ok := c.lookup(k)
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
			c.store(&cacheEntry{key: cacheKey{t.Name, t.Value, t.Account, t.Domain}, o: found[j], fetched: wall})
		}
	}
	return out, nil
}

// Invalidate drops every cached answer for limit name n (all names if
// empty). A wildcard change can affect any key, so the whole name goes.
func (c *OverrideCache) Invalidate(n Name) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, el := range c.entries {
		if n == "" || k.name == n {
			c.lru.Remove(el)
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
