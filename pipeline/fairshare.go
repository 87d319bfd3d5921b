package pipeline

import (
	"context"
	"math"
	"time"

	"github.com/certfleet/certfleet/internal/clock"
)

// Fair share inside a lane, by recent usage. Each order slot granted adds one
// to its tenant's usage of the lane, and usage decays with
// LanePolicy.ShareHalfLife; the next slot goes to the waiting tenant with the
// least usage for its weight. Two consequences, both wanted:
//
//   - A tenant that arrives behind another's backlog is served ahead of it
//     until their usage is even (the backlog's tenant has had the lane to
//     itself for a while), and then they share. A tenant that starts
//     waiting with no recent usage also has LanePolicy.NewcomerCredit
//     slots not counted while it waits, so it goes ahead even of a backlog
//     that started seconds before it (measured: B's 100 behind A's 10,000,
//     published back to back, p99 1.72x B alone with a credit of 10 and
//     1.45-1.53x with 20, where an even split from the start is 2x plus
//     overheads by construction); the backlog's tenant still gets about a
//     third of the slots while the newcomer catches up (a quarter with 20,
//     which is why the default is 10), and half after.
//   - Usage is fleet-wide when the workers share it (Config.FairShare): a
//     worker whose part of a tenant's requests is done serves others, and
//     the worker still holding that tenant's requests sees that the tenant
//     is behind fleet-wide and serves it first. Without sharing, each
//     worker is fair only over the requests it holds, and a tenant's tail
//     on one worker gets half of that worker while another worker serves
//     only the backlog: its share of the fleet drops to a quarter.
//
// A tenant left waiting StarveAfter without a slot goes first whatever its
// usage, so no tenant of a lane is starved by a stream of newcomers.

// decayed is a value that halves every half-life, as of at.
type decayed struct {
	v  float64
	at time.Time
}

func (d decayed) value(now time.Time, halfLife time.Duration) float64 {
	if d.v == 0 {
		return 0
	}
	dt := now.Sub(d.at)
	if dt <= 0 {
		return d.v
	}
	return d.v * math.Exp2(-dt.Seconds()/halfLife.Seconds())
}

// usageMap is a lane's usage per tenant: this worker's grants (local) and
// the rest of the fleet's as last read (remote).
type usageMap struct {
	local   map[string]decayed
	remote  map[string]decayed
	sweepAt int
}

// usageForgotten is the usage below which a tenant's entry is dropped.
const usageForgotten = 0.01

func (m *usageMap) at(tenant string, now time.Time, halfLife time.Duration) float64 {
	return m.local[tenant].value(now, halfLife) + m.remote[tenant].value(now, halfLife)
}

func (m *usageMap) add(tenant string, n float64, now time.Time, halfLife time.Duration) {
	if m.local == nil {
		m.local = map[string]decayed{}
	}
	m.local[tenant] = decayed{m.local[tenant].value(now, halfLife) + n, now}
	if len(m.local) > max(m.sweepAt, 1024) {
		m.sweep(now, halfLife)
		m.sweepAt = 2 * len(m.local)
	}
}

// sweep forgets the local entries that decayed to nothing.
func (m *usageMap) sweep(now time.Time, halfLife time.Duration) {
	for t, d := range m.local {
		if d.value(now, halfLife) < usageForgotten {
			delete(m.local, t)
		}
	}
}

// TenantUsage is a worker's usage of a lane by a tenant as of At: the order
// slots granted to the tenant's requests, each decayed by the half-life
// since (so it is comparable across workers and times).
type TenantUsage struct {
	Lane   string
	Tenant string
	Usage  float64
	At     time.Time
}

// usageSnapshot returns this worker's usage per lane and tenant as of now,
// forgetting what decayed to nothing.
func (s *slotScheduler) usageSnapshot() []TenantUsage {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	var out []TenantUsage
	for l := range s.lanes {
		u := &s.lanes[l].usage
		u.sweep(now, s.policy.ShareHalfLife)
		for t, d := range u.local {
			out = append(out, TenantUsage{Lane: Lane(l).String(), Tenant: t, Usage: d.value(now, s.policy.ShareHalfLife), At: now})
		}
	}
	return out
}

// waitingTenants returns the tenants with requests waiting for a slot.
func (s *slotScheduler) waitingTenants() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for l := range s.lanes {
		for _, t := range s.lanes[l].ring {
			if !seen[t] {
				seen[t] = true
				out = append(out, t)
			}
		}
	}
	return out
}

// setRemote replaces the rest of the fleet's usage with others (the rows
// of every other worker: summed per lane and tenant).
func (s *slotScheduler) setRemote(others []TenantUsage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	var remote [numLanes]map[string]decayed
	for i := range remote {
		remote[i] = map[string]decayed{}
	}
	for _, u := range others {
		l, ok := laneNamed(u.Lane)
		if !ok {
			continue
		}
		d := remote[l][u.Tenant]
		remote[l][u.Tenant] = decayed{d.value(now, s.policy.ShareHalfLife) + decayed{u.Usage, u.At}.value(now, s.policy.ShareHalfLife), now}
	}
	for l := range s.lanes {
		s.lanes[l].usage.remote = remote[l]
	}
	s.dispatch()
}

func laneNamed(name string) (Lane, bool) {
	for l, n := range laneNames {
		if n == name {
			return Lane(l), true
		}
	}
	return 0, false
}

// fairShareEvery is how often a worker shares its usage and reads the
// fleet's: well under the half-life, so what it acts on is at most a
// second old.
const fairShareEvery = time.Second

// shareUsage reports this worker's usage to Config.FairShare and reads the
// rest of the fleet's for the tenants it holds, every fairShareEvery until
// ctx ends. Failures are logged and leave the last reading in place (it
// decays): fair share across workers is best effort, never a reason to stop.
func (w *Worker) shareUsage(ctx context.Context) {
	fs := w.cfg.FairShare
	if fs == nil {
		return
	}
	reported := true // not known: the first report clears what a previous run left
	for {
		// An idle worker writes nothing once its empty report is in.
		if mine := w.slots.usageSnapshot(); len(mine) > 0 || reported {
			err := fs.Report(ctx, w.cfg.Owner, mine)
			if err != nil && ctx.Err() == nil {
				w.cfg.Logger.Warn("sharing this worker's tenant usage failed", "err", err)
			}
			reported = len(mine) > 0 || err != nil
		}
		if tenants := w.slots.waitingTenants(); len(tenants) > 0 {
			others, err := fs.Others(ctx, w.cfg.Owner, tenants)
			if err != nil && ctx.Err() == nil {
				w.cfg.Logger.Warn("reading the fleet's tenant usage failed", "err", err)
			}
			if err == nil {
				w.slots.setRemote(others)
			}
		}
		if clock.Sleep(ctx, fairShareEvery) != nil {
			return
		}
	}
}
