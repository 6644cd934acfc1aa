package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"syscall"

	"github.com/notifyd/notifyd/notifier/telemetry"
)

const version = "0.1.0"

const usage = `notifyd: notification delivery service (email, push, in-app inbox)

Usage:
  notifyd serve [--role all|api|worker]   run the API and/or the workers
  notifyd migrate                         apply the database schema (idempotent)
  notifyd apikey create --name N --scopes send,admin
  notifyd apikey list
  notifyd apikey revoke ID|NAME
  notifyd broadcast status ID [--watch] [--interval 1s]
                                          a broadcast's progress per channel, live with --watch
  notifyd broadcast cancel|pause|resume ID
                                          operator actions, audited as cli:$USER
  notifyd dev                             zero-configuration local setup
  notifyd bench-import [--recipients N]   benchmark recipient import and segment counts
  notifyd bench [--recipients N] ...      benchmark a broadcast end to end
  notifyd chaos [--recipients N] [--duration D] [--short]
                                          kill workers, restart PostgreSQL, fail providers mid-broadcast; check the invariants
  notifyd version
  notifyd help [command]

Every flag also reads an environment variable; see "notifyd help serve".
`

// run is the whole program; main only calls it. Signals are handled here, so a
// test can call run with its own context and environment.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	if len(args) < 2 {
		fmt.Fprint(stderr, usage)
		return errors.New("a command is required")
	}
	cmd, rest := args[1], args[2:]
	switch cmd {
	case "serve":
		return runServe(ctx, rest, getenv, stdout, stderr)
	case "migrate":
		return runMigrate(ctx, rest, getenv, stdout, stderr)
	case "apikey":
		return runAPIKey(ctx, rest, getenv, stdout, stderr)
	case "broadcast":
		return runBroadcast(ctx, rest, getenv, stdout, stderr)
	case "dev":
		return runDev(ctx, rest, getenv, stdout, stderr)
	case "bench":
		return runBench(ctx, rest, getenv, stdout, stderr)
	case "bench-import":
		return runBenchImport(ctx, rest, getenv, stdout, stderr)
	case "chaos":
		return runChaos(ctx, rest, getenv, stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "notifyd", version)
		return nil
	case "help", "-h", "--help":
		return runHelp(rest, getenv, stdout)
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}

func runHelp(args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stdout, usage)
		return nil
	}
	fs := flag.NewFlagSet("notifyd "+args[0], flag.ContinueOnError)
	fs.SetOutput(stdout)
	bindConfig(fs, getenv, &config{})
	fmt.Fprintf(stdout, "Flags of notifyd %s (each also read from the variable in parentheses):\n", args[0])
	fs.PrintDefaults()
	return nil
}

// parseConfig parses the common flags of a command.
func parseConfig(name string, args []string, getenv func(string) string, stderr io.Writer) (*config, *flag.FlagSet, error) {
	fs := flag.NewFlagSet("notifyd "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &config{}
	bindConfig(fs, getenv, c)
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	return c, fs, nil
}

// newLogger writes structured logs (JSON in serve, text in dev), each line
// carrying the request id of the request it belongs to.
func newLogger(format string, w io.Writer) *slog.Logger {
	var h slog.Handler = slog.NewJSONHandler(w, nil)
	if format == "text" {
		h = slog.NewTextHandler(w, nil)
	}
	return slog.New(telemetry.ContextHandler{Handler: h})
}

func flagSet(fs interface{ Visit(func(*flag.Flag)) }, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			found = true
		}
	})
	return found
}
