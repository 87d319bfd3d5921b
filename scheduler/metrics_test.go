package scheduler_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/scheduler"
)

func TestTickMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := scheduler.NewMetrics(reg)
	r := newRig(t, func(c *scheduler.Config) {
		c.Metrics = m
		c.Budget = ratelimit.Limit{Count: 2, Period: time.Second, Burst: 2}
		c.Horizon = time.Second
	})
	r.manage("t", 5)
	r.clk.Advance(90 * time.Second)
	r.tick()
	if got := value(m.DueBacklog); got != 5 {
		t.Errorf("due backlog %v", got)
	}
	if got := value(m.MostOverdue); got != 90 {
		t.Errorf("most overdue %v s", got)
	}
	if got := value(m.Emitted.WithLabelValues("new")); got != 2 {
		t.Errorf("emitted %v", got)
	}
	for range 3 { // backlog is measured at the start of each tick
		r.clk.Advance(time.Second)
		r.tick()
	}
	if got := value(m.DueBacklog); got != 0 {
		t.Errorf("backlog after draining %v", got)
	}
	if mfs, err := reg.Gather(); err != nil || len(mfs) < 6 {
		t.Errorf("gathered %d metric families: %v", len(mfs), err)
	}
}

// value reads a single-series gauge or counter.
func value(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var d dto.Metric
	_ = (<-ch).Write(&d)
	if d.Gauge != nil {
		return d.Gauge.GetValue()
	}
	return d.Counter.GetValue()
}
