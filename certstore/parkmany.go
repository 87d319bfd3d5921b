package certstore

import (
	"context"
	"fmt"

	"github.com/google/uuid"
)

// ParkMany parks every p as Park does, in one statement: a worker reading
// past a backlog parks its records in batches, not one round trip each.
// When ps holds a request id more than once, the last one wins, as with
// successive Parks. All or nothing.
func (s *Store) ParkMany(ctx context.Context, ps []Parked) error {
	if len(ps) == 0 {
		return nil
	}
	if err := s.park(ctx, ps); err != nil {
		return fmt.Errorf("certstore: parking %d requests: %w", len(ps), err)
	}
	return nil
}

// park is Park and ParkMany's one statement.
func (s *Store) park(ctx context.Context, ps []Parked) error {
	last := make(map[string]int, len(ps))
	for i, p := range ps {
		last[p.RequestID] = i
	}
	n := len(last)
	ids, versions, identities, dues, records := make([]string, 0, n), make([]uuid.UUID, 0, n), make([]string, 0, n), make([]any, 0, n), make([][]byte, 0, n)
	for i, p := range ps {
		if last[p.RequestID] != i {
			continue
		}
		ids, versions, identities, dues, records = append(ids, p.RequestID), append(versions, uuid.New()), append(identities, p.Identity), append(dues, p.Due), append(records, p.Record)
	}
	_, err := s.db.Pool().Exec(ctx, `
INSERT INTO parked_requests (request_id, version, identity, due_at, record)
SELECT * FROM unnest($1::TEXT[], $2::UUID[], $3::TEXT[], $4::TIMESTAMPTZ[], $5::BYTEA[])
ON CONFLICT (request_id) DO UPDATE
   SET version = excluded.version, identity = excluded.identity, due_at = excluded.due_at, record = excluded.record,
       relay_owner = '', relay_until = NULL`, ids, versions, identities, dues, records)
	return err
}
