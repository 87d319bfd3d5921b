package main

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/audit"
	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/schema"
	"github.com/certfleet/certfleet/testenv"
)

type issuedFunc func(acmeissuer.Request) *acmeissuer.Result

func (f issuedFunc) Obtain(_ context.Context, r acmeissuer.Request) (*acmeissuer.Result, error) {
	return f(r), nil
}

// Every certificate a CA issues leaves one audit row (tenant, SANs, CA,
// account, serial, the session's identity), however often it is obtained:
// a resumed order that downloads the same certificate adds none.
func TestAuditedIssuerRecordsEachIssuanceOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := db.Open(ctx, db.Config{URL: testenv.FreshDatabase(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := schema.Migrate(ctx, d, schema.Options{}); err != nil {
		t.Fatal(err)
	}
	serial := "1a2b"
	next := issuedFunc(func(acmeissuer.Request) *acmeissuer.Result {
		return &acmeissuer.Result{Serial: serial, AccountURL: "https://ca.test/acct/7", NotAfter: time.Now().Add(90 * 24 * time.Hour)}
	})
	iss := auditedIssuer{next: next, ca: "pebble", db: d.Pool(), log: slog.New(slog.DiscardHandler)}
	req := acmeissuer.Request{Tenant: "acme", SANs: []string{"a.example.com", "b.example.com"}}
	for range 2 {
		if _, err := iss.Obtain(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	serial = "3c4d"
	if _, err := iss.Obtain(ctx, req); err != nil {
		t.Fatal(err)
	}
	got, err := audit.List(ctx, d.Pool(), audit.Filter{Action: audit.Issuance})
	if err != nil {
		t.Fatal(err)
	}
	var who string
	if err := d.Pool().QueryRow(ctx, `SELECT session_user`).Scan(&who); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("%d issuance rows for 2 certificates (one obtained twice): %+v", len(got), got)
	}
	for _, e := range got {
		if e.Tenant != "acme" || !slices.Equal(e.SANs, req.SANs) || e.CA != "pebble" || e.Account != "https://ca.test/acct/7" ||
			(e.Serial != "1a2b" && e.Serial != "3c4d") || e.DBUser != who {
			t.Errorf("row %+v; want tenant acme, the SANs, CA pebble, the account, a serial and db_user %q", e, who)
		}
	}
}
