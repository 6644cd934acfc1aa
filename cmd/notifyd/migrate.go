package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/notifyd/notifyd/migrations"
)

func runMigrate(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c, _, err := parseConfig("migrate", args, getenv, stderr)
	if err != nil {
		return err
	}
	pool, err := openDB(ctx, c.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	res, err := migrations.Migrate(ctx, pool)
	if err != nil {
		return err
	}
	var applied []string
	for _, m := range res.Applied {
		applied = append(applied, fmt.Sprintf("%03d_%s", m.Version, m.Name))
	}
	if len(applied) == 0 && len(res.RiverApplied) == 0 {
		fmt.Fprintf(stdout, "schema is up to date (version %d)\n", migrations.Latest())
		return nil
	}
	fmt.Fprintf(stdout, "applied river %v, notifyd [%s]; schema at version %d\n", res.RiverApplied, strings.Join(applied, " "), migrations.Latest())
	return nil
}
