package acmeissuer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/db"
)

// HTTP01Path is where the CA fetches HTTP-01 key authorizations (RFC 8555 §8.3).
const HTTP01Path = "/.well-known/acme-challenge/"

// maxTokenLen bounds accepted tokens; real ones are 43 characters (32 bytes in
// base64url), and RFC 8555 asks for at least 128 bits of entropy (22 characters).
const maxTokenLen = 128

// ChallengeStore keeps pending HTTP-01 key authorizations in the
// acme_http01_challenges table, so any worker can answer the CA: the one that
// ordered writes, whichever one the CA reaches reads. Safe for concurrent use.
type ChallengeStore struct {
	db  *db.DB
	ttl time.Duration
}

// NewChallengeStore returns a store over d. ttl is how long a challenge is
// served if its cleanup never runs (a crashed worker), in whole seconds;
// default (and for anything under a second) 1 hour.
func NewChallengeStore(d *db.DB, ttl time.Duration) *ChallengeStore {
	if ttl < time.Second {
		ttl = time.Hour
	}
	return &ChallengeStore{db: d, ttl: ttl}
}

// Put stores (or replaces) the key authorization for token until now+ttl.
func (s *ChallengeStore) Put(ctx context.Context, token, keyAuth, identifier string) error {
	if !ValidToken(token) {
		return fmt.Errorf("%w: malformed challenge token", ErrInvalidRequest)
	}
	_, err := s.db.Pool().Exec(ctx, `
		INSERT INTO acme_http01_challenges (token, key_authorization, identifier, expires_at)
		VALUES ($1, $2, $3, now() + $4::INT8 * INTERVAL '1 second')
		ON CONFLICT (token) DO UPDATE SET key_authorization = excluded.key_authorization,
			identifier = excluded.identifier, expires_at = excluded.expires_at`,
		token, keyAuth, identifier, int64(s.ttl/time.Second))
	if err != nil {
		return fmt.Errorf("acmeissuer: storing the HTTP-01 challenge for %s: %w", identifier, err)
	}
	return nil
}

// Get returns the unexpired key authorization of token and the identifier it
// was issued for; found is false when there is none.
func (s *ChallengeStore) Get(ctx context.Context, token string) (keyAuth, identifier string, found bool, err error) {
	if !ValidToken(token) {
		return "", "", false, nil
	}
	err = s.db.Pool().QueryRow(ctx, `
		SELECT key_authorization, identifier FROM acme_http01_challenges WHERE token = $1 AND expires_at > now()`,
		token).Scan(&keyAuth, &identifier)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", false, nil
	}
	if err != nil {
		return "", "", false, fmt.Errorf("acmeissuer: reading an HTTP-01 challenge: %w", err)
	}
	return keyAuth, identifier, true, nil
}

// Delete removes token's challenge; deleting a missing one is not an error.
func (s *ChallengeStore) Delete(ctx context.Context, token string) error {
	if _, err := s.db.Pool().Exec(ctx, `DELETE FROM acme_http01_challenges WHERE token = $1`, token); err != nil {
		return fmt.Errorf("acmeissuer: deleting an HTTP-01 challenge: %w", err)
	}
	return nil
}

// DeleteExpired removes challenges that expired before now and reports how
// many; run it now and then from any one worker.
func (s *ChallengeStore) DeleteExpired(ctx context.Context) (int64, error) {
	tag, err := s.db.Pool().Exec(ctx, `DELETE FROM acme_http01_challenges WHERE expires_at <= now()`)
	if err != nil {
		return 0, fmt.Errorf("acmeissuer: deleting expired HTTP-01 challenges: %w", err)
	}
	return tag.RowsAffected(), nil
}

// ValidToken reports whether t looks like an ACME token: 1 to 128 characters
// of the base64url alphabet.
func ValidToken(t string) bool {
	if len(t) == 0 || len(t) > maxTokenLen {
		return false
	}
	for _, c := range []byte(t) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// HTTP01Solver is the acmez.Solver for http-01 over a ChallengeStore.
type HTTP01Solver struct{ Store *ChallengeStore }

var _ acmez.Solver = HTTP01Solver{}

// Present stores the challenge's key authorization.
func (s HTTP01Solver) Present(ctx context.Context, ch acme.Challenge) error {
	return s.Store.Put(ctx, ch.Token, ch.KeyAuthorization, ch.Identifier.Value)
}

// CleanUp deletes it.
func (s HTTP01Solver) CleanUp(ctx context.Context, ch acme.Challenge) error {
	return s.Store.Delete(ctx, ch.Token)
}

// HTTP01Handler is an HTTP01Responder over store with the default bounds;
// requests outside HTTP01Path go to next (404 when next is nil).
func HTTP01Handler(store *ChallengeStore, next http.Handler) http.Handler {
	return &HTTP01Responder{Store: store, Next: next}
}
