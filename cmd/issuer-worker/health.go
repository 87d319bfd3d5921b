package main

import (
	"fmt"
	"net/http"
	"time"
)

// Stalled says whether the worker is stuck: an error describes the stall,
// nil means it moves (or waits on purpose). *pipeline.Worker implements it.
type Stalled interface {
	Stalled(patience time.Duration) error
}

// healthz is the liveness probe: 503 with the stall's description once w has
// records due and none finished for patience, so the orchestrator restarts
// the worker and its records go to another member; 200 "ok" otherwise.
// patience 0 turns the check off. Readiness (database, Kafka) is /readyz's.
func healthz(w Stalled, patience time.Duration) http.HandlerFunc {
	return func(rw http.ResponseWriter, _ *http.Request) {
		if patience > 0 {
			if err := w.Stalled(patience); err != nil {
				http.Error(rw, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(rw, "ok")
	}
}
