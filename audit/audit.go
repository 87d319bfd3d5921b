// Package audit owns certfleet's audit trail, table audit_events
// (schema/migrations/0012_audit.sql): one append-only row per act an auditor
// asks about (a key export, a dead letter replayed, a penalty cleared, an
// override changed, a certificate issued).
//
// Who acted is the database session's identity, read by the INSERT itself
// (session_user and current_user): the role the connection authenticated as,
// which a client cannot choose by setting $USER. The client's own user@host
// is kept beside it (OSUser) for context only.
//
// The package only INSERTs and SELECTs; nothing in certfleet updates a row,
// and rows are deleted only by the retention job when an operator sets an
// audit age (package retention; default: kept for ever).
package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Action is what was done; the values are the action column's.
type Action string

// The audited actions.
const (
	KeyExport       Action = "key_export"       // certfleet export unsealed a stored key
	DLQReplay       Action = "dlq_replay"       // certfleet dlq replay sent a dead letter back
	PenaltyClear    Action = "penalty_clear"    // certfleet penalty clear lifted a CA penalty
	OverrideCreate  Action = "override_create"  // certfleet override set created an override
	OverrideUpdate  Action = "override_update"  // certfleet override set --id changed one
	OverrideDisable Action = "override_disable" // certfleet override disable
	OverrideDelete  Action = "override_delete"  // certfleet override delete
	Issuance        Action = "issuance"         // a worker stored a certificate it obtained
)

// Actions lists every action, in the order above.
var Actions = []Action{KeyExport, DLQReplay, PenaltyClear, OverrideCreate, OverrideUpdate, OverrideDisable, OverrideDelete, Issuance}

// Valid reports whether a is one of Actions.
func (a Action) Valid() bool {
	for _, b := range Actions {
		if a == b {
			return true
		}
	}
	return false
}

// Event is one audit row. Record fills ID, At, DBUser and DBRole; the
// caller fills the rest (empty where it does not apply).
type Event struct {
	ID     uuid.UUID
	At     time.Time // the database's clock at the INSERT
	Action Action
	DBUser string // session_user of the connection that wrote the row
	DBRole string // current_user of the statement
	OSUser string // the client's user@host, self-asserted ('' for workers)
	// Subject is what was acted on: a certificate identity, a DLQ
	// position, a bucket key, an override id.
	Subject string
	Tenant  string
	SANs    []string
	CA      string // issuance: the CA's name; export: the certificate's issuer
	Account string // issuance: the ACME account URL
	Serial  string
	// Detail holds the action's other facts. Never key material.
	Detail map[string]string
}

// Execer runs one statement: a pool, a connection or a transaction
// (*pgxpool.Pool and pgx.Tx implement it). Record inside a caller's
// transaction commits or rolls back with it.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Querier runs one query: *pgxpool.Pool and pgx.Tx implement it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Record appends e with the session's identity and the database's time.
// An event whose ID is already recorded is not recorded again (so a retried
// Record of an event with a deterministic ID, such as IssuanceID's, leaves
// one row). It returns an error, recording nothing, for an unknown action.
func Record(ctx context.Context, x Execer, e Event) error {
	if !e.Action.Valid() {
		return fmt.Errorf("audit: recording: unknown action %q", e.Action)
	}
	detail := e.Detail
	if detail == nil {
		detail = map[string]string{}
	}
	dj, err := json.Marshal(detail)
	if err != nil {
		return fmt.Errorf("audit: recording %s: encoding detail: %w", e.Action, err)
	}
	sans := e.SANs
	if sans == nil {
		sans = []string{}
	}
	if e.ID == uuid.Nil {
		e.ID = uuid.New()
	}
	_, err = x.Exec(ctx, `
INSERT INTO audit_events (id, at, action, db_user, db_role, os_user, subject, tenant, sans, ca, account, serial, detail)
VALUES ($1, now(), $2, session_user, current_user, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (id) DO NOTHING`,
		e.ID, string(e.Action), e.OSUser, e.Subject, e.Tenant, sans, e.CA, e.Account, e.Serial, string(dj))
	if err != nil {
		return fmt.Errorf("audit: recording %s of %q: %w", e.Action, e.Subject, err)
	}
	return nil
}

// issuanceSpace is the UUIDv5 namespace of IssuanceID.
var issuanceSpace = uuid.MustParse("5b0c1f0e-4a36-4c55-9f0d-6a8e3c3d2b71")

// IssuanceID is the event ID of the issuance of serial by the CA named ca:
// one row per certificate however often its recording is retried or its
// order resumed.
func IssuanceID(ca, serial string) uuid.UUID {
	return uuid.NewSHA1(issuanceSpace, []byte(ca+"\n"+serial))
}

// Filter selects events for List. The zero value lists the newest 100 of
// every action.
type Filter struct {
	Since  time.Time // only events at or after this (zero: any)
	Action Action    // only this action ("": any)
	Limit  int       // at most this many, newest first (0: 100)
}

// List returns the events f selects, newest first.
func List(ctx context.Context, q Querier, f Filter) ([]Event, error) {
	if f.Action != "" && !f.Action.Valid() {
		return nil, fmt.Errorf("audit: listing: unknown action %q", f.Action)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	rows, err := q.Query(ctx, `
SELECT id, at, action, db_user, db_role, os_user, subject, tenant, sans, ca, account, serial, detail
  FROM audit_events
 WHERE at >= $1 AND ($2 = '' OR action = $2)
 ORDER BY at DESC, id
 LIMIT $3`, f.Since, string(f.Action), limit)
	if err != nil {
		return nil, fmt.Errorf("audit: listing: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Event, error) {
		var e Event
		var action string
		var detail []byte
		if err := r.Scan(&e.ID, &e.At, &action, &e.DBUser, &e.DBRole, &e.OSUser, &e.Subject, &e.Tenant, &e.SANs, &e.CA, &e.Account, &e.Serial, &detail); err != nil {
			return e, err
		}
		e.Action = Action(action)
		if err := json.Unmarshal(detail, &e.Detail); err != nil {
			return e, fmt.Errorf("decoding detail of %s: %w", e.ID, err)
		}
		return e, nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit: listing: %w", err)
	}
	return out, nil
}

// OSUser is this process's user@host, for Event.OSUser: the login name of
// the process's user (else $USER), and the host name.
func OSUser() string {
	name := os.Getenv("USER")
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	host, err := os.Hostname()
	if err != nil {
		host = "unknown-host"
	}
	return name + "@" + host
}

// ErrNotRecorded wraps the error of an act done whose audit record failed:
// the caller reports both (the act happened; the trail lacks it).
var ErrNotRecorded = errors.New("audit: the act was done but not recorded")
