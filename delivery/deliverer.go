package delivery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/seal"
)

// Writer writes records synchronously, each to its Topic (nil error: every
// record is durably written). *events.Producer implements it.
type Writer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// Recipients lists the registered recipients. *Store implements it.
type Recipients interface {
	List(ctx context.Context) ([]Recipient, error)
}

// Metrics counts what the worker delivers.
type Metrics struct {
	// Delivered counts records written, by reason (issued, recipient_added).
	Delivered *prometheus.CounterVec
	// Backfills counts finished backfills of added or rotated recipients.
	Backfills prometheus.Counter
}

// NewMetrics registers the delivery metrics on reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Delivered: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certfleet_worker_keys_delivered_total",
			Help: "Certificate keys sealed to a recipient and published on the delivery topic, by reason (issued, recipient_added)."}, []string{"reason"}),
		Backfills: prometheus.NewCounter(prometheus.CounterOpts{Name: "certfleet_worker_delivery_backfills_total",
			Help: "Backfills finished: the current certificates delivered to a recipient added or rotated."}),
	}
	if reg != nil {
		reg.MustRegister(m.Delivered, m.Backfills)
	}
	return m
}

// Deliverer seals an obtained certificate's key to every matching recipient
// and publishes the deliveries (it implements pipeline.Delivery). It reads
// the recipients for every certificate, so one removed receives nothing
// sealed after the removal commits.
type Deliverer struct {
	Recipients Recipients // required
	Writer     Writer     // required
	Topic      string     // default DefaultTopic
	Source     string     // ce_source; default Source
	Clock      clock.Clock
	Logger     *slog.Logger
	Metrics    *Metrics
}

// Deliver seals c's key to each recipient c matches and writes the records
// in one call. It returns nil when there is none. An error means nothing
// may have been written and the call should be retried (records written
// twice carry the same delivery id; readers are idempotent).
func (d *Deliverer) Deliver(ctx context.Context, c Certificate) error {
	rs, err := d.Recipients.List(ctx)
	if err != nil {
		return err
	}
	_, err = d.deliver(ctx, rs, c, ReasonIssued)
	return err
}

// deliver seals c to each of rs that it matches and writes the records.
func (d *Deliverer) deliver(ctx context.Context, rs []Recipient, c Certificate, reason string) (int, error) {
	var msgs []kafka.Message
	var names []string
	for _, r := range rs {
		if !r.Matches(c.Tenant, c.SANs) {
			continue
		}
		rec, err := Seal(r.Name, r.Key, c, reason)
		if err != nil {
			// The certificate does not make a valid record (it is the
			// worker's own, checked as cert_obtained is): retrying cannot
			// help, so it is logged and skipped, not retried for ever.
			d.logger().Error("cannot deliver the certificate", "certificate", c, "recipient", r.Name, "err", err)
			continue
		}
		m, err := Encode(rec, d.source(), clock.Or(d.Clock).Now())
		if err != nil {
			d.logger().Error("cannot deliver the certificate", "certificate", c, "recipient", r.Name, "err", err)
			continue
		}
		m.Topic = d.topic()
		msgs = append(msgs, m)
		names = append(names, r.Name)
	}
	if len(msgs) == 0 {
		return 0, nil
	}
	if err := d.Writer.WriteMessages(ctx, msgs...); err != nil {
		return 0, fmt.Errorf("delivery: publishing to %s: %w", d.topic(), err)
	}
	if d.Metrics != nil {
		d.Metrics.Delivered.WithLabelValues(reason).Add(float64(len(msgs)))
	}
	d.logger().Debug("key delivered", "certificate", c, "recipients", strings.Join(names, ","), "reason", reason)
	return len(msgs), nil
}

func (d *Deliverer) topic() string {
	if d.Topic == "" {
		return DefaultTopic
	}
	return d.Topic
}

func (d *Deliverer) source() string {
	if d.Source == "" {
		return Source
	}
	return d.Source
}

func (d *Deliverer) logger() *slog.Logger {
	if d.Logger == nil {
		return slog.Default()
	}
	return d.Logger
}

// CurrentCertificates pages through the current certificate of each
// identity. *certstore.Store implements it.
type CurrentCertificates interface {
	Current(ctx context.Context, after string, limit int) ([]certstore.Certificate, error)
}

