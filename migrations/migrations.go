// Package migrations holds notifyd's SQL schema as numbered, embedded files and
// applies it together with River's own migrations.
package migrations

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

//go:embed *.sql
var files embed.FS

// Migration is one numbered step of notifyd's own schema.
type Migration struct {
	Version int
	Name    string
	Up      string
}

// lockKey serialises concurrent `notifyd migrate` runs (any constant unlikely to
// clash with other users of advisory locks in the same database).
const lockKey = 0x6e6f7469667964 // "notifyd"

// ErrNotMigrated means the schema is missing or older than this binary expects.
var ErrNotMigrated = errors.New("database schema is not migrated: run `notifyd migrate`")

// All returns the embedded migrations in order.
func All() ([]Migration, error) {
	entries, err := fs.Glob(files, "*.up.sql")
	if err != nil {
		return nil, err
	}
	var all []Migration
	for _, name := range entries {
		number, rest, ok := strings.Cut(name, "_")
		version, err := strconv.Atoi(number)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration %q: name must be NNN_name.up.sql", name)
		}
		body, err := files.ReadFile(name)
		if err != nil {
			return nil, err
		}
		all = append(all, Migration{Version: version, Name: strings.TrimSuffix(rest, ".up.sql"), Up: string(body)})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Version < all[j].Version })
	for i, m := range all {
		if m.Version != i+1 {
			return nil, fmt.Errorf("migration versions must be 1..n without gaps; found %d at position %d", m.Version, i+1)
		}
	}
	return all, nil
}

// Latest is the version this binary expects.
func Latest() int {
	all, err := All()
	if err != nil || len(all) == 0 {
		return 0
	}
	return all[len(all)-1].Version
}

// Result reports what Migrate did.
type Result struct {
	RiverApplied []int
	Applied      []Migration
}

// Migrate applies River's migrations and then notifyd's under a session advisory
// lock: two processes migrating at once queue up, and the second finds nothing left
// to do. notifyd's own steps run in one transaction; River's run through
// rivermigrate, which cannot put all of them in one (enum values added and used).
func Migrate(ctx context.Context, pool *pgxpool.Pool) (*Result, error) {
	all, err := All()
	if err != nil {
		return nil, err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(lockKey)); err != nil {
		return nil, err
	}
	defer func() {
		// A fresh context: the lock must go even when ctx is done; if unlocking
		// fails, closing the connection releases it.
		unlockCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(unlockCtx, "SELECT pg_advisory_unlock($1)", int64(lockKey)); err != nil {
			conn.Conn().Close(unlockCtx) //nolint:errcheck
		}
	}()

	// River's steps go one transaction each, on the connection holding the lock:
	// a second pool connection per migrating process could exhaust a small pool.
	migrator, err := rivermigrate.New(riverpgxv5.New(pool), nil)
	if err != nil {
		return nil, err
	}
	result := &Result{}
	for {
		applied, err := riverStep(ctx, conn.Conn(), migrator)
		if err != nil {
			return nil, fmt.Errorf("river migrations: %w", err)
		}
		if len(applied) == 0 {
			break
		}
		result.RiverApplied = append(result.RiverApplied, applied...)
	}

	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS notifyd_migrations (
		version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, err
	}
	current, err := currentVersion(ctx, tx)
	if err != nil {
		return nil, err
	}
	for _, m := range all {
		if m.Version <= current {
			continue
		}
		if _, err := tx.Exec(ctx, m.Up); err != nil {
			return nil, fmt.Errorf("migration %03d_%s: %w", m.Version, m.Name, err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO notifyd_migrations (version, name) VALUES ($1, $2)", m.Version, m.Name); err != nil {
			return nil, err
		}
		result.Applied = append(result.Applied, m)
	}
	return result, tx.Commit(ctx)
}

// Check returns ErrNotMigrated unless both River's and notifyd's schema are at the
// versions this binary expects.
func Check(ctx context.Context, pool *pgxpool.Pool) error {
	var current int
	err := pool.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM notifyd_migrations`).Scan(&current)
	if err != nil {
		if strings.Contains(err.Error(), "does not exist") {
			return ErrNotMigrated
		}
		return err
	}
	if current < Latest() {
		return ErrNotMigrated
	}
	if current > Latest() {
		return fmt.Errorf("database schema is at version %d, newer than this binary (%d): upgrade notifyd", current, Latest())
	}
	migrator, err := rivermigrate.New(riverpgxv5.New(pool), nil)
	if err != nil {
		return err
	}
	validation, err := migrator.Validate(ctx, nil)
	if err != nil {
		return err
	}
	if !validation.OK {
		return ErrNotMigrated
	}
	return nil
}

func riverStep(ctx context.Context, conn *pgx.Conn, migrator *rivermigrate.Migrator[pgx.Tx]) ([]int, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	res, err := migrator.MigrateTx(ctx, tx, rivermigrate.DirectionUp, &rivermigrate.MigrateOpts{MaxSteps: 1})
	if err != nil {
		return nil, err
	}
	var versions []int
	for _, v := range res.Versions {
		versions = append(versions, v.Version)
	}
	return versions, tx.Commit(ctx)
}

func currentVersion(ctx context.Context, tx pgx.Tx) (int, error) {
	var v int
	err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM notifyd_migrations").Scan(&v)
	return v, err
}
