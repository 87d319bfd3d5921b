package pipeline

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/seal"
)

// The order a dead worker left on the request is handed, key unsealed, to the
// issuer of the worker that claims it next; the certificate it yields is
// stored with that key and counted as resumed. An order that was never
// recorded, or does not open, is not resumed.
func TestOrderLeftByADeadWorkerIsResumed(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	req := newRequest("req-9", "www.example.com")
	aad := seal.AAD(seal.PurposeCertKey, events.Identity(req.SANs), req.RequestID)
	for _, tc := range []struct {
		name       string
		sealedWith func(k *seal.Keyring) *seal.Keyring // the keyring the dead worker sealed with
		noOrder    bool
		wantResume bool
	}{
		{"the dead worker recorded its order", func(k *seal.Keyring) *seal.Keyring { return k }, false, true},
		{"nothing recorded", nil, true, false},
		{"sealed with a key this worker lacks", func(*seal.Keyring) *seal.Keyring { return testKeyring(t) }, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			ring := testKeyring(t)
			row := &claimRow{owner: "dead-worker/1", until: t0.Add(-time.Second), attempts: 1, state: certstore.StateOrdering}
			if !tc.noOrder {
				sealed, err := seal.SealPrivateKey(context.Background(), tc.sealedWith(ring), key, aad)
				if err != nil {
					t.Fatal(err)
				}
				row.order = &certstore.Order{URL: "https://ca.test/order/7", SealedKey: sealed}
			}
			h.claims.rows[req.RequestID] = row
			var gotResume *acmeissuer.PendingOrder
			h.issuer.obtain = func(_ context.Context, r acmeissuer.Request, _ int64) (*acmeissuer.Result, error) {
				gotResume = r.Resume
				res, err := issueTest(r.SANs)
				if err == nil && r.Resume != nil {
					res.PrivateKey, res.Resumed = r.Resume.Key, true
				}
				return res, err
			}
			var stored []byte
			var mu sync.Mutex
			w := h.worker(func(c *Config) { c.Sealer, c.Orders = ring, h.claims })
			completes := &recordingClaims{fakeClaims: h.claims, onComplete: func(c certstore.Issued) { mu.Lock(); stored = c.SealedKey; mu.Unlock() }}
			w.cfg.Claims = completes
			rr := h.run(w, 5*time.Second, record(t, h.topics.Requests, 0, 1, req))
			rr.waitIdle()
			rr.stop()

			if (gotResume != nil) != tc.wantResume {
				t.Fatalf("Resume given to the issuer: %v, want %v", gotResume, tc.wantResume)
			}
			if tc.wantResume {
				if gotResume.URL != "https://ca.test/order/7" || !gotResume.Key.(*ecdsa.PrivateKey).Equal(key) {
					t.Errorf("Resume %v does not carry the recorded order and key", gotResume)
				}
				back, err := seal.OpenPrivateKey(context.Background(), ring, stored, aad)
				if err != nil || !back.(*ecdsa.PrivateKey).Equal(key) {
					t.Errorf("stored certificate key is not the resumed order's (%v)", err)
				}
			}
			var m dto.Metric
			_ = w.cfg.Metrics.OrdersResumed.Write(&m)
			if want := map[bool]float64{true: 1, false: 0}[tc.wantResume]; m.GetCounter().GetValue() != want {
				t.Errorf("orders_resumed_total = %v, want %v", m.GetCounter().GetValue(), want)
			}
			if h.claims.rows[req.RequestID].order != nil {
				t.Error("the finished request still holds its order")
			}
		})
	}
}

