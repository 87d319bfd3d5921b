package caconfig

import (
	"reflect"
	"strings"
	"testing"

	"github.com/certfleet/certfleet/ratelimit"
)

func TestParse(t *testing.T) {
	cas, err := Parse(" pebble = https://127.0.0.1:14000/dir ,, le=https://acme-v02.api.letsencrypt.org/directory,")
	want := []CA{{"pebble", "https://127.0.0.1:14000/dir"}, {"le", "https://acme-v02.api.letsencrypt.org/directory"}}
	if err != nil || !reflect.DeepEqual(cas, want) {
		t.Fatalf("Parse = %+v, %v; want %+v", cas, err, want)
	}
	if cas, err := Parse(""); err != nil || len(cas) != 0 {
		t.Fatalf("empty list: %+v, %v", cas, err)
	}
	if got := Directories(cas); !reflect.DeepEqual(got, map[string]string{"pebble": want[0].Directory, "le": want[1].Directory}) {
		t.Errorf("Directories = %v", got)
	}
	if got := LimitsView(cas); !reflect.DeepEqual(got, []ratelimit.CA{{ID: "pebble", Directory: want[0].Directory}, {ID: "le", Directory: want[1].Directory}}) {
		t.Errorf("LimitsView = %+v", got)
	}
	if _, err := Parse("pebble=https://a.test/dir,https://acme.test/dir"); err == nil || err.Error() != `"https://acme.test/dir": want name=directoryURL` {
		t.Errorf("item without '=': %v", err)
	}
}

func TestCheckAll(t *testing.T) {
	good, _ := Parse("pebble=https://127.0.0.1:14000/dir,le=https://acme-v02.api.letsencrypt.org/directory")
	if err := CheckAll(good); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ list, want string }{
		{"le=http://acme.test/dir", "le=http://acme.test/dir: want a name and an https directory URL"},
		{"=https://acme.test/dir", "=https://acme.test/dir: want a name and an https directory URL"},
		{"le=https:///dir", "want a name and an https directory URL"},
		{"le=", "le=: want a name and an https directory URL"},
		{"a=https://x.test/d,a=https://y.test/d", `"a" configured twice`},
		{"a=https://x.test/d,b=https://x.test/d", `directory "https://x.test/d" configured twice (as "a" and "b")`},
	} {
		cas, err := Parse(tc.list)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.list, err)
		}
		if err := CheckAll(cas); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckAll(%q) = %v, want an error containing %q", tc.list, err, tc.want)
		}
	}
	// Every problem is reported, not just the first.
	cas, _ := Parse("x=http://a/d,x=https://b/d")
	if err := CheckAll(cas); err == nil || !strings.Contains(err.Error(), "x=http://a/d") || !strings.Contains(err.Error(), "configured twice") {
		t.Errorf("both problems not reported: %v", err)
	}
}
