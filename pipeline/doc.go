// Package pipeline is the issuer-worker's job: it turns issuance requests
// from Kafka into certificates and events, one job per record, with at most
// Config.Concurrency orders in flight per process.
//
// A job runs these steps (job.go), and each ends the record in exactly one way:
//
//	decode + validate   bad record           -> dead-letter topic, with reason and origin headers
//	wait for not_before (per record, holding no order slot, so a partition never stalls)
//	claim the request   done before          -> re-publish the stored event (same ce_id), order nothing
//	                    another worker has it -> its lease ends within one Lease: wait, claim again
//	                                             (a dead owner's order is continued at once), else
//	                                             defer until its lease ends (not a failure)
//	                    failures >= MaxAttempts -> cert_failed(tooManyAttempts), recorded on the claim
//	                                             (failures: HeaderFailures; deferrals are not failures)
//	while the job holds the claim, its heartbeat renews the lease (heartbeat.go); a
//	claim found taken over stops the order attempt, and the job ends publishing nothing
//	choose the CA (failover.go): the request's CA, or the first of its group
//	  whose breaker is closed and whose limits do not defer it beyond
//	  FailoverAfter; an order already placed stays at its CA
//	                                           none now -> issuance_deferred (CAUnavailable or the limit) + retry topic
//	spend rate-limit tokens (all or nothing)   denied -> book the next free slot (Config.Booker); within
//	                                           MaxInlineWait: wait for it in place; later: issuance_deferred,
//	                                           parked until the slot with the booking on the claim (park.go),
//	                                           relayed to the retry topic when due (ParkRelay), ordered then
//	                                           without spending again
//	  (CertificatesPerDomain and CertificatesPerFQDNSet are spent with the CA's measured lead: lead.go)
//	order via acmeissuer                       429 -> shared penalty, refund, defer to Retry-After (or the group's next CA)
//	                                           5xx/network -> retry with backoff (the group's next CA once the
//	                                           CA's breaker opens), then defer with cert_failed(retryable)
//	                                           other ACME problem -> cert_failed (permanent)
//	(the order slot, held from the claim on, is given back here: the CA's part is done)
//	seal the key; deliver it to its recipients (Config.Delivery, optional:
//	sealed to each with HPKE, package delivery), retried until published
//	store certificate + outcome in one transaction
//	publish cert_obtained
//	mark the record done; offsets are committed per partition only up to the
//	lowest unfinished record (offsets.go), so a crash never skips a job.
//
// Infrastructure failures (database, Kafka) are retried with capped,
// jittered exponential backoff (cenkalti/backoff/v4) inside the job; a job
// that cannot finish before shutdown is not marked done and is redelivered.
//
// The package owns no storage: claims and certificates are certstore's, tokens
// ratelimit's, ACME acmeissuer's, the wire format events'. It depends on them
// through the small interfaces in deps.go, so its decisions are unit-tested
// with in-memory twins and its wiring against testenv.
package pipeline
