package incident

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/dbtest"
	"github.com/certfleet/certfleet/testenv"
)

func init() { testenv.UseLabNames() }

// Selection from the inventory: every field narrows it, only unexpired
// certificates, the CA and SAN set from the stored cert_obtained, the
// newest per SAN set with CurrentOnly, and an empty selection refused.
func TestSelect(t *testing.T) {
	testenv.Require(t)
	ctx := context.Background()
	d := dbtest.Migrated(t, 4)
	now := time.Now().UTC().Truncate(time.Second)
	st := certstore.New(d)
	// name, tenant, CA, serial, issued (days ago), lifetime (days)
	for _, c := range []struct {
		name, tenant, ca, serial string
		issued, life             int
	}{
		{"a.example.com", "t1", "le", "a1", 10, 90}, {"a.example.com", "t1", "le", "a2", 2, 90},
		{"b.example.com", "t1", "zs", "b1", 5, 90}, {"c.example.com", "t2", "le", "c1", 20, 90},
		{"d.example.com", "t2", "le", "d1", 100, 90}, // expired
		// Issued in the same second: the same validity, to the second
		// (Pebble's replacements within a second of the original). The
		// one stored last is the current one.
		{"e.example.com", "t4", "xx", "e1", 1, 90}, {"e.example.com", "t4", "xx", "e2", 1, 90},
	} {
		sans := []string{c.name}
		identity := events.Identity(sans)
		nb := now.Add(-time.Duration(c.issued) * 24 * time.Hour)
		value, _ := json.Marshal(map[string]any{"sans": sans, "ca": c.ca, "tenant": c.tenant})
		outcome, _ := json.Marshal(map[string]any{"key": []byte(identity), "value": value})
		if _, err := st.Claim(ctx, "r-"+c.serial, identity, "o", time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := st.Complete(ctx, "o", certstore.Issued{Identity: identity, RequestID: "r-" + c.serial, Serial: c.serial, ARICertID: "x." + c.serial,
			NotBefore: nb, NotAfter: nb.Add(time.Duration(c.life) * 24 * time.Hour), ChainPEM: "-", SealedKey: []byte{1}, Tenant: c.tenant}, outcome); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		sel  Selector
		want string
	}{
		{"by serial", Selector{Serials: []string{"a1", "c1", "d1"}}, "a1 c1"},
		{"by SAN set, any case", Selector{SANs: []string{"A.Example.COM"}}, "a1 a2"},
		{"the current one of the SAN set", Selector{SANs: []string{"a.example.com"}, CurrentOnly: true}, "a2"},
		{"the current one of two with the same validity", Selector{Tenant: "t4", CurrentOnly: true}, "e2"},
		{"by tenant", Selector{Tenant: "t1"}, "a1 a2 b1"},
		{"by CA", Selector{CA: "le"}, "a1 a2 c1"},
		{"issued before", Selector{IssuedBefore: now.Add(-4 * 24 * time.Hour)}, "a1 b1 c1"},
		{"issued in a window, of one CA", Selector{IssuedAfter: now.Add(-15 * 24 * time.Hour), IssuedBefore: now.Add(-time.Hour), CA: "le"}, "a1 a2"},
		{"tenant and CA", Selector{Tenant: "t1", CA: "zs"}, "b1"},
		{"nothing matches", Selector{Tenant: "t3"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Select(ctx, d, tc.sel, now)
			if err != nil {
				t.Fatal(err)
			}
			var serials []string
			for _, c := range got {
				serials = append(serials, c.Serial)
				if c.CA == "" || len(c.SANs) != 1 || c.KeyType != events.KeyECDSAP256 || c.Tenant == "" {
					t.Errorf("certificate %s: %+v", c.Serial, c)
				}
			}
			slices.Sort(serials)
			if s := strings.Join(serials, " "); s != tc.want {
				t.Errorf("selected %q; want %q", s, tc.want)
			}
		})
	}
	if _, err := Select(ctx, d, Selector{CurrentOnly: true}, now); err == nil {
		t.Error("an empty selection was not refused")
	}
}
