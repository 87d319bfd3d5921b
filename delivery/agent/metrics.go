package agent

import (
	"github.com/prometheus/client_golang/prometheus"
)

var (
	descHeld = prometheus.NewDesc("certfleet_agent_certificates_held",
		"Certificate and key pairs in the agent's directory.", nil, nil)
	descExpiring = prometheus.NewDesc("certfleet_agent_certificates_expiring",
		"Pairs held that expire soon (within -expiring-within; by default with less than a third of their lifetime left), or have expired.", nil, nil)
	descNotAfter = prometheus.NewDesc("certfleet_agent_certificate_not_after_seconds",
		"When each pair held expires (Unix seconds), by name (NAME.crt, NAME.key) and serial.", []string{"name", "serial"}, nil)
	descAwaited = prometheus.NewDesc("certfleet_agent_keys_awaited",
		"Names held for which the fleet obtained a newer certificate (cert_obtained on the events topic) whose key has not arrived.", nil, nil)
	descDeliveries = prometheus.NewDesc("certfleet_agent_deliveries_total",
		"Delivery records read, by result: written, unchanged, older, other_recipient, other_tenant, not_valid, refused.", []string{"result"}, nil)
	descHooks = prometheus.NewDesc("certfleet_agent_hook_runs_total",
		"Runs of the -exec hook after a batch that changed pairs, by result (ok, failed).", []string{"result"}, nil)
)

// Describe implements prometheus.Collector.
func (a *Agent) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHeld, descExpiring, descNotAfter, descAwaited, descDeliveries, descHooks} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: what the agent holds, what
// expires soon (as of the scrape), and its counters.
func (a *Agent) Collect(ch chan<- prometheus.Metric) {
	now := a.cfg.Clock.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	expiring := 0
	for name, h := range a.held {
		if a.expiring(h, now) {
			expiring++
		}
		ch <- prometheus.MustNewConstMetric(descNotAfter, prometheus.GaugeValue, float64(h.notAfter.Unix()), name, h.serial)
	}
	ch <- prometheus.MustNewConstMetric(descHeld, prometheus.GaugeValue, float64(len(a.held)))
	ch <- prometheus.MustNewConstMetric(descExpiring, prometheus.GaugeValue, float64(expiring))
	ch <- prometheus.MustNewConstMetric(descAwaited, prometheus.GaugeValue, float64(len(a.await)))
	for _, r := range []string{ResultWritten, ResultUnchanged, ResultOlder, ResultOtherRecipient, ResultOtherTenant, ResultNotValid, ResultRefused} {
		ch <- prometheus.MustNewConstMetric(descDeliveries, prometheus.CounterValue, a.counts[r], r)
	}
	for _, r := range []string{"ok", "failed"} {
		ch <- prometheus.MustNewConstMetric(descHooks, prometheus.CounterValue, a.hooks[r], r)
	}
}
