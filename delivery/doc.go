// Package delivery hands certificate private keys to the places that use
// them, sealed end to end: each recipient registers a public key, and every
// certificate it matches is delivered on the delivery topic with its key
// sealed to that key with HPKE (RFC 9180, crypto/hpke). The fleet keyring
// never leaves the workers, and no delivery opens with it: a delivery opens
// only with the recipient's private key, which never reaches the database.
//
// It owns:
//   - recipients (Store over delivery_recipients, every change audited in
//     delivery_recipient_audit) and what a recipient matches (tenants and SAN
//     patterns);
//   - the delivery format, version 1 (Record, Encode, Decode; the schema is
//     schema/events/v1/key.delivered.json, described in
//     schema/events/README.md): CloudEvents binary mode, the public chain and
//     the sealed PKCS#8 key, with the certificate's identity, serial and chain
//     bound as HPKE additional data (AAD);
//   - sealing and opening (Seal, Open) with one suite:
//     DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, base mode;
//   - the worker's side: Deliverer (the pipeline's Delivery: a certificate
//     just obtained, sealed to each matching recipient before it is stored)
//     and Backfill (the current certificates, sealed to a recipient added or
//     rotated since, by one worker at a time under a lease).
//
// The reader's side, the edge agent that writes NAME.crt and NAME.key, is
// package delivery/agent. Nothing here logs, returns or publishes a key in
// the clear: Certificate's String and LogValue leave the key out, and Encode
// refuses a value containing "PRIVATE KEY".
package delivery
