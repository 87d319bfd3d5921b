package caconfig

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/certfleet/certfleet/ratelimit"
)

func TestParse(t *testing.T) {
	cas, err := Parse(" pebble = https://127.0.0.1:14000/dir ,, le=https://acme-v02.api.letsencrypt.org/directory,")
	want := []CA{{Name: "pebble", Directory: "https://127.0.0.1:14000/dir"}, {Name: "le", Directory: "https://acme-v02.api.letsencrypt.org/directory"}}
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

func TestParseEAB(t *testing.T) {
	cas, err := Parse("zs=https://acme.zerossl.test/dir, eab-kid = kid-1 ,eab-key-file=/etc/zs.eab,le=https://le.test/dir")
	want := []CA{{Name: "zs", Directory: "https://acme.zerossl.test/dir", EABKeyID: "kid-1", EABKeyFile: "/etc/zs.eab"},
		{Name: "le", Directory: "https://le.test/dir"}}
	if err != nil || !reflect.DeepEqual(cas, want) {
		t.Fatalf("Parse = %+v, %v; want %+v", cas, err, want)
	}
	if err := CheckAll(cas); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ list, want string }{
		{"eab-kid=k,zs=https://a.test/dir", "eab-kid: an option of the CA before it"},
		{"zs=https://a.test/dir,eab-kid=k,eab-kid=j", `eab-kid given twice for CA "zs"`},
		{"zs=https://a.test/dir,eab-key-file=", `eab-key-file of CA "zs" is empty`},
	} {
		if _, err := Parse(tc.list); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", tc.list, err, tc.want)
		}
	}
	half, _ := Parse("zs=https://a.test/dir,eab-kid=k")
	if err := CheckAll(half); err == nil || !strings.Contains(err.Error(), "zs: eab-kid and eab-key-file go together") {
		t.Errorf("a key id without a key file: %v", err)
	}
}

func TestEAB(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ca := CA{Name: "zs", Directory: "https://a.test/dir"}
	if _, _, ok, err := ca.EAB(); ok || err != nil {
		t.Fatalf("no EAB: ok=%v err=%v", ok, err)
	}
	ca.EABKeyID = "kid-1"
	for _, tc := range []struct {
		content string
		mode    os.FileMode
		key     string
		err     string
	}{
		{"zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W\n", 0o600, "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W", ""},
		{"YWJj=\n", 0o400, "YWJj", ""},
		{"not base64!\n", 0o600, "", "does not hold a base64url MAC key"},
		{"YWJj\n", 0o644, "", "must not be accessible to group or others"},
	} {
		ca.EABKeyFile = file("eab", tc.content, 0o600)
		if err := os.Chmod(ca.EABKeyFile, tc.mode); err != nil {
			t.Fatal(err)
		}
		kid, key, ok, err := ca.EAB()
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "CA zs") {
				t.Errorf("%q mode %04o: err %v, want one naming the CA and containing %q", tc.content, tc.mode, err, tc.err)
			}
			if err != nil && strings.Contains(err.Error(), strings.TrimSpace(tc.content)) {
				t.Errorf("the error quotes the key file's content: %v", err)
			}
		case err != nil || !ok || kid != "kid-1" || key != tc.key:
			t.Errorf("%q: EAB() = %q, %q, %v, %v; want kid-1, %q", tc.content, kid, key, ok, err, tc.key)
		}
		os.Remove(ca.EABKeyFile)
	}
}

func TestGroups(t *testing.T) {
	cas, _ := Parse("le=https://le.test/dir,zs=https://zs.test/dir")
	gs, err := ParseGroups(" any = le + zs ,eu=zs+le,")
	want := []Group{{Name: "any", CAs: []string{"le", "zs"}}, {Name: "eu", CAs: []string{"zs", "le"}}}
	if err != nil || !reflect.DeepEqual(gs, want) {
		t.Fatalf("ParseGroups = %+v, %v; want %+v", gs, err, want)
	}
	if err := CheckGroups(gs, cas); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseGroups("any"); err == nil || !strings.Contains(err.Error(), "want name=CA1+CA2") {
		t.Errorf("item without '=': %v", err)
	}
	for _, tc := range []struct{ list, want string }{
		{"Any=le+zs", `group "Any": want a name`},
		{"le=zs", `group "le": a CA has that name`},
		{"a=le,a=zs", `group "a" configured twice`},
		{"a=le+gts", `group "a": CA "gts" is not configured (-ca)`},
		{"a=le+le", `group "a": CA "le" listed twice`},
		{"a=le++zs", `group "a": an empty CA name`},
	} {
		gs, err := ParseGroups(tc.list)
		if err != nil {
			t.Fatalf("ParseGroups(%q): %v", tc.list, err)
		}
		if err := CheckGroups(gs, cas); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckGroups(%q) = %v, want an error containing %q", tc.list, err, tc.want)
		}
	}
}
