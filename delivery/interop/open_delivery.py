#!/usr/bin/env python3
"""Open a certfleet key delivery (format v1) outside Go, with a standard HPKE library.

    python3 -m pip install hpke==0.3.2        # RFC 9180 over pyca/cryptography
    python3 open_delivery.py RECIPIENT.key RECORD.json > NAME.key

RECIPIENT.key is the recipient's private key ('certfleet recipient keygen' writes it: PKCS#8 PEM,
P-256). RECORD.json is the value of one record of the delivery topic
(certfleet.certificates.deliveries) whose recipient_key_id is that key's. The certificate
chain is the record's chain_pem; this prints the private key as PKCS#8 PEM after checking that
it is the leaf's. schema/events/README.md ("Key deliveries") describes the format.
"""
import base64
import hashlib
import json
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hpke import Suite__DHKEM_P256_HKDF_SHA256__HKDF_SHA256__AES_256_GCM as Suite

INFO = b"certfleet key delivery v1"
SUITE = (0x0010, 0x0001, 0x0002)  # DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM


def open_delivery(recipient_key_pem: bytes, record: dict):
    """Returns the certificate's private key, or raises (InvalidTag: not sealed to this key,
    or the record was altered)."""
    if (record["kem_id"], record["kdf_id"], record["aead_id"]) != SUITE:
        raise ValueError("unknown HPKE suite")
    recipient = serialization.load_pem_private_key(recipient_key_pem, password=None)
    chain_sha256 = hashlib.sha256(record["chain_pem"].encode("utf-8")).hexdigest()
    aad = b"\n".join([INFO, record["identity"].encode(), record["serial"].encode(), chain_sha256.encode()])
    der = Suite.open(base64.b64decode(record["enc"]), recipient, INFO, aad, base64.b64decode(record["ciphertext"]))
    key = serialization.load_der_private_key(der, password=None)
    leaf = x509.load_pem_x509_certificate(record["chain_pem"].encode("utf-8"))
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(serialization.Encoding.DER, spki) != key.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise ValueError("the opened key is not the leaf's")
    return key


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1], "rb") as f:
        recipient_key_pem = f.read()
    with open(sys.argv[2], "rb") as f:
        record = json.load(f)
    key = open_delivery(recipient_key_pem, record)
    sys.stdout.buffer.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))


if __name__ == "__main__":
    main()
