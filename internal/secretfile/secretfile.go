// Package secretfile reads secrets from mounted files: the key-encryption
// keyring, the Kafka SASL password, the database client key. A secret file
// must not be readable by anyone but its owner; the mode is checked before
// the file is read, and the error names the file and its mode.
//
// The rule is libpq's for sslkey: a file owned by the current user may have
// no group or other permission (0600 or 0400); a file owned by root may also
// be group-readable (0640 or 0440), which is how Kubernetes mounts a Secret
// volume for a non-root container when the pod sets fsGroup. Nothing may be
// readable or writable by others, and no group may write.
package secretfile

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// Check returns an error naming path and its mode when path is not a regular
// file only its owner (or, for a root-owned file, its group) can read.
// Symbolic links are followed (Kubernetes mounts Secret keys as links).
func Check(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("secret file %s: %w", path, err)
	}
	return checkInfo(path, info)
}

// euid is os.Geteuid; tests replace it.
var euid = os.Geteuid

func checkInfo(path string, info fs.FileInfo) error {
	if !info.Mode().IsRegular() {
		return fmt.Errorf("secret file %s is not a regular file (%v)", path, info.Mode().Type())
	}
	perm := info.Mode().Perm()
	allowed := fs.FileMode(0o600)
	if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Uid == 0 && euid() != 0 {
		allowed = 0o640 // root-owned, group-readable: a Secret volume with fsGroup
	}
	if perm&^allowed != 0 {
		return fmt.Errorf("secret file %s has mode %04o: it must not be accessible to group or others (chmod 600 %s)", path, perm, path)
	}
	return nil
}

// Read checks path as Check does and returns its contents.
func Read(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("secret file %s: %w", path, err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("secret file %s: %w", path, err)
	}
	if err := checkInfo(path, info); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if _, err := b.ReadFrom(f); err != nil {
		return nil, fmt.Errorf("secret file %s: %w", path, err)
	}
	return b.Bytes(), nil
}

// ReadTrimmed is Read without trailing newlines and carriage returns (a
// password file written by echo or an editor ends with one), refusing an
// empty result.
func ReadTrimmed(path string) ([]byte, error) {
	b, err := Read(path)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimRight(b, "\r\n")
	if len(b) == 0 {
		return nil, fmt.Errorf("secret file %s is empty", path)
	}
	return b, nil
}
