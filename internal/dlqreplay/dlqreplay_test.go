package dlqreplay_test

import (
	"context"
	"testing"
	"time"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/internal/dlqreplay"
	"github.com/certfleet/certfleet/schema"
	"github.com/certfleet/certfleet/testenv"
)

func ledger(t *testing.T) *dlqreplay.Ledger {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := db.Open(ctx, db.Config{URL: testenv.FreshDatabase(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	if _, err := schema.Migrate(ctx, d, schema.Options{}); err != nil {
		t.Fatal(err)
	}
	return dlqreplay.New(d)
}

// A record is claimed once: a second run sees the first's replay; a failed
// write's claims are forgotten; an unsent claim expires; a row about another
// record at the same position (the topic was re-created) does not count.
func TestLedger(t *testing.T) {
	l := ledger(t)
	ctx := context.Background()
	now := time.Now()
	rec := dlqreplay.Record{DLQTopic: "dlq", Partition: 1, Offset: 7, Destination: "req", EventID: "e1", ValueSHA256: "aa"}
	claim := func(run dlqreplay.Run, r dlqreplay.Record, at time.Time) (bool, dlqreplay.Previous) {
		t.Helper()
		ok, prev, err := l.Claim(ctx, run, r, at, at.Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		return ok, prev
	}
	a, b := dlqreplay.NewRun("alice@h1"), dlqreplay.NewRun("bob@h2")
	if ok, _ := claim(a, rec, now); !ok {
		t.Fatal("first claim refused")
	}
	if ok, prev := claim(b, rec, now); ok || prev.By != "alice@h1" || prev.Sent || prev.Destination != "req" {
		t.Fatalf("second claim: %v %+v; want refused, alice's unsent claim", ok, prev)
	}
	if err := l.Forget(ctx, a); err != nil {
		t.Fatal(err)
	}
	if ok, _ := claim(b, rec, now); !ok {
		t.Fatal("claim after the first run forgot refused")
	}
	if err := l.Sent(ctx, b, now); err != nil {
		t.Fatal(err)
	}
	if ok, prev := claim(a, rec, now.Add(time.Hour)); ok || !prev.Sent || prev.By != "bob@h2" {
		t.Fatalf("claim of a sent record an hour later: %v %+v; want refused for good", ok, prev)
	}
	if err := l.Forget(ctx, b); err != nil { // a sent record is not forgotten
		t.Fatal(err)
	}
	if ok, _ := claim(a, rec, now.Add(time.Hour)); ok {
		t.Fatal("Forget dropped a sent record")
	}
	// Another record at that position (the DLQ re-created): claimable.
	other := rec
	other.ValueSHA256 = "bb"
	if ok, _ := claim(a, other, now); !ok {
		t.Fatal("a different record at a replayed position refused")
	}
	// An unsent claim expires at claim_until.
	rec2 := rec
	rec2.Offset = 8
	if ok, _ := claim(a, rec2, now); !ok {
		t.Fatal("claim refused")
	}
	if ok, _ := claim(b, rec2, now.Add(30*time.Second)); ok {
		t.Fatal("a live claim was taken over")
	}
	if ok, _ := claim(b, rec2, now.Add(2*time.Minute)); !ok {
		t.Fatal("an expired unsent claim was not taken over")
	}
}
