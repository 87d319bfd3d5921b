package pipeline

import (
	"strconv"

	"github.com/segmentio/kafka-go"
)

// HeaderFailures is the header of a re-queued request that counts its
// failed attempts (retryable ACME failures re-queued by retryLater), as a
// decimal. The payload's "attempt" counts every re-publication, deferrals
// included (its ce_id depends on it, so it must keep growing); a deferral
// (a limit, the CA's 429, another worker's claim) is not a failure, so it
// copies the header unchanged. MaxAttempts and the retry backoff read this
// count. A record without it (a producer's, or one re-queued before the
// header existed) has failed 0 times.
const HeaderFailures = "certfleet_failures"

// maxFailuresHeader bounds what is read from the header: far above any
// MaxAttempts, and the backoff shift is capped anyway.
const maxFailuresHeader = 1 << 20

// failuresOf reads m's failure count: 0 when absent or unreadable.
func failuresOf(m kafka.Message) int {
	for _, h := range m.Headers {
		if h.Key != HeaderFailures {
			continue
		}
		n, err := strconv.Atoi(string(h.Value))
		if err != nil || n < 0 {
			return 0
		}
		return min(n, maxFailuresHeader)
	}
	return 0
}

// withFailures sets m's failure count header.
func withFailures(m kafka.Message, n int) kafka.Message {
	hs := make([]kafka.Header, 0, len(m.Headers)+1)
	for _, h := range m.Headers {
		if h.Key != HeaderFailures {
			hs = append(hs, h)
		}
	}
	m.Headers = append(hs, kafka.Header{Key: HeaderFailures, Value: []byte(strconv.Itoa(n))})
	return m
}
