package audit_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/certfleet/certfleet/audit"
	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/schema"
	"github.com/certfleet/certfleet/testenv"
)

// open migrates a fresh database and returns it reached as the trust-auth
// role of the stack's URL and, when the stack serves TLS, as the
// certificate-auth role (certfleet) too.
func open(t *testing.T) (plain, cert *db.DB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url := testenv.FreshDatabase(t)
	connect := func(u string) *db.DB {
		d, err := db.Open(ctx, db.Config{URL: u})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Close)
		return d
	}
	plain = connect(url)
	if _, err := schema.Migrate(ctx, plain, schema.Options{}); err != nil {
		t.Fatal(err)
	}
	tlsURL, err := testenv.Require(t).DatabaseTLSURLOf(url)
	if err != nil {
		t.Fatal(err)
	}
	return plain, connect(tlsURL)
}

func sessionUser(t *testing.T, d *db.DB) string {
	t.Helper()
	var u string
	if err := d.Pool().QueryRow(context.Background(), `SELECT session_user`).Scan(&u); err != nil {
		t.Fatal(err)
	}
	return u
}

// The row names the database session's role, whatever the client claims in
// $USER or OSUser, and keeps every field it was given.
func TestRecordTakesTheSessionIdentity(t *testing.T) {
	plain, cert := open(t)
	t.Setenv("USER", "someone-else")
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		d    *db.DB
	}{{"trust role", plain}, {"certificate role", cert}} {
		t.Run(tc.name, func(t *testing.T) {
			want := sessionUser(t, tc.d)
			subject := "subject-" + tc.name
			e := audit.Event{Action: audit.Issuance, OSUser: "mallory@laptop", Subject: subject, Tenant: "acme",
				SANs: []string{"a.example.com", "b.example.com"}, CA: "letsencrypt", Account: "https://ca/acct/1", Serial: "0a1b",
				Detail: map[string]string{"request_id": "r1"}}
			if err := audit.Record(ctx, tc.d.Pool(), e); err != nil {
				t.Fatal(err)
			}
			got, err := audit.List(ctx, tc.d.Pool(), audit.Filter{Action: audit.Issuance, Limit: 100})
			if err != nil {
				t.Fatal(err)
			}
			i := slices.IndexFunc(got, func(g audit.Event) bool { return g.Subject == subject })
			if i < 0 {
				t.Fatalf("no row for %s among %d", subject, len(got))
			}
			g := got[i]
			if g.DBUser != want || g.DBRole != want || g.DBUser == "someone-else" {
				t.Errorf("db_user %q, db_role %q; want the session's %q", g.DBUser, g.DBRole, want)
			}
			if g.OSUser != e.OSUser || g.Tenant != e.Tenant || !slices.Equal(g.SANs, e.SANs) || g.CA != e.CA ||
				g.Account != e.Account || g.Serial != e.Serial || g.Detail["request_id"] != "r1" || g.At.IsZero() {
				t.Errorf("row %+v does not keep event %+v", g, e)
			}
		})
	}
	if sessionUser(t, plain) == sessionUser(t, cert) && testenv.Require(t).DatabaseTLSURL != "" {
		t.Error("both connections have one session user: the test cannot tell identities apart")
	}
}

// List filters by action and time, newest first; an unknown action is
// refused on both sides.
func TestListFilters(t *testing.T) {
	d, _ := open(t)
	ctx := context.Background()
	for _, a := range []audit.Action{audit.KeyExport, audit.PenaltyClear, audit.KeyExport} {
		if err := audit.Record(ctx, d.Pool(), audit.Event{Action: a, Subject: string(a)}); err != nil {
			t.Fatal(err)
		}
	}
	var now time.Time
	if err := d.Pool().QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		f    audit.Filter
		want int
	}{
		{"all", audit.Filter{}, 3},
		{"one action", audit.Filter{Action: audit.KeyExport}, 2},
		{"limit", audit.Filter{Limit: 1}, 1},
		{"since the future", audit.Filter{Since: now.Add(time.Hour)}, 0},
		{"since the past", audit.Filter{Since: now.Add(-time.Hour)}, 3},
	} {
		got, err := audit.List(ctx, d.Pool(), tc.f)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != tc.want {
			t.Errorf("%s: %d events; want %d", tc.name, len(got), tc.want)
		}
		for i := 1; i < len(got); i++ {
			if got[i].At.After(got[i-1].At) {
				t.Errorf("%s: not newest first: %v after %v", tc.name, got[i].At, got[i-1].At)
			}
		}
	}
	if err := audit.Record(ctx, d.Pool(), audit.Event{Action: "key_import"}); err == nil {
		t.Error("recorded an unknown action")
	}
	if _, err := audit.List(ctx, d.Pool(), audit.Filter{Action: "key_import"}); err == nil {
		t.Error("listed an unknown action")
	}
}
