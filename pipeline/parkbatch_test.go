package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/certfleet/certfleet/certstore"
)

// gatedParker records each ParkMany's size; the first call waits for gate.
type gatedParker struct {
	gate  chan struct{}
	fail  error
	mu    sync.Mutex
	sizes []int
	once  sync.Once
}

func (g *gatedParker) ParkMany(_ context.Context, ps []certstore.Parked) error {
	g.once.Do(func() { <-g.gate })
	g.mu.Lock()
	defer g.mu.Unlock()
	g.sizes = append(g.sizes, len(ps))
	return g.fail
}

// Parks that arrive while a write is in flight go out together in the
// next (at most maxParkBatch each), and each caller gets its batch's
// outcome.
func TestParkBatcherGroupsParksBehindAWrite(t *testing.T) {
	for _, fail := range []error{nil, errors.New("database gone")} {
		t.Run(fmt.Sprint("fail=", fail), func(t *testing.T) {
			g := &gatedParker{gate: make(chan struct{}), fail: fail}
			b := &parkBatcher{store: g}
			const n = 1 + maxParkBatch + 100
			errs := make(chan error, n)
			go func() { errs <- b.park(context.Background(), certstore.Parked{RequestID: "first"}) }()
			for { // the first write is in flight
				b.mu.Lock()
				started := b.running && len(b.queue) == 0
				b.mu.Unlock()
				if started {
					break
				}
			}
			for i := range n - 1 {
				go func() { errs <- b.park(context.Background(), certstore.Parked{RequestID: fmt.Sprint("r", i)}) }()
			}
			for {
				b.mu.Lock()
				queued := len(b.queue)
				b.mu.Unlock()
				if queued == n-1 {
					break
				}
			}
			close(g.gate)
			for range n {
				if err := <-errs; !errors.Is(err, fail) {
					t.Fatalf("a park returned %v, want its batch's outcome %v", err, fail)
				}
			}
			g.mu.Lock()
			defer g.mu.Unlock()
			if fmt.Sprint(g.sizes) != fmt.Sprint([]int{1, maxParkBatch, 100}) {
				t.Errorf("ParkMany sizes %v, want [1 %d 100]", g.sizes, maxParkBatch)
			}
		})
	}
}

// A caller whose context ends stops waiting; the batch still goes out.
func TestParkBatcherCallerGivesUp(t *testing.T) {
	g := &gatedParker{gate: make(chan struct{})}
	b := &parkBatcher{store: g}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- b.park(ctx, certstore.Parked{RequestID: "x"}) }()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("park = %v, want context.Canceled", err)
	}
	close(g.gate)
	if err := b.park(context.Background(), certstore.Parked{RequestID: "y"}); err != nil {
		t.Fatal(err)
	}
}
