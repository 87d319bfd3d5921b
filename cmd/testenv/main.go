// Command testenv starts, checks and stops certfleet's local stack (Kafka,
// PostgreSQL or CockroachDB, Pebble and pebble-challtestsrv) on loopback.
//
//	testenv up      start what is not running, wait until ready, write .testenv/env
//	testenv down    stop what testenv started and remove its data
//	testenv status  show each service; exit 1 if any is down
//	testenv env     print the env file (source it: set -a; . ./.testenv/env; set +a)
//	testenv restart pebble|kafka|database
//	                restart one running service (Pebble from scratch)
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/certfleet/certfleet/testenv"
)

const usage = `usage: testenv up|down|status|env|restart SERVICE

  up      start Kafka, the database and Pebble unless already running; wait until ready;
          write the settings to .testenv/env (idempotent)
  down    stop the processes testenv started (pid files) and remove their data
  status  show each service; exit status 1 when any is down or not ready
  env     print the settings of the running stack as KEY=value lines
  restart pebble|kafka|database
          restart one running service; Pebble starts from scratch (new root, saved), the
          others on their data. Nothing else may be using the stack meanwhile.

environment:
  CERTFLEET_DB=postgres|cockroach   database to run (default: cockroach if on PATH, else postgres)
  CERTFLEET_PEBBLE_ALWAYS_VALID=1   Pebble accepts every challenge without validating (throughput runs)
  CERTFLEET_TESTENV_DIR             state directory (default: .testenv at the repository root)
  CERTFLEET_CACHE_DIR               download cache (default: ~/.cache/certfleet)
`

func main() {
	if len(os.Args) < 2 || (os.Args[1] == "restart") != (len(os.Args) == 3) || len(os.Args) > 3 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1], os.Args[2:]...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cmd string, args ...string) error {
	switch cmd {
	case "restart":
		t0 := time.Now()
		if err := testenv.Restart(ctx, args[0], testenv.RestartOptions{}); err != nil {
			return err
		}
		fmt.Printf("%s restarted in %.1fs\n", args[0], time.Since(t0).Seconds())
		return nil
	case "up":
		t0 := time.Now()
		s, err := testenv.Up(ctx, os.Stdout)
		if err != nil {
			return err
		}
		envFile := ".testenv/env"
		if dir, err := testenv.StateDir(); err == nil {
			envFile = filepath.Join(dir, "env")
		}
		fmt.Printf("testenv up in %.1fs; settings in %s:\n%s", time.Since(t0).Seconds(), envFile, s.EnvFile())
		return nil
	case "down":
		return testenv.Down(os.Stdout)
	case "status":
		return testenv.Status(ctx, os.Stdout)
	case "env":
		s, err := testenv.Load()
		if err != nil {
			return fmt.Errorf("%w; start it with `make testenv-up`", err)
		}
		fmt.Print(s.EnvFile())
		return nil
	case "-h", "--help", "help":
		fmt.Print(usage)
		return nil
	default:
		return fmt.Errorf("testenv: unknown command %q\n%s", cmd, usage)
	}
}
