// Package chaos holds certfleet's proof under load and failure: scenarios
// that break things on purpose while real issuer-worker processes issue
// certificates from Pebble through the CA-side limiter and fault injector
// (testenv/caproxy), and assert against the CA's own view.
//
// The scenarios, each run by its own test:
//
//   - TestWorkerKills: kill -9 one of three workers several times during the
//     run, each time one with orders in flight (and start a replacement each
//     time); every order in flight at a kill is continued by another worker
//     within 30 s of the kill and never placed a second time;
//   - TestKafkaRestart and TestDatabaseRestart: restart the broker or the
//     database in the middle of the run;
//   - TestCAFaults: the CA answers 30% of orders with 429 rateLimited and a
//     Retry-After, and 10% with 500;
//   - TestHostileInput: ten hostile records (malformed, oversized, invalid or
//     hostile names, bad headers, unknown fields, duplicates) per valid one;
//   - TestCAFailover: two CAs (a proxy each) and requests naming the group
//     of both; the preferred CA's proxy stops mid-run (connections refused)
//     and starts again: requests move to the second CA while it is down, the
//     orders the outage caught are continued at the first, and new requests
//     return to it once its breaker closes;
//   - TestIncidentReissue: a managed fleet (ci 200, full 2,000 certificates)
//     under a time-scaled account limit; `certfleet reissue` replaces all of
//     it: the up-front estimate within 10% of the time taken, at least 95%
//     of the rate it allows, no 429 from the CA; then Pebble's ARI moves
//     every window into the past and the scheduler alone reissues the fleet
//     again, with no 429 (it has its own invariants, not verify's).
//
// Every scenario asserts the same invariants (see verify): every valid job
// ends with a cert_obtained event, duplicates only with the same event id;
// nothing is lost (valid jobs obtained, hostile records dead-lettered once);
// CA orders (with two CAs, both together) at most jobs plus kills (the orders a killed worker had in flight
// are continued by the next owner of their requests, so only one killed
// between the CA's 201 and its record could be placed twice); no order
// reaches the CA for a key while
// a Retry-After the CA sent for it is in force; the limiter never over-spends
// (the CA enforces the workers' own per-account limit plus 10% and answers no
// 429 of its own); no key material on any topic or in any log; no worker
// crashes, and every worker still running stops cleanly on SIGTERM.
//
// TestCAFriendliness is the CA-friendliness run: Let's Encrypt-shaped limits
// scaled in time (300 orders per 3 minutes per account, 50 certificates per 7
// minutes per registered domain, counted at issuance) enforced by the CA,
// 2,000 jobs (300 of them under 3 registered domains), the workers configured
// at exactly those limits; it fails on any 429 the CA sends or certificate it
// issues beyond a limit, and reports the fraction of the allowed rate used.
//
// The scenarios restart services of the shared test stack, so they never run
// beside other packages: CERTFLEET_CHAOS selects the size ("ci": the small
// versions `make test` runs after the other packages; "full": `make chaos`)
// and without it the tests skip. CERTFLEET_FRIENDLINESS=1 runs
// TestCAFriendliness (`make friendliness`, about 18 minutes).
package chaos