// Backfill delivers the current certificates to recipients added or rotated
// since: every worker runs one, and a lease on the recipient's row lets one
// at a time work on a recipient. Keys are read back from the store with the
// fleet keyring (Sealer) and sealed to the recipient; the fleet keyring
// never leaves the worker.
type Backfill struct {
	Store     *Store              // required
	Certs     CurrentCertificates // required
	Sealer    seal.Sealer         // required: opens the stored keys
	Deliverer *Deliverer          // required
	Owner     string              // required: this worker
	// Lease is how long a claimed backfill is this worker's without
	// renewal; it is renewed after every page. Default 1 minute.
	Lease time.Duration
	// Interval between looks for waiting backfills. Default 2 s.
	Interval time.Duration
	// PageSize is the certificates read and published at once. Default 200.
	PageSize int
}

// Run looks for waiting backfills every Interval until ctx ends; errors are
// logged and the backfill tried again (a second pass delivers the same
// records, with the same ids).
func (b *Backfill) Run(ctx context.Context) {
	interval := b.Interval
	if interval <= 0 {
		interval = 2 * time.Second
	}
	for {
		for ctx.Err() == nil {
			did, err := b.Once(ctx)
			if err != nil && ctx.Err() == nil {
				b.Deliverer.logger().Warn("key delivery backfill", "err", err)
			}
			if !did || err != nil {
				break
			}
		}
		if clock.Sleep(ctx, interval) != nil {
			return
		}
	}
}

// Once claims one waiting backfill and runs it to the end. It reports
// whether there was one.
func (b *Backfill) Once(ctx context.Context) (bool, error) {
	lease := b.Lease
	if lease <= 0 {
		lease = time.Minute
	}
	size := b.PageSize
	if size <= 0 {
		size = 200
	}
	r, ok, err := b.Store.claimBackfill(ctx, b.Owner, lease)
	if err != nil || !ok {
		return false, err
	}
	log := b.Deliverer.logger().With("recipient", r.Name, "version", r.Version, "key_id", r.Key.KeyID()[:16])
	t0, sent, after := time.Now(), 0, ""
	for {
		page, err := b.Certs.Current(ctx, after, size)
		if err != nil {
			return true, err
		}
		if len(page) == 0 {
			break
		}
		after = page[len(page)-1].Identity
		for _, sc := range page {
			c, err := b.open(ctx, sc)
			if err != nil {
				log.Error("cannot deliver a stored certificate", "identity", sc.Identity, "serial", sc.Serial, "err", err)
				continue
			}
			if !r.Matches(c.Tenant, c.SANs) {
				continue
			}
			n, err := b.Deliverer.deliver(ctx, []Recipient{r}, c, ReasonRecipientAdded)
			if err != nil {
				return true, err
			}
			sent += n
		}
		still, err := b.Store.renewBackfill(ctx, r, b.Owner, lease)
		if err != nil {
			return true, err
		}
		if !still {
			log.Info("backfill given up: the recipient changed, went, or another worker took it over", "delivered", sent)
			return true, nil
		}
	}
	if err := b.Store.finishBackfill(ctx, r, b.Owner); err != nil {
		return true, err
	}
	if b.Deliverer.Metrics != nil {
		b.Deliverer.Metrics.Backfills.Inc()
	}
	log.Info("current certificates delivered to the recipient", "delivered", sent, "took", time.Since(t0).Round(time.Millisecond))
	return true, nil
}

// open reads a stored certificate back into a Certificate with its key.
func (b *Backfill) open(ctx context.Context, sc certstore.Certificate) (Certificate, error) {
	leaf, err := leafOf(sc.ChainPEM)
	if err != nil {
		return Certificate{}, err
	}
	key, err := seal.OpenPrivateKey(ctx, b.Sealer, sc.SealedKey, seal.AAD(seal.PurposeCertKey, sc.Identity, sc.RequestID))
	if err != nil {
		return Certificate{}, err
	}
	sans := make([]string, len(leaf.DNSNames))
	for i, n := range leaf.DNSNames {
		sans[i] = strings.ToLower(n)
	}
	if events.Identity(sans) != sc.Identity {
		return Certificate{}, errors.New("the leaf's names are not the stored identity's")
	}
	return Certificate{Identity: sc.Identity, RequestID: sc.RequestID, Tenant: sc.Tenant, SANs: sans, Serial: sc.Serial,
		NotBefore: sc.NotBefore, NotAfter: sc.NotAfter, ChainPEM: sc.ChainPEM, Key: key}, nil
}
