package testenv

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// pebbleModule is the module Pebble and pebble-challtestsrv are built from.
const pebbleModule = "github.com/letsencrypt/pebble/v2"

// pebblePatch removes the lock-order deadlock of Pebble's in-memory store; the
// file's header explains the bug and why the fix makes it impossible.
//
//go:embed pebblepatch/memorystore-lock-order.patch
var pebblePatch []byte

// pebbleBuildDir is where one build of Pebble lives in the cache: the version
// and, for the patched build, a hash of the patch, so a changed patch is a new
// build and a running Pebble of another build is recognised as stale.
func pebbleBuildDir(cache string, patched bool) string {
	if !patched {
		return filepath.Join(cache, "pebble-"+PebbleVersion+"-stock")
	}
	sum := sha256.Sum256(pebblePatch)
	return filepath.Join(cache, "pebble-"+PebbleVersion+"-patched-"+hex.EncodeToString(sum[:6]))
}

// installPebble returns the directory holding the pebble and
// pebble-challtestsrv that testenv runs: Pebble's module source with
// pebblePatch applied, built once per version and patch.
func installPebble(ctx context.Context, cache string) (string, error) {
	return buildPebble(ctx, cache, true)
}

// buildPebble builds pebble and pebble-challtestsrv from the module source of
// PebbleVersion, with pebblePatch applied when patched is set, into the cache
// (once; later calls find the binaries). A patch that no longer applies is an
// error: testenv never runs an unpatched Pebble by accident.
func buildPebble(ctx context.Context, cache string, patched bool) (string, error) {
	dir := pebbleBuildDir(cache, patched)
	if _, err := os.Stat(filepath.Join(dir, "pebble-challtestsrv")); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", fmt.Errorf("testenv: creating the cache %s: %w", cache, err)
	}
	work, err := os.MkdirTemp(cache, "pebble-build-")
	if err != nil {
		return "", fmt.Errorf("testenv: building Pebble: %w", err)
	}
	defer os.RemoveAll(work)

	mod, err := downloadModule(ctx, pebbleModule+"@"+PebbleVersion)
	if err != nil {
		return "", err
	}
	src := filepath.Join(work, "src")
	if err := copyTree(mod, src); err != nil {
		return "", fmt.Errorf("testenv: copying Pebble's source: %w", err)
	}
	if patched {
		if err := applyPatch(ctx, src, pebblePatch); err != nil {
			return "", fmt.Errorf("testenv: the Pebble patch (testenv/pebblepatch/memorystore-lock-order.patch) "+
				"does not apply to %s %s; update the patch for this version or go back to the version it was written for: %w",
				pebbleModule, PebbleVersion, err)
		}
	}
	out := filepath.Join(work, "bin")
	for _, cmd := range []string{"pebble", "pebble-challtestsrv"} {
		build := exec.CommandContext(ctx, goTool(), "build", "-o", filepath.Join(out, cmd), "./cmd/"+cmd)
		build.Dir = src
		// -mod=mod: the module zip has go.mod and go.sum but no vendor
		// directory; dependencies come from the module proxy, checked
		// against Pebble's go.sum.
		build.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
		if b, err := build.CombinedOutput(); err != nil {
			return "", fmt.Errorf("testenv: building %s from %s %s: %w\n%s", cmd, pebbleModule, PebbleVersion, err, b)
		}
	}
	_ = os.RemoveAll(dir)
	if err := os.Rename(out, dir); err != nil {
		return "", fmt.Errorf("testenv: installing the Pebble build: %w", err)
	}
	return dir, nil
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// downloadModule fetches module@version into the module cache and returns its
// (read-only) directory.
func downloadModule(ctx context.Context, modVersion string) (string, error) {
	cmd := exec.CommandContext(ctx, goTool(), "mod", "download", "-json", modVersion)
	cmd.Dir = os.TempDir() // outside any module
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off", "GO111MODULE=on")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	var info struct{ Dir, Error string }
	if jerr := json.Unmarshal(stdout, &info); jerr != nil && err == nil {
		err = jerr
	}
	if err != nil || info.Error != "" || info.Dir == "" {
		return "", fmt.Errorf("testenv: go mod download %s: %v %s %s", modVersion, err, info.Error, strings.TrimSpace(stderr.String()))
	}
	return info.Dir, nil
}

// copyTree copies the regular files of src into dst, writable (the module
// cache is read-only).
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		outf, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		if _, err := io.Copy(outf, in); err != nil {
			outf.Close()
			return err
		}
		return outf.Close()
	})
}

// applyPatch applies a unified diff (paths a/... b/..., text before the first
// diff header ignored) to dir with `git apply`, checking first that every hunk
// applies. git looks for no repository above dir.
func applyPatch(ctx context.Context, dir string, patch []byte) error {
	for _, args := range [][]string{{"apply", "--check", "-"}, {"apply", "-"}} {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_CEILING_DIRECTORIES="+filepath.Dir(dir))
		cmd.Stdin = bytes.NewReader(patch)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("git %s: %w\n%s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}
