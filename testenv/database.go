package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/jackc/pgx/v5"
)

// The database: PostgreSQL 15 from Debian's packages as the CockroachDB
// stand-in, or `cockroach start-single-node --insecure` when chosen.
const (
	pgBinDir = "/usr/lib/postgresql/15/bin"
	dbName   = "certfleet"
)

var (
	pgPort   = fmt.Sprint(port(15432))
	pgAddr   = addr(15432)
	crdbAddr = addr(26257)
	crdbHTTP = addr(18080)
)

// dbKind picks the database: CERTFLEET_DB when set, else cockroach when the
// binary is on PATH, else postgres.
func dbKind() (string, error) {
	switch k := os.Getenv(EnvDatabaseKind); k {
	case "postgres", "cockroach":
		return k, nil
	case "":
		if _, err := exec.LookPath("cockroach"); err == nil {
			return "cockroach", nil
		}
		return "postgres", nil
	default:
		return "", fmt.Errorf("testenv: %s=%q: want postgres or cockroach", EnvDatabaseKind, k)
	}
}

func dbProc(dir, kind string) proc {
	if kind == "cockroach" {
		return proc{name: "cockroach", dir: dir, marker: "start-single-node"}
	}
	// The marker is an argument only the TLS-serving configuration has, so a
	// PostgreSQL started by an older testenv is restarted by `testenv up`.
	return proc{name: "postgres", dir: dir, marker: "ssl_ca_file=root.crt", signal: syscall.SIGINT}
}

// dbTLSURL is the database over TLS: verify-full against the testenv CA,
// logging in as dbTLSUser with its client certificate (the shape of
// CockroachDB's certificate auth). Empty for CockroachDB, which runs
// --insecure here.
func dbTLSURL(kind string, k pki) string {
	if kind == "cockroach" {
		return ""
	}
	return "postgres://" + dbTLSUser + "@" + pgAddr + "/" + dbName + "?sslmode=verify-full&sslrootcert=" + k.caPath +
		"&sslcert=" + filepath.Join(k.secrets, "database.crt") + "&sslkey=" + filepath.Join(k.secrets, "database.key")
}

func dbURL(kind string) string {
	if kind == "cockroach" {
		return "postgresql://root@" + crdbAddr + "/" + dbName + "?sslmode=disable"
	}
	return "postgres://postgres@" + pgAddr + "/" + dbName + "?sslmode=disable"
}

// installPostgres installs Debian's postgresql-15 when its server binaries
// are missing.
func installPostgres(ctx context.Context) error {
	if _, err := os.Stat(filepath.Join(pgBinDir, "postgres")); err == nil {
		return nil
	}
	return aptInstall(ctx, "postgresql-15")
}

// aptMu serialises aptInstall: services install in parallel, and a second
// apt-get fails on dpkg's lock while the first runs.
var aptMu sync.Mutex

// aptInstall installs Debian packages with apt-get (through sudo when not
// root), for the parts of the stack the Makefile promises to install itself.
func aptInstall(ctx context.Context, pkgs ...string) error {
	aptMu.Lock()
	defer aptMu.Unlock()
	args := append([]string{"apt-get", "install", "-y", "--no-install-recommends"}, pkgs...)
	update := []string{"apt-get", "update"}
	if os.Geteuid() != 0 {
		if _, err := exec.LookPath("sudo"); err != nil {
			return fmt.Errorf("testenv: %v missing and installing needs root: run `apt-get install %s` as root", pkgs, strings.Join(pkgs, " "))
		}
		args, update = append([]string{"sudo"}, args...), append([]string{"sudo"}, update...)
	}
	for _, a := range [][]string{update, args} {
		cmd := exec.CommandContext(ctx, a[0], a[1:]...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("testenv: %v: %w\n%s", a, err, out)
		}
	}
	return nil
}