// Each order the CA creates is recorded on the claim, key sealed for the
// request, and an in-job retry after a retryable failure continues it.
func TestOrderIsRecordedAndRetriedInPlace(t *testing.T) {
	h := newHarness(t)
	ring := testKeyring(t)
	req := newRequest("req-10", "api.example.com")
	aad := seal.AAD(seal.PurposeCertKey, events.Identity(req.SANs), req.RequestID)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var recorded *certstore.Order
	var secondResume *acmeissuer.PendingOrder
	h.issuer.obtain = func(ctx context.Context, r acmeissuer.Request, call int64) (*acmeissuer.Result, error) {
		if call == 1 {
			if r.OnOrder == nil || r.Resume != nil {
				return nil, errors.New("first call: want OnOrder and no Resume")
			}
			r.OnOrder(ctx, acmeissuer.PendingOrder{URL: "https://ca.test/order/8", Key: key})
			h.claims.mu.Lock()
			recorded = h.claims.rows[req.RequestID].order
			h.claims.mu.Unlock()
			return nil, &acmeissuer.CAError{Status: 503, Err: errors.New("CA busy")}
		}
		secondResume = r.Resume
		res, err := issueTest(r.SANs)
		if err == nil && r.Resume != nil {
			res.PrivateKey, res.Resumed = r.Resume.Key, true
		}
		return res, err
	}
	w := h.worker(func(c *Config) { c.Sealer, c.Orders = ring, h.claims })
	rr := h.run(w, 5*time.Second, record(t, h.topics.Requests, 0, 1, req))
	rr.waitIdle()
	rr.stop()
	if recorded == nil || recorded.URL != "https://ca.test/order/8" {
		t.Fatalf("order not recorded on the claim: %+v", recorded)
	}
	back, err := seal.OpenPrivateKey(context.Background(), ring, recorded.SealedKey, aad)
	if err != nil || !back.(*ecdsa.PrivateKey).Equal(key) {
		t.Fatalf("recorded key does not open to the order's key: %v", err)
	}
	if secondResume == nil || secondResume.URL != "https://ca.test/order/8" || !secondResume.Key.(*ecdsa.PrivateKey).Equal(crypto.Signer(key)) {
		t.Fatalf("the retry did not continue the order: %v", secondResume)
	}
	if got := h.issuer.calls.Load(); got != 2 {
		t.Fatalf("%d Obtain calls, want 2", got)
	}
}

// recordingClaims sees what Complete stores.
type recordingClaims struct {
	*fakeClaims
	onComplete func(certstore.Issued)
}

func (r *recordingClaims) Complete(ctx context.Context, owner string, c certstore.Issued, outcome []byte) error {
	r.onComplete(c)
	return r.fakeClaims.Complete(ctx, owner, c, outcome)
}

// deadlineOrders reports the deadline RecordOrder was given.
type deadlineOrders struct {
	mu       sync.Mutex
	deadline time.Time
	bounded  bool
}

func (d *deadlineOrders) RecordOrder(ctx context.Context, _, _ string, _ certstore.Order) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.deadline, d.bounded = ctx.Deadline()
	return errors.New("database unreachable")
}

// Recording runs inside the order: an unreachable database may hold it for
// recordOrderTimeout, not for the order's whole timeout; and a failure to
// record does not fail the order.
func TestRecordingAnOrderIsBounded(t *testing.T) {
	h := newHarness(t)
	orders := &deadlineOrders{}
	req := newRequest("req-11", "db.example.com")
	var called time.Time
	h.issuer.obtain = func(ctx context.Context, r acmeissuer.Request, _ int64) (*acmeissuer.Result, error) {
		called = time.Now()
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		r.OnOrder(ctx, acmeissuer.PendingOrder{URL: "https://ca.test/order/11", Key: key})
		return issueTest(r.SANs)
	}
	w := h.worker(func(c *Config) { c.Orders, c.OrderTimeout = orders, 2*time.Minute })
	rr := h.run(w, 5*time.Second, record(t, h.topics.Requests, 0, 1, req))
	rr.waitIdle()
	rr.stop()
	orders.mu.Lock()
	defer orders.mu.Unlock()
	if !orders.bounded || orders.deadline.Sub(called) > recordOrderTimeout+time.Second {
		t.Fatalf("RecordOrder's deadline %v (set: %v) is not within %v of the order", orders.deadline, orders.bounded, recordOrderTimeout)
	}
	if got := h.writer.on(h.topics.Events); len(got) != 1 {
		t.Fatalf("%d events; the order should succeed although recording failed", len(got))
	}
}
