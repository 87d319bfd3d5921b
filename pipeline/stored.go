package pipeline

import (
	"encoding/json"
	"fmt"

	"github.com/segmentio/kafka-go"
)

// storedRecord is how an outcome event is kept in the database: the exact
// record, so a redelivered request re-publishes identical bytes and ce_id.
type storedRecord struct {
	Key     []byte         `json:"key"`
	Value   []byte         `json:"value"`
	Headers []kafka.Header `json:"headers"`
}

func encodeStored(m kafka.Message) ([]byte, error) {
	return json.Marshal(storedRecord{Key: m.Key, Value: m.Value, Headers: m.Headers})
}

func decodeStored(b []byte, topic string) (kafka.Message, error) {
	var s storedRecord
	if err := json.Unmarshal(b, &s); err != nil {
		return kafka.Message{}, fmt.Errorf("decoding stored outcome: %w", err)
	}
	return kafka.Message{Topic: topic, Key: s.Key, Value: s.Value, Headers: s.Headers}, nil
}
