// Package pgtest gives each test its own migrated PostgreSQL database.
//
// A test package calls Main from TestMain. When TEST_DATABASE_URL is set, that
// server is used; otherwise Main starts a throwaway cluster (initdb + pg_ctl, as the
// postgres user when running as root) and removes it when the tests end. Main
// migrates one template database; NewPool clones it per test, which takes
// milliseconds. The state is handed over through the process environment, so the
// package keeps no globals.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/notifyd/notifyd/migrations"
	"github.com/notifyd/notifyd/migrations/localpg"
)

const (
	envURL      = "TEST_DATABASE_URL"
	envTemplate = "NOTIFYD_TEST_TEMPLATE"
	dirPrefix   = "notifyd-pgtest-"
)

// Main runs the package's tests against a server and a migrated template, then
// cleans up what it started. Use it as `func TestMain(m *testing.M) { pgtest.Main(m) }`.
func Main(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if os.Getenv(envURL) == "" {
		localpg.SweepOrphans(os.TempDir(), dirPrefix)
		dir, err := os.MkdirTemp("", dirPrefix)
		if err != nil {
			fmt.Fprintln(os.Stderr, "pgtest:", err)
			return 1
		}
		cluster, err := localpg.Start(ctx, dir, localpg.Options{})
		if err != nil {
			os.RemoveAll(dir)
			fmt.Fprintln(os.Stderr, "pgtest:", err)
			return 1
		}
		defer func() {
			if err := cluster.Destroy(); err != nil {
				fmt.Fprintln(os.Stderr, "pgtest: stopping cluster:", err)
			}
		}()
		os.Setenv(envURL, cluster.URL("postgres"))
	}

	template := "notifyd_tpl_" + randomSuffix()
	if err := createTemplate(ctx, os.Getenv(envURL), template); err != nil {
		fmt.Fprintln(os.Stderr, "pgtest: creating template:", err)
		return 1
	}
	defer dropDatabase(os.Getenv(envURL), template)
	os.Setenv(envTemplate, template)
	return m.Run()
}

func createTemplate(ctx context.Context, adminURL, name string) error {
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return err
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, withDatabase(adminURL, name))
	if err != nil {
		return err
	}
	defer pool.Close()
	_, err = migrations.Migrate(ctx, pool)
	return err
}

// NewDatabase creates an empty, migrated database for t, dropped when t ends, and
// returns its URL.
func NewDatabase(t testing.TB) string {
	t.Helper()
	adminURL, template := os.Getenv(envURL), os.Getenv(envTemplate)
	if adminURL == "" || template == "" {
		t.Fatal("pgtest: call pgtest.Main from TestMain")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer admin.Close(ctx)
	name := "notifyd_test_" + randomSuffix()
	_, err = admin.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s STRATEGY FILE_COPY",
		pgx.Identifier{name}.Sanitize(), pgx.Identifier{template}.Sanitize()))
	if err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() { dropDatabase(adminURL, name) })
	return withDatabase(adminURL, name)
}

// NewPool returns a pool on a fresh database for t (see NewDatabase).
func NewPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	dbURL := NewDatabase(t)
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatalf("pgtest: pool: %v", err)
	}
	// Registered after the drop, so it runs first: close before dropping.
	t.Cleanup(pool.Close)
	return pool
}

func dropDatabase(adminURL, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return
	}
	defer admin.Close(ctx)
	_, _ = admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
}

func withDatabase(rawURL, database string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return rawURL
	}
	u.Path = "/" + database
	return u.String()
}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
