package pipeline

// The problem types of the cert_failed events the worker raises itself, for
// failures the CA did not describe. The events contract fixes only their form
// ("urn:certfleet:error:<name>", see events.CertFailed); these names are the
// worker's own.
const (
	// problemTooManyAttempts: the request was re-published MaxAttempts times.
	problemTooManyAttempts = "urn:certfleet:error:tooManyAttempts"
	// problemBadRequest: the request names no rate-limit transaction the
	// catalogue can build (for example a name it cannot count).
	problemBadRequest = "urn:certfleet:error:badRequest"
	// problemBadCertificate: the CA's certificate failed the event's own checks.
	problemBadCertificate = "urn:certfleet:error:badCertificate"
	// problemOrderFailed: a permanent ACME failure without a problem type.
	problemOrderFailed = "urn:certfleet:error:orderFailed"
	// problemCAUnavailable: retryable failures (5xx, network) without a
	// problem type persisted through the in-place retries.
	problemCAUnavailable = "urn:certfleet:error:caUnavailable"
)
