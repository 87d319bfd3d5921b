package scheduler_test

import (
	"testing"
	"time"

	"github.com/certfleet/certfleet/scheduler"
)

func TestLeaseTakeoverAndFencing(t *testing.T) {
	d, _ := freshDB(t)
	ctx := ctxT(t, 30*time.Second)
	const ttl = 800 * time.Millisecond
	a := scheduler.NewLease(d, scheduler.LeaseName, "a", ttl)
	b := scheduler.NewLease(d, scheduler.LeaseName, "b", ttl)

	sa, err := a.TryAcquire(ctx)
	if err != nil || !sa.Held || sa.Token != 1 {
		t.Fatalf("a: %+v %v", sa, err)
	}
	if sb, err := b.TryAcquire(ctx); err != nil || sb.Held {
		t.Fatalf("b took a live lease: %+v %v", sb, err)
	}
	// Renewal keeps the token.
	if sa2, err := a.TryAcquire(ctx); err != nil || !sa2.Held || sa2.Token != 1 {
		t.Fatalf("renew: %+v %v", sa2, err)
	}
	// a dies (stops renewing); b polls every ttl/4 and must take over within
	// one lease period of a's last renewal, with a larger token.
	died := time.Now()
	var sb scheduler.LeaseState
	for time.Since(died) < 3*ttl {
		if sb, err = b.TryAcquire(ctx); err != nil {
			t.Fatal(err)
		}
		if sb.Held {
			break
		}
		time.Sleep(ttl / 4)
	}
	took := time.Since(died)
	if !sb.Held || sb.Token != 2 {
		t.Fatalf("b did not take over: %+v", sb)
	}
	if took > ttl+ttl/2 {
		t.Errorf("takeover took %v, more than one lease period (%v) plus a poll", took, ttl)
	}
	t.Logf("standby took over %v after the leader's last renewal (ttl %v)", took, ttl)
	// a comes back: refused while b holds it.
	if sa3, err := a.TryAcquire(ctx); err != nil || sa3.Held {
		t.Fatalf("deposed leader re-acquired: %+v %v", sa3, err)
	}
	// Graceful release hands over at once, with a new token.
	if err := b.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if sa4, err := a.TryAcquire(ctx); err != nil || !sa4.Held || sa4.Token != 3 {
		t.Fatalf("after release: %+v %v", sa4, err)
	}
}
