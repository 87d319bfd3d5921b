package incident

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/certfleet/certfleet/ratelimit"
)

// BucketReader reads one bucket's stored state without locking it
// (ratelimit.DBStore). found false means never written: full.
type BucketReader interface {
	Bucket(ctx context.Context, key string) (st ratelimit.BucketState, found bool, err error)
}

// Limits is what Loads reads of package ratelimit, read only: the
// catalogue of the CAs, the overrides in force (ratelimit.OverrideStore)
// and the buckets' states (nil: every bucket taken as full).
type Limits struct {
	Catalogue *ratelimit.Catalogue
	Overrides ratelimit.OverrideSource
	Buckets   BucketReader
	// Directory maps a certificate's CA name to its ACME directory (the
	// -ca list); a name that is not in it is taken as a directory URL.
	Directory map[string]string
	// MaxStates bounds how many buckets' states are read (one query each):
	// buckets shared by several orders first, then the rest. Default 5000.
	MaxStates int
}

// Loads derives the buckets the replacements of certs spend, as the
// workers will (a reissue is a new order: every limit is checked), counts
// the orders per bucket and attaches each bucket's limit in force and
// state. unread is how many buckets' states were not read (taken as full).
func Loads(ctx context.Context, lim Limits, certs []Certificate, now time.Time) (loads []Load, unread int, err error) {
	byKey := map[string]*Load{}
	var txns []ratelimit.Transaction
	for _, c := range certs {
		dir := c.CA
		if d, ok := lim.Directory[c.CA]; ok {
			dir = d
		}
		ca, ok := lim.Catalogue.CA(dir)
		if !ok {
			return nil, 0, fmt.Errorf("incident: certificate %s: no limits for CA %q (directory %s): name it in --ca", c.Serial, c.CA, dir)
		}
		ts, err := lim.Catalogue.OrderTransactions(ratelimit.Order{Directory: dir, Account: c.Tenant, SANs: c.SANs, Kind: ratelimit.NewOrder})
		if err != nil {
			return nil, 0, fmt.Errorf("incident: certificate %s: %w", c.Serial, err)
		}
		for _, t := range ts {
			if t.Mode != ratelimit.ModeSpend {
				continue
			}
			l := byKey[t.Key()]
			if l == nil {
				l = &Load{Key: t.Key(), Name: t.Name, Value: t.Value, CA: ca.ID, Limit: ca.Limits[t.Name].Limit}
				byKey[t.Key()] = l
				txns = append(txns, t)
			}
			l.Orders++
		}
	}
	if lim.Overrides != nil && len(txns) > 0 {
		for from := 0; from < len(txns); from += 1000 {
			batch := txns[from:min(from+1000, len(txns))]
			found, err := lim.Overrides.Find(ctx, now, batch)
			if err != nil {
				return nil, 0, fmt.Errorf("incident: reading overrides: %w", err)
			}
			for i, o := range found {
				if o != nil {
					l := byKey[batch[i].Key()]
					l.Limit, l.Overridden = o.Limit, true
				}
			}
		}
	}
	for _, t := range txns {
		loads = append(loads, *byKey[t.Key()])
	}
	sort.SliceStable(loads, func(i, j int) bool { return loads[i].Orders > loads[j].Orders })
	maxStates := lim.MaxStates
	if maxStates <= 0 {
		maxStates = 5000
	}
	for i := range loads {
		if lim.Buckets == nil || i >= maxStates {
			unread++
			continue
		}
		st, found, err := lim.Buckets.Bucket(ctx, loads[i].Key)
		if err != nil {
			return nil, 0, fmt.Errorf("incident: reading bucket %s: %w", loads[i].Key, err)
		}
		if found {
			loads[i].TAT, loads[i].PenaltyUntil = st.TAT, st.PenaltyUntil
		}
	}
	return loads, unread, nil
}
