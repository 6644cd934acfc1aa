package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/notifyd/notifyd/migrations"
)

// minPoolConns is the smallest pool notifyd opens, whatever DATABASE_URL says.
const minPoolConns = 20

// openDB connects to the database and turns the usual failures into one line
// that says what to do.
func openDB(ctx context.Context, databaseURL string) (*pgxpool.Pool, error) {
	return openSizedDB(ctx, databaseURL, minPoolConns)
}

// openSizedDB is openDB with a pool of conns connections, unless DATABASE_URL
// sets pool_max_conns itself.
func openSizedDB(ctx context.Context, databaseURL string, conns int32) (*pgxpool.Pool, error) {
	if databaseURL == "" {
		return nil, errors.New("DATABASE_URL is not set: set it (or --database-url), or run `notifyd dev` for a local setup")
	}
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, errors.New("DATABASE_URL is not a valid PostgreSQL URL (postgres://user:pass@host:5432/db)")
	}
	if !strings.Contains(databaseURL, "pool_max_conns") {
		cfg.MaxConns = max(cfg.MaxConns, conns)
	}
	cfg.MaxConns = max(cfg.MaxConns, minPoolConns)
	// PostgreSQL compiles a plan whose estimated cost passes jit_above_cost, and
	// an expansion chunk always does: 90-200 ms of compiling per chunk, about a
	// tenth of the expansion (docs/benchmarks.md). Our statements are short and
	// many; DATABASE_URL can still turn it on (?jit=on).
	if _, set := cfg.ConnConfig.RuntimeParams["jit"]; !set {
		cfg.ConnConfig.RuntimeParams["jit"] = "off"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, describeConnectError(cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, err)
	}
	return pool, nil
}

func describeConnectError(host string, port uint16, database string, err error) error {
	where := fmt.Sprintf("%s:%d", host, port)
	var pgErr *pgconn.PgError
	var netErr *net.OpError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "3D000":
		return fmt.Errorf("database %q does not exist on %s: create it (createdb %s) or fix DATABASE_URL", database, where, database)
	case errors.As(err, &pgErr) && (pgErr.Code == "28P01" || pgErr.Code == "28000"):
		return fmt.Errorf("PostgreSQL at %s refused the credentials in DATABASE_URL: fix the user or password", where)
	case errors.As(err, &netErr), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("cannot reach PostgreSQL at %s: start it or fix DATABASE_URL", where)
	}
	return fmt.Errorf("cannot connect to PostgreSQL at %s: %v", where, err)
}

// openMigratedDB is openDB plus a check that the schema is current.
func openMigratedDB(ctx context.Context, databaseURL string, conns int32) (*pgxpool.Pool, error) {
	pool, err := openSizedDB(ctx, databaseURL, conns)
	if err != nil {
		return nil, err
	}
	if err := migrations.Check(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}
