package scheduler_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/certfleet/certfleet/internal/benchmem"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/scheduler"
	"github.com/certfleet/certfleet/testenv"
)

// seed fills managed_certificates server-side with n rows over 10 tenants,
// every tenth one due an hour ago and the rest in 30 days, and analyses the
// table so the planner sees its real size.
func seed(b *testing.B, d *db.DB, n int) {
	b.Helper()
	ctx := context.Background()
	start := time.Now()
	_, err := d.Pool().Exec(ctx, `
INSERT INTO managed_certificates (identity, sans, tenant, ca_directory, next_renewal_at, planned_at)
SELECT encode(sha256(convert_to('c' || i || '.bench.example.com', 'UTF8')), 'hex'),
       ARRAY['c' || i || '.bench.example.com'], 't' || (i % 10), 'https://ca.example.net/dir', due, due
FROM (SELECT i, CASE WHEN i % 10 = 0 THEN now() - INTERVAL '1 hour' ELSE now() + INTERVAL '30 days' END AS due
      FROM generate_series(1, $1::INT) AS i) AS s`, n)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := d.Pool().Exec(ctx, `ANALYZE managed_certificates`); err != nil {
		b.Fatal(err)
	}
	b.Logf("seeded %d rows in %v", n, time.Since(start).Round(time.Millisecond))
}

func benchScheduler(b *testing.B, d *db.DB, w events.MessageWriter, topics events.Topics) (*scheduler.Scheduler, func() scheduler.LeaseState) {
	s, err := scheduler.New(scheduler.Config{DB: d, Writer: w, Holder: "bench", Topics: topics, Logger: quiet,
		Budget: ratelimit.Limit{Count: 1_000_000, Period: time.Second, Burst: 1_000_000}, BatchSize: 1000})
	if err != nil {
		b.Fatal(err)
	}
	ls, err := scheduler.NewLease(d, scheduler.LeaseName, "bench", time.Hour).TryAcquire(context.Background())
	if err != nil || !ls.Held {
		b.Fatalf("lease %+v %v", ls, err)
	}
	return s, func() scheduler.LeaseState { return ls }
}

