package events

import "github.com/segmentio/kafka-go"

// DeadLetterRecord returns m, unchanged but for the certfleet_dlq_* headers
// describing d, addressed to the dead-letter topic. Consumers other than
// Subscriber (the issuer-worker) use it so every DLQ record has one shape,
// readable with ReadDeadLetter.
func DeadLetterRecord(topic string, m kafka.Message, d DeadLetter) kafka.Message {
	return deadLetterRecord(topic, m, d)
}
