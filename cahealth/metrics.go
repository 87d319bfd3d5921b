package cahealth

import "github.com/prometheus/client_golang/prometheus"

// Metrics show each CA's breaker as a worker last read it.
type Metrics struct {
	// State is certfleet_worker_ca_state{ca}: 0 closed, 1 half-open, 2 open.
	State *prometheus.GaugeVec
}

// NewMetrics creates the metrics and registers them with reg unless it is nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		State: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "certfleet_worker_ca_state",
			Help: "Each CA's circuit breaker as this worker last read it from the database: 0 closed (orders go to it), 1 half-open (one probe at a time), 2 open (no new orders).",
		}, []string{"ca"}),
	}
	if reg != nil {
		reg.MustRegister(m.State)
	}
	return m
}

func (m *Metrics) set(ca string, s State) {
	v := 0.0
	switch s {
	case HalfOpen:
		v = 1
	case Open:
		v = 2
	}
	m.State.WithLabelValues(ca).Set(v)
}
