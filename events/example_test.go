package events_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
)

// Example provisions the topics, publishes an issuance request and handles
// it with a subscriber. It needs a running Kafka (`go run ./cmd/testenv
// up`), so go test compiles it without running it; the integration tests in
// producer_test.go and subscriber_test.go run the same steps against testenv.
func Example() {
	ctx := context.Background()
	brokers := []string{"127.0.0.1:19092"}
	topics := events.DefaultTopics()

	// Topics: explicit partitions, safe to run on every start.
	client := &kafka.Client{Addr: kafka.TCP(brokers...)}
	if err := events.Provision(ctx, client, topics.Specs(6, 1)...); err != nil {
		log.Fatal(err)
	}

	producer, err := events.NewProducer(events.ProducerConfig{Brokers: brokers, Topics: topics})
	if err != nil {
		log.Fatal(err)
	}
	defer producer.Close()

	req, err := events.New("//example/upstream", time.Now(), &events.IssuanceRequest{
		RequestID: "order-1234",
		SANs:      []string{"example.com", "www.example.com"},
		Tenant:    "acme-corp",
		KeyType:   events.KeyECDSAP256,
		CA:        "letsencrypt",
		Reason:    events.ReasonNew,
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := producer.Publish(ctx, req); err != nil { // to topics.Requests
		log.Fatal(err)
	}

	sub, err := events.NewSubscriber(events.SubscriberConfig{
		Brokers:         brokers,
		GroupID:         "example",
		Topics:          []string{topics.Requests},
		DeadLetter:      producer,
		DeadLetterTopic: topics.DLQ,
	})
	if err != nil {
		log.Fatal(err)
	}
	done := make(chan struct{}, 1)
	go func() {
		<-done
		// Graceful: finishes the event in hand, commits it, leaves the group.
		// Run then returns nil.
		sub.Close()
	}()
	err = sub.Run(ctx, func(ctx context.Context, e events.Event) error {
		switch d := e.Data.(type) {
		case *events.IssuanceRequest:
			fmt.Println("request", d.RequestID, "for", d.SANs, "key", e.Key())
			select { // one is enough for the example
			case done <- struct{}{}:
			default:
			}
		case *events.CertObtained:
			fmt.Println("certificate", d.Serial)
		}
		return nil // success: the offset is committed
	})
	if err != nil {
		log.Fatal(err)
	}
}
