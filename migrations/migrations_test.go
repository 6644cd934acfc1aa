package migrations_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/notifyd/notifyd/migrations"
	"github.com/notifyd/notifyd/migrations/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestMigrateIsIdempotentAndConcurrencySafe(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// The template is already migrated: start from an empty schema instead.
	pool := pgtest.NewPool(t)
	if _, err := pool.Exec(ctx, "DROP SCHEMA public CASCADE; CREATE SCHEMA public"); err != nil {
		t.Fatal(err)
	}
	if err := migrations.Check(ctx, pool); !errors.Is(err, migrations.ErrNotMigrated) {
		t.Fatalf("Check on empty schema = %v, want ErrNotMigrated", err)
	}

	var wg sync.WaitGroup
	results := make([]*migrations.Result, 4)
	errs := make([]error, 4)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = migrations.Migrate(ctx, pool)
		}()
	}
	wg.Wait()
	applied := 0
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent migrate %d: %v", i, err)
		}
		applied += len(results[i].Applied)
	}
	if applied != migrations.Latest() {
		t.Fatalf("migrations applied %d times in total across concurrent runs, want exactly %d", applied, migrations.Latest())
	}
	if err := migrations.Check(ctx, pool); err != nil {
		t.Fatalf("Check after migrate: %v", err)
	}
	again, err := migrations.Migrate(ctx, pool)
	if err != nil || len(again.Applied) != 0 || len(again.RiverApplied) != 0 {
		t.Fatalf("second migrate = %+v, %v; want nothing applied", again, err)
	}
}

func TestCheckRejectsNewerSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t)
	if _, err := pool.Exec(ctx, "INSERT INTO notifyd_migrations (version, name) VALUES (9999, 'future')"); err != nil {
		t.Fatal(err)
	}
	err := migrations.Check(ctx, pool)
	if err == nil || errors.Is(err, migrations.ErrNotMigrated) {
		t.Fatalf("Check = %v, want a newer-schema error", err)
	}
}
