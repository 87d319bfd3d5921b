package scheduler

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the scheduler's Prometheus metrics (certfleet_ prefix).
type Metrics struct {
	DueBacklog   prometheus.Gauge       // certfleet_scheduler_due_backlog
	MostOverdue  prometheus.Gauge       // certfleet_scheduler_most_overdue_seconds
	Emitted      *prometheus.CounterVec // certfleet_scheduler_jobs_emitted_total{reason}; rate() is jobs/s
	Leader       prometheus.Gauge       // certfleet_scheduler_leader (1 while this process holds the lease)
	LeaseToken   prometheus.Gauge       // certfleet_scheduler_lease_token
	Refused      prometheus.Counter     // certfleet_scheduler_fenced_writes_refused_total
	TickSeconds  prometheus.Histogram   // certfleet_scheduler_tick_duration_seconds
	Outcomes     *prometheus.CounterVec // certfleet_scheduler_outcomes_total{type, effect}; effect: planned, retry_scheduled, watchdog_moved, ignored
	ARIFetches   *prometheus.CounterVec // certfleet_scheduler_ari_fetches_total{result}
	BudgetTokens prometheus.Gauge       // certfleet_scheduler_budget_tokens
	// IncidentBacklog is certfleet_scheduler_incident_backlog: rows in the
	// incident lane (their CA moved the ARI window into the past) not yet
	// emitted, at the last tick.
	IncidentBacklog prometheus.Gauge
	// ARIIncidents is certfleet_scheduler_ari_incident_windows_total{ca}:
	// ARI answers whose window had entirely passed.
	ARIIncidents *prometheus.CounterVec
	// ARIShift is certfleet_scheduler_ari_shift{ca}: 1 while the CA is
	// moving windows into the past (an incident: every certificate of the
	// issuer is re-checked at once), 0 after a re-check pass finds none.
	ARIShift *prometheus.GaugeVec

	// EventsRefused is certfleet_scheduler_events_refused_total{type, reason};
	// reason: unmatched (not what a worker stored) or too_far_ahead (a time
	// beyond its events bound). Each such event is dead-lettered.
	EventsRefused *prometheus.CounterVec
}

// NewMetrics creates the metrics and registers them with reg unless it is nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		DueBacklog: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "certfleet_scheduler_due_backlog", Help: "Managed certificates due and not yet emitted, at the last tick (capped at 1,000,000).",
		}),
		MostOverdue: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "certfleet_scheduler_most_overdue_seconds", Help: "How long the most overdue certificate has been due, at the last tick (0: none due).",
		}),
		Emitted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "certfleet_scheduler_jobs_emitted_total", Help: "Issuance jobs emitted to Kafka, by reason (new, renewal, incident, reemit).",
		}, []string{"reason"}),
		Leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "certfleet_scheduler_leader", Help: "1 while this process holds the scheduler lease, else 0.",
		}),
		LeaseToken: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "certfleet_scheduler_lease_token", Help: "Fencing token of the lease this process holds (0: none).",
		}),
		Refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "certfleet_scheduler_fenced_writes_refused_total", Help: "Rows whose emitted mark the database refused (stale fencing token or changed row).",
		}),
		TickSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "certfleet_scheduler_tick_duration_seconds", Help: "Duration of one tick.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		Outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "certfleet_scheduler_outcomes_total", Help: "Certificate events recorded, by type and effect.",
		}, []string{"type", "effect"}),
		EventsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "certfleet_scheduler_events_refused_total",
			Help: "Certificate events refused and dead-lettered, by type and reason: unmatched (not what a worker stored), too_far_ahead (a time beyond its bound).",
		}, []string{"type", "reason"}),
		ARIFetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "certfleet_scheduler_ari_fetches_total", Help: "ARI renewalInfo fetches, by result.",
		}, []string{"result"}),
		BudgetTokens: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "certfleet_scheduler_budget_tokens", Help: "Jobs the fleet budget allows the next tick to emit.",
		}),
		IncidentBacklog: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "certfleet_scheduler_incident_backlog", Help: "Certificates in the incident lane (ARI window moved into the past) not yet emitted, at the last tick.",
		}),
		ARIIncidents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "certfleet_scheduler_ari_incident_windows_total", Help: "ARI answers whose suggested window had entirely passed (the CA asks for a reissue now), by CA.",
		}, []string{"ca"}),
		ARIShift: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "certfleet_scheduler_ari_shift", Help: "1 while the CA moves ARI windows into the past (every certificate of that issuer is re-checked at once), by CA.",
		}, []string{"ca"}),
	}
	if reg != nil {
		reg.MustRegister(m.DueBacklog, m.MostOverdue, m.Emitted, m.Leader, m.LeaseToken, m.Refused, m.TickSeconds,
			m.Outcomes, m.EventsRefused, m.ARIFetches, m.BudgetTokens, m.IncidentBacklog, m.ARIIncidents, m.ARIShift)
	}
	return m
}
