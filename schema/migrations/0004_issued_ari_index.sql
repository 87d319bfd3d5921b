-- 0004: find the certificate an ARI renewal replaces by its ARI certificate id.
CREATE INDEX IF NOT EXISTS issued_certificates_ari_idx ON issued_certificates (ari_cert_id);
