package secretfile

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func write(t *testing.T, mode os.FileMode, data string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestModes(t *testing.T) {
	for _, tc := range []struct {
		mode os.FileMode
		ok   bool
	}{
		{0o600, true}, {0o400, true}, {0o640, false}, {0o644, false}, {0o604, false}, {0o660, false}, {0o666, false},
	} {
		p := write(t, tc.mode, "s3cret\n")
		_, err := Read(p)
		if tc.ok != (err == nil) {
			t.Errorf("mode %04o: Read error %v, want ok=%v", tc.mode, err, tc.ok)
		}
		if err != nil && (!strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "has mode")) {
			t.Errorf("mode %04o: error %q does not name the file and its mode", tc.mode, err)
		}
		if cerr := Check(p); (cerr == nil) != (err == nil) {
			t.Errorf("mode %04o: Check %v but Read %v", tc.mode, cerr, err)
		}
	}
}

func TestErrorNamesOctalMode(t *testing.T) {
	p := write(t, 0o644, "x")
	_, err := Read(p)
	if err == nil || !strings.Contains(err.Error(), "has mode 0644") || !strings.Contains(err.Error(), "chmod 600 "+p) {
		t.Fatalf("error %v: want the file, mode 0644 and the fix", err)
	}
}

func TestReadTrimmed(t *testing.T) {
	b, err := ReadTrimmed(write(t, 0o600, "pw with spaces \r\n\n"))
	if err != nil || string(b) != "pw with spaces " {
		t.Fatalf("ReadTrimmed = %q, %v", b, err)
	}
	if _, err := ReadTrimmed(write(t, 0o600, "\n")); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Fatalf("empty file: %v", err)
	}
}

func TestNotRegularOrMissing(t *testing.T) {
	dir := t.TempDir()
	if err := Check(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("directory: %v", err)
	}
	if _, err := Read(filepath.Join(dir, "nope")); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("missing: %v", err)
	}
	// A symbolic link (how Kubernetes mounts Secret keys) is followed.
	target := write(t, 0o600, "x")
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(link); err != nil {
		t.Fatalf("link to a 0600 file: %v", err)
	}
}

type fakeInfo struct {
	mode os.FileMode
	uid  uint32
}

func (f fakeInfo) Name() string       { return "f" }
func (f fakeInfo) Size() int64        { return 1 }
func (f fakeInfo) Mode() fs.FileMode  { return f.mode }
func (f fakeInfo) ModTime() time.Time { return time.Time{} }
func (f fakeInfo) IsDir() bool        { return false }
func (f fakeInfo) Sys() any           { return &syscall.Stat_t{Uid: f.uid} }

// A root-owned file may be group-readable for a non-root process (a Secret
// volume with fsGroup), never other-readable or group-writable.
func TestRootOwnedGroupReadable(t *testing.T) {
	defer func(f func() int) { euid = f }(euid)
	euid = func() int { return 65532 }
	for _, tc := range []struct {
		mode os.FileMode
		uid  uint32
		ok   bool
	}{
		{0o440, 0, true}, {0o640, 0, true}, {0o644, 0, false}, {0o660, 0, false},
		{0o440, 65532, false}, {0o400, 65532, true},
	} {
		err := checkInfo("/x", fakeInfo{mode: tc.mode, uid: tc.uid})
		if tc.ok != (err == nil) {
			t.Errorf("mode %04o uid %d: %v, want ok=%v", tc.mode, tc.uid, err, tc.ok)
		}
	}
}
