package pipeline

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the worker's Prometheus metrics (certfleet_ prefix).
type Metrics struct {
	Jobs         *prometheus.CounterVec   // certfleet_worker_jobs_total{outcome}
	OrderSeconds *prometheus.HistogramVec // certfleet_worker_order_duration_seconds{result}
	Denied       *prometheus.CounterVec   // certfleet_worker_tokens_denied_total{limit}
	// OrdersResumed counts certificates obtained by continuing the order a
	// previous attempt (a dead worker) left: orders the CA did not see twice.
	OrdersResumed prometheus.Counter // certfleet_worker_orders_resumed_total
	InFlight      prometheus.Gauge   // certfleet_worker_jobs_in_flight
	Pending       prometheus.Gauge   // certfleet_worker_records_pending
	// LaneWaiting is the number of jobs waiting for an order slot, by lane.
	LaneWaiting *prometheus.GaugeVec // certfleet_worker_lane_waiting{lane}
	// ParkedForTurn counts records parked because their lane and tenant
	// already had their share of the records this worker holds.
	ParkedForTurn *prometheus.CounterVec // certfleet_worker_parked_for_turn_total{lane}
	ConsumerLag   prometheus.Gauge       // certfleet_worker_consumer_lag, set by the process from its Kafka reader
	// DLQStubs counts dead letters written as a stub instead of the record:
	// the dead-letter topic refused the record, or it held private key
	// material (events.WriteDeadLetter).
	DLQStubs *prometheus.CounterVec // certfleet_worker_dlq_stubs_total{cause}
	// JobPanics counts records whose handling panicked; each was
	// dead-lettered with the panic's reason and the worker went on.
	JobPanics prometheus.Counter // certfleet_worker_job_panics_total
	// Failovers counts orders placed at a later CA of the request's group
	// than its first (the earlier ones unavailable or limited).
	Failovers *prometheus.CounterVec // certfleet_worker_ca_failovers_total{from,to}
}

// Job outcomes, the label values of certfleet_worker_jobs_total.
const (
	OutcomeObtained     = "obtained"      // certificate issued and published
	OutcomeRepublished  = "republished"   // request already done: stored event sent again
	OutcomeFailed       = "failed"        // permanent failure published as cert_failed
	OutcomeDeferred     = "deferred"      // re-queued on the retry topic
	OutcomeTakenOver    = "taken_over"    // the claim lapsed and another worker continues the order
	OutcomeDeadLettered = "dead_lettered" // bad record moved to the DLQ
)

// NewMetrics creates the metrics and registers them with reg unless it is nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "certfleet_worker_jobs_total", Help: "Issuance jobs finished, by outcome.",
		}, []string{"outcome"}),
		OrderSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "certfleet_worker_order_duration_seconds", Help: "Time of one ACME order, by result.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}, []string{"result"}),
		Denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "certfleet_worker_tokens_denied_total", Help: "Jobs deferred by a rate limit, by the limit that denied them.",
		}, []string{"limit"}),
		OrdersResumed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "certfleet_worker_orders_resumed_total", Help: "Certificates obtained by continuing an order a previous attempt left, instead of ordering again.",
		}),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "certfleet_worker_jobs_in_flight", Help: "Jobs holding an order slot.",
		}),
		Pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "certfleet_worker_records_pending", Help: "Fetched records not yet finished (includes those waiting for not_before).",
		}),
		LaneWaiting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "certfleet_worker_lane_waiting", Help: "Jobs waiting for an order slot, by lane (emergency, new, renewal).",
		}, []string{"lane"}),
		ParkedForTurn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "certfleet_worker_parked_for_turn_total", Help: "Records parked until about their turn because their lane and tenant already had their share of the records this worker holds, by lane.",
		}, []string{"lane"}),
		ConsumerLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "certfleet_worker_consumer_lag", Help: "Records behind the end of the partitions this worker reads (kafka-go reader lag).",
		}),
		DLQStubs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "certfleet_worker_dlq_stubs_total", Help: "Dead letters written as a stub (size, SHA-256, prefix) instead of the record, by cause: refused (the dead-letter topic refused the record) or private_key.",
		}, []string{"cause"}),
		JobPanics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "certfleet_worker_job_panics_total", Help: "Records whose handling panicked; each was dead-lettered with the panic's reason.",
		}),
		Failovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "certfleet_worker_ca_failovers_total", Help: "Orders placed at a later CA of the request's group than its first (from: the group's first CA, to: the CA ordered from).",
		}, []string{"from", "to"}),
	}
	if reg != nil {
		reg.MustRegister(m.Jobs, m.OrderSeconds, m.Denied, m.OrdersResumed, m.InFlight, m.Pending, m.LaneWaiting, m.ParkedForTurn, m.ConsumerLag, m.DLQStubs, m.JobPanics, m.Failovers)
	}
	return m
}
