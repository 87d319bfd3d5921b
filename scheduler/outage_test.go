package scheduler_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/scheduler"
	"github.com/certfleet/certfleet/schema"
	"github.com/certfleet/certfleet/testenv"
)

// outageProxy forwards TCP connections to the database. Cut makes the
// database unreachable for everything connected through it (open
// connections are closed, new ones are accepted and closed at once, as a
// restarting server does) until Restore.
type outageProxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	down    bool
	conns   map[net.Conn]bool
	refused int
	changed chan struct{} // closed and replaced whenever refused grows
}

func newOutageProxy(t *testing.T, target string) *outageProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &outageProxy{ln: ln, target: target, conns: map[net.Conn]bool{}, changed: make(chan struct{})}
	t.Cleanup(func() { ln.Close(); p.Cut() })
	go p.serve()
	return p
}

func (p *outageProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.refused++
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		go func() { io.Copy(up, c); up.Close() }()
		go func() { io.Copy(c, up); c.Close() }()
	}
}

func (p *outageProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *outageProxy) Restore() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

// waitRefused waits until at least n connections were refused since Cut.
func (p *outageProxy) waitRefused(ctx context.Context, n int) error {
	for {
		p.mu.Lock()
		got, ch := p.refused, p.changed
		p.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%d connections refused, want %d: %w", got, n, ctx.Err())
		}
	}
}

// The check: a database outage while the scheduler records a
// cert_obtained dead-letters nothing. The outcome goes through the real
// subscriber (default 5 attempts) while the scheduler's database is
// unreachable; the scheduler keeps retrying (the proxy sees it reconnect)
// past the subscriber's attempts, and records the outcome once the database
// is back. A shutdown during an outage leaves the event unhandled (for
// redelivery), not dead-lettered.
func TestOutcomeSurvivesDatabaseOutage(t *testing.T) {
	s := testenv.Require(t)
	ctx := ctxT(t, 120*time.Second)
	dbURL := testenv.FreshDatabase(t)
	direct, err := db.Open(ctx, db.Config{URL: dbURL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(direct.Close)
	if _, err := schema.Migrate(ctx, direct, schema.Options{}); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := newOutageProxy(t, u.Host)
	u.Host = proxy.ln.Addr().String()
	proxied, err := db.Open(ctx, db.Config{URL: u.String(), MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxied.Close)

	clk := newClock()
	sched, err := scheduler.New(scheduler.Config{DB: proxied, Writer: &memWriter{}, Holder: "outage", Logger: quiet, Clock: clk,
		InfraBackoffMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	inv := scheduler.NewInventory(direct, clk)
	m, err := scheduler.Normalize(scheduler.Spec{SANs: []string{"outage.example.com"}, Tenant: "t", CA: testCA})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inv.Manage(ctx, m); err != nil {
		t.Fatal(err)
	}
	ob := forgedObtained(t, "req-outage", m.SANs) // made genuine by storing it, as a worker does
	nb := ob.NotBefore
	storeIssued(t, direct, m.Identity, ob.RequestID, ob.Serial, ob.ARICertID, ob.NotBefore, ob.NotAfter)
	ev, err := events.New("//certfleet/worker", clk.Now(), ob)
	if err != nil {
		t.Fatal(err)
	}

	// Shutdown during the outage: an error that is neither permanent nor
	// handled, so the subscriber leaves the record for redelivery.
	proxy.Cut()
	sctx, cancel := context.WithCancel(ctx)
	go func() { proxy.waitRefused(ctx, 2); cancel() }()
	err = sched.Handle(sctx, ev)
	var perm *backoff.PermanentError
	if err == nil || !errors.Is(err, context.Canceled) || errors.As(err, &perm) {
		t.Fatalf("Handle at shutdown during an outage: %v (want a non-permanent error wrapping context.Canceled)", err)
	}
	if row, _ := inv.Get(ctx, m.Identity); row.CertARIID != "" {
		t.Fatalf("recorded while the database was unreachable? %+v", row)
	}

	// Through the subscriber: publish during the outage.
	topics := events.Topics{Events: fmt.Sprintf("sched.outage.events.%d", time.Now().UnixNano()), DLQ: "unused"}
	if err := testenv.CreateTopic(ctx, s.KafkaBrokers, topics.Events, 1); err != nil {
		t.Fatal(err)
	}
	producer, err := events.NewProducer(events.ProducerConfig{Brokers: s.KafkaBrokers, Topics: topics})
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	if err := producer.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	dlq := &memWriter{}
	sub, err := events.NewSubscriber(events.SubscriberConfig{Brokers: s.KafkaBrokers, GroupID: topics.Events, Topics: []string{topics.Events},
		DeadLetter: dlq, DeadLetterTopic: topics.Events + ".dlq", Logger: quiet, DedupeWindow: -1})
	if err != nil {
		t.Fatal(err)
	}
	subErr := make(chan error, 1)
	go func() { subErr <- sub.Run(context.Background(), sched.Handle) }()
	defer sub.Close()
	// More connection attempts than the subscriber's 5 handler attempts:
	// the scheduler retried inside one attempt.
	if err := proxy.waitRefused(ctx, 2+10); err != nil {
		t.Fatalf("the scheduler stopped trying during the outage: %v", err)
	}
	proxy.Restore()
	for {
		row, err := inv.Get(ctx, m.Identity)
		if err != nil {
			t.Fatal(err)
		}
		if row.CertARIID == ob.ARICertID {
			if row.Basis != scheduler.BasisLifetime || row.RequestID != "" || !row.NextRenewalAt.After(nb) {
				t.Fatalf("recorded after the outage, but planned %+v", row)
			}
			break
		}
		select {
		case err := <-subErr:
			t.Fatalf("subscriber stopped: %v", err)
		case <-ctx.Done():
			t.Fatalf("the outcome was not recorded after the database came back: %+v", row)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := sub.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if st := sub.Stats(); st.DeadLettered != 0 || st.Handled != 1 || len(dlq.msgs) != 0 {
		t.Fatalf("subscriber stats %+v, %d dead letters: want the outcome handled once and nothing dead-lettered", st, len(dlq.msgs))
	}
}
