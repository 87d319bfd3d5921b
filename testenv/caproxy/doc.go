// Package caproxy puts a CA-side rate limiter and fault injector in front of
// Pebble, which enforces no rate limits of its own. Tests point ACME clients
// (certfleet's issuer-workers, or acmez directly) at the proxy and assert
// against its counters: the CA's own view of what the fleet did, kept apart
// from — and written independently of — certfleet's ratelimit package, so the
// code under test cannot grade its own homework.
//
// # What it mimics
//
// The proxy behaves like Let's Encrypt's Boulder where a client can see it:
//
//   - Three GCRA limits, counted where Boulder counts them. NewOrdersPerAccount
//     (keyed by the JWS "kid") is checked and spent at newOrder.
//     CertificatesPerDomain (publicsuffix eTLD+1 of every identifier, "*."
//     stripped; an IP address counts as its /32 or /64 prefix, as Boulder
//     does) and CertificatesPerFQDNSet (the sorted, lower-cased,
//     de-duplicated identifier set) are only checked at newOrder and spent
//     when the certificate is issued. That is Boulder's split: its WFE's
//     checkNewOrderLimits runs the ratelimits package's
//     NewOrderLimitTransactions (NewOrdersPerAccount check-and-spend, the
//     certificate limits as check-only transactions) in one BatchSpend, and
//     its RA's countCertificateIssued, called right after the CA signs the
//     certificate, spends CertificatesPerDomainSpendOnlyTransactions and
//     CertificatesPerFQDNSetSpendOnlyTransaction, best effort: a spend-only
//     transaction is written only when it fits, never refuses anything, and
//     the excess of orders admitted together is not counted
//     (Stats.IssuedBeyondLimit). Each limit is a burst of Count refilled one
//     every Period/Count; the checks at newOrder pass or fail together
//     (Boulder's BatchSpend). The proxy sees issuance as a finalize Pebble
//     accepts (Pebble signs right after answering it) or the first answer
//     showing the order valid, whichever comes first, once per order.
//   - Denials are answered exactly as Boulder's WFE answers them: 429,
//     application/problem+json, type urn:ietf:params:acme:error:rateLimited,
//     Boulder's detail texts (DetailNewOrdersPerAccount and friends, taken from
//     boulder ratelimits/limiter.go Decision.Result and errors/errors.go), a
//     Retry-After header in whole seconds and a Link rel="help" to the
//     rate-limit documentation.
//   - Every response the proxy makes itself carries a fresh Replay-Nonce
//     fetched from Pebble and a Link rel="index" to the directory, so a
//     client's nonce pool survives a refusal.
//
// It differs from Boulder on purpose in a few places, all to make assertions
// exact: Retry-After is rounded up (Boulder rounds to the nearest second) and
// carries no 0–3% jitter, so a client that honours it is never early; a GCRA
// decision has no rounding slack; and there is no renewal exemption (Boulder
// lets an order for a previously issued identifier set skip the per-account
// and per-domain limits).
//
// # Reserve, forward, refund
//
// The limiter reserves (spends) NewOrdersPerAccount before forwarding a
// newOrder and refunds it unless Pebble answers 201, as Boulder's WFE refunds
// when the order is not created. That makes it exact under concurrency: never
// more orders reach Pebble than the account limit allows. The price is that a
// request checked while another one's reservation is in flight may be refused
// for capacity that is refunded a moment later.
//
// # Penalties
//
// Every Retry-After the proxy sends (a real denial or an injected 429) opens a
// penalty on one key until the advertised instant: the key the problem's
// detail names (Key(LimitCertificatesPerFQDNSet, set) for injected ones). A
// newOrder that arrives while a penalty on any of its keys is in force is
// recorded as a Violation — before the fault dice, since the client's
// behaviour is the same whatever the dice then say — and then handled
// normally (the limiter most likely refuses it again).
//
// # Faults
//
// One roll of a seeded PCG per eligible request (every newOrder, or every
// POST with Faults.AllPOSTs) picks at most one fault: an injected 429 (exact
// set wording), a 500 serverInternal, a timeout (the request is held, then the
// connection dropped without a response: hijacked and closed on HTTP/1.1, the
// stream reset on HTTP/2), or a delay before forwarding. Injected refusals
// never reach Pebble. Note that acmez itself retries a POST answered 5xx (three
// tries, each with a fresh nonce) and resends the same JWS after a transport
// error, so one client call can be several requests here. Pebble also refuses
// 5% of nonces by default (PEBBLE_WFE_NONCEREJECT) and clients resend those:
// per-request counts (faults, Slowed, PenaltyViolations) include such resends,
// Orders does not.
//
// Faults.UnavailablePolls is a deterministic fault of its own: the polls of
// every authorization after its first fetch are answered 503 that many
// times, as a CA's brief outage looks to a client waiting for validation.
//
// With Faults.AllPOSTs, faults hit finalize, polling, challenge and account
// POSTs too; a client retrying those may then create orders again, so counts
// of orders per certificate are no longer one. An injected 429 on such a POST
// names the identifier set when the proxy learnt it from the order's creation
// (order, finalize and authorization URLs), else the account (for newAccount,
// which has neither, Boulder's new-registrations-per-IP wording).
//
// # Pebble, Host and URLs
//
// No URL rewriting is needed. Pebble v2.10.3 (wfe/wfe.go) builds every URL it
// returns — the directory, Location, order/authorization/finalize URLs, Link
// headers, account URLs — with relativeEndpoint from the incoming request's
// Host (and https because the request arrived over TLS), and verifyJWS checks
// the JWS protected "url" against https://<request Host><RequestURI>. The
// proxy forwards with the client's Host header untouched and strips any
// X-Forwarded-* headers (Pebble would honour X-Forwarded-Proto), so Pebble
// speaks in the proxy's URLs and an ACME client works through it unchanged.
// One consequence: Pebble checks that a "kid" starts with
// https://<request Host>/my-account/, so an account URL learnt directly from
// Pebble is refused through the proxy and vice versa; register (or look up
// with onlyReturnExisting) through the proxy.
package caproxy