// BenchmarkTick measures the targets: emitting the 100,000 due jobs
// of a 1,000,000-certificate fleet to Kafka (target at least 0.8x the
// floor's jobs/s and at most 96 MiB peak RSS; read-s, write-s and mark-s are
// the busy time of the tick's pipeline stages, mark-s summed over its
// concurrent marks) against writing as many jobs to Kafka
// with no database (baseline_kafka_only), and the cost of a tick with nothing
// due at 10,000 (baseline) and 1,000,000 certificates (target: flat).
func BenchmarkTick(b *testing.B) {
	s := testenv.Require(b)
	ctx := context.Background()
	open := func() *db.DB {
		d, _ := freshDB(b)
		return d
	}
	topics := events.Topics{Requests: fmt.Sprintf("bench.sched.req.%d", time.Now().UnixNano())}
	if err := testenv.CreateTopic(ctx, s.KafkaBrokers, topics.Requests, 4); err != nil {
		b.Fatal(err)
	}
	producer, err := events.NewProducer(events.ProducerConfig{Brokers: s.KafkaBrokers, Topics: topics, BatchSize: 1000})
	if err != nil {
		b.Fatal(err)
	}
	defer producer.Close()

	small := open()
	seed(b, small, 10_000)
	// Nothing due in the small fleet: emit its 1,000 due rows first.
	sm, sml := benchScheduler(b, small, &memWriter{}, topics)
	if _, err := sm.Tick(ctx, sml); err != nil {
		b.Fatal(err)
	}
	idle := func(sc *scheduler.Scheduler, l func() scheduler.LeaseState) func(*testing.B) {
		return func(b *testing.B) {
			for b.Loop() {
				res, err := sc.Tick(ctx, l)
				if err != nil || !res.Idle {
					b.Fatalf("%+v %v", res, err)
				}
			}
		}
	}
	b.Run("idle_tick/baseline", idle(sm, sml))

	big := open()
	seed(b, big, 1_000_000)
	bs, bl := benchScheduler(b, big, producer, topics)
	// The scheduler's emission against its floor: the same number of jobs
	// written to Kafka through the same producer in the same batches, with
	// no database at all. The ratio is what selecting (fairly, by index),
	// checking for issued certificates and marking (fenced) costs on top of
	// the Kafka writes that cannot be avoided.
	b.Run("emit_100k_due_of_1M/scheduler", func(b *testing.B) {
		mem := benchmem.Start()
		for i := 0; i < b.N; i++ {
			// Every run (-count too) starts from the same 100,000 due rows
			// and a vacuumed table, outside the timer.
			b.StopTimer()
			tag, err := big.Pool().Exec(ctx, `UPDATE managed_certificates SET next_renewal_at = planned_at, request_id = NULL
				WHERE request_id IS NOT NULL`)
			if err != nil {
				b.Fatal(err)
			}
			if tag.RowsAffected() > 0 {
				if _, err := big.Pool().Exec(ctx, `VACUUM ANALYZE managed_certificates`); err != nil {
					b.Fatal(err)
				}
			}
			b.StartTimer()
			start := time.Now()
			res, err := bs.Tick(ctx, bl)
			if err != nil || res.Emitted != 100_000 || res.Remaining {
				b.Fatalf("%+v %v", res, err)
			}
			b.ReportMetric(float64(res.Emitted)/time.Since(start).Seconds(), "jobs/s")
			// Where the time goes: each pipeline stage's busy time.
			b.ReportMetric(res.Busy.Read.Seconds(), "read-s")
			b.ReportMetric(res.Busy.Write.Seconds(), "write-s")
			b.ReportMetric(res.Busy.Mark.Seconds(), "mark-s")
		}
		b.StopTimer()
		mem.Report(b, false)
	})
	b.Run("emit_100k_due_of_1M/baseline_kafka_only", func(b *testing.B) {
		mem := benchmem.Start()
		for i := 0; i < b.N; i++ {
			start := time.Now()
			if err := publishOnly(ctx, producer, topics.Requests, 100_000, 1000); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(100_000/time.Since(start).Seconds(), "jobs/s")
		}
		b.StopTimer()
		mem.Report(b, false)
	})
	// Right after the emission the due index still holds the 100,000 old
	// entries of the rows just marked (PostgreSQL MVCC) until vacuum runs.
	b.Run("idle_tick/fleet_1M_before_vacuum", idle(bs, bl))
	if _, err := big.Pool().Exec(ctx, `VACUUM ANALYZE managed_certificates`); err != nil {
		b.Fatal(err)
	}
	b.Run("idle_tick/fleet_1M", idle(bs, bl))
}

// publishOnly builds n issuance requests shaped like the scheduler's (same
// payload fields, fencing header) and writes them in batches of batch with
// w, one batch at a time as a tick does.
func publishOnly(ctx context.Context, w events.MessageWriter, topic string, n, batch int) error {
	now := time.Now().UTC()
	run := time.Now().UnixNano()
	msgs := make([]kafka.Message, 0, batch)
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("c%d.floor%d.example.com", i, run)
		ev, err := events.New("certfleet/scheduler", now, &events.IssuanceRequest{
			RequestID: scheduler.RequestID(events.Identity([]string{name}), now), SANs: []string{name}, Tenant: "t" + strconv.Itoa(i%10),
			KeyType: events.KeyECDSAP256, CA: "https://ca.example.net/dir", Reason: events.ReasonNew, Priority: 5,
		})
		if err != nil {
			return err
		}
		m, err := events.Encode(ev)
		if err != nil {
			return err
		}
		m.Topic = topic
		m.Headers = append(m.Headers, kafka.Header{Key: scheduler.HeaderFencingToken, Value: []byte("1")})
		msgs = append(msgs, m)
		if len(msgs) == batch || i == n-1 {
			if err := w.WriteMessages(ctx, msgs...); err != nil {
				return err
			}
			msgs = msgs[:0]
		}
	}
	return nil
}