// asPostgresUser makes cmd run as the "postgres" system user when testenv
// runs as root (the server refuses root), and hands that user data.
func asPostgresUser(cmd *exec.Cmd, data string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("testenv: running as root needs the \"postgres\" user (created by Debian's postgresql package): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := filepath.Walk(data, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	}); err != nil {
		return err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	return nil
}

// startPostgres initialises a cluster in data (fsync off: test data only)
// unless one is already there, which is a restart, and starts the server on
// loopback TCP only.
func startPostgres(ctx context.Context, p proc, data string) error {
	if err := os.MkdirAll(data, 0o700); err != nil {
		return err
	}
	k, err := ensurePKI(p.dir)
	if err != nil {
		return err
	}
	// A cluster that is already initialised is a restart (Restart): keep it.
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); err != nil {
		initdb := exec.CommandContext(ctx, filepath.Join(pgBinDir, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
		if err := asPostgresUser(initdb, data); err != nil {
			return err
		}
		if out, err := initdb.CombinedOutput(); err != nil {
			return fmt.Errorf("testenv: initdb: %w\n%s", err, out)
		}
		// TLS with client certificates for dbTLSUser (first matching line
		// wins); everyone else keeps trust on loopback, with or without TLS.
		hba := filepath.Join(data, "pg_hba.conf")
		old, err := os.ReadFile(hba)
		if err != nil {
			return err
		}
		lines := "hostssl all " + dbTLSUser + " 127.0.0.1/32 cert\nhost all " + dbTLSUser + " 127.0.0.1/32 reject\n"
		if err := os.WriteFile(hba, append([]byte(lines), old...), 0o600); err != nil {
			return err
		}
		// The server reads its key as the postgres user: copies in its data
		// directory, owned by it (asPostgresUser) and 0600.
		for src, dst := range map[string]string{k.pgCert: "server.crt", k.pgKey: "server.key", k.caPath: "root.crt"} {
			b, err := os.ReadFile(src)
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(data, dst), b, 0o600); err != nil {
				return err
			}
		}
	}
	cmd := exec.Command(filepath.Join(pgBinDir, "postgres"), "-D", data,
		"-c", "port="+pgPort, "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=300", "-c", "shared_buffers=128MB",
		"-c", "ssl=on", "-c", "ssl_cert_file=server.crt", "-c", "ssl_key_file=server.key", "-c", "ssl_ca_file=root.crt")
	if err := asPostgresUser(cmd, data); err != nil {
		return err
	}
	return p.start(cmd)
}

func startCockroach(p proc, data string) error {
	bin, err := exec.LookPath("cockroach")
	if err != nil {
		return errors.New("testenv: CERTFLEET_DB=cockroach but no cockroach binary is on PATH")
	}
	cmd := exec.Command(bin, "start-single-node", "--insecure", "--store="+data,
		"--listen-addr="+crdbAddr, "--http-addr="+crdbHTTP, "--cache=256MiB", "--max-sql-memory=256MiB")
	return p.start(cmd)
}

// dbReady connects to the server's default database and creates certfleet's.
func dbReady(ctx context.Context, kind string) error {
	admin := "postgres://postgres@" + pgAddr + "/postgres?sslmode=disable"
	if kind == "cockroach" {
		admin = "postgresql://root@" + crdbAddr + "/defaultdb?sslmode=disable"
	}
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, dbName).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+dbName); err != nil {
			return err
		}
	}
	if kind == "cockroach" {
		return nil
	}
	// The certificate-auth role of DatabaseTLSURL: a superuser, so it sees
	// and migrates the same tables as the trust-auth postgres role (a test
	// stack; production grants are the operator's).
	var role bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, dbTLSUser).Scan(&role); err != nil {
		return err
	}
	if !role {
		if _, err := conn.Exec(ctx, "CREATE ROLE "+dbTLSUser+" LOGIN SUPERUSER"); err != nil {
			return err
		}
	}
	return nil
}
