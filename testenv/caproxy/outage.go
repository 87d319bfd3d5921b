package caproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// Stop takes the CA off the network the way a CA's outage looks to its
// clients: the proxy stops listening, so every new connection is refused,
// and its open connections close once the requests on them are answered
// (for up to drain; then they are cut). Pebble keeps its state (orders in
// flight stay there), and so do the proxy's limits and counters. Start
// brings it back on the same address.
func (p *Proxy) Stop(drain time.Duration) error {
	p.srvMu.Lock()
	srv := p.srv
	p.srv = nil
	p.srvMu.Unlock()
	if srv == nil {
		return errors.New("caproxy: Stop: not serving")
	}
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		return srv.Close()
	}
	return nil
}

// Start serves again, on the address it had, after Stop.
func (p *Proxy) Start(ctx context.Context) error {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	p.srvMu.Lock()
	serving := p.srv != nil
	p.srvMu.Unlock()
	switch {
	case closed:
		return errors.New("caproxy: Start: closed")
	case serving:
		return errors.New("caproxy: Start: already serving")
	}
	var lc net.ListenConfig
	var ln net.Listener
	var err error
	// The port was just released; another program may hold it for a moment.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if ln, err = lc.Listen(ctx, "tcp", p.addr); err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("caproxy: Start: listening on %s again: %w", p.addr, err)
	}
	p.serve(ln)
	return nil
}
