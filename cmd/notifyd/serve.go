package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/notifyd/notifyd/migrations"
	"github.com/notifyd/notifyd/notifier"
)

func runServe(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c, _, err := parseConfig("serve", args, getenv, stderr)
	if err != nil {
		return err
	}
	if err := c.validate(); err != nil {
		return err
	}
	logger := newLogger(c.LogFormat, stderr)
	pool, err := openMigratedDB(ctx, c.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	return serve(ctx, c, pool, logger, nil)
}

// serveHooks lets dev and tests learn the bound address.
type serveHooks struct {
	listening func(addr string)
}

// serve runs the API and/or workers until ctx ends, then drains: the HTTP server
// stops taking connections and finishes in-flight requests, and the workers finish
// their jobs, both within ShutdownTimeout.
func serve(ctx context.Context, c *config, pool *pgxpool.Pool, logger *slog.Logger, hooks *serveHooks) error {
	svc := notifier.NewService(pool, logger, &notifier.ServiceOpts{RequiredCategories: c.requiredCategories()})
	runAPI := c.Role == "all" || c.Role == "api"
	if c.Role == "worker" {
		return errors.New("the worker role arrives with the broadcast pipeline; use --role api")
	}

	errc := make(chan error, 1)
	var srv *http.Server
	if runAPI {
		ln, err := net.Listen("tcp", c.Addr)
		if err != nil {
			return fmt.Errorf("NOTIFYD_ADDR %s: %w", c.Addr, err)
		}
		srv = &http.Server{
			Handler: notifier.NewServer(svc, logger, &notifier.ServerOpts{
				Ready: func(ctx context.Context) error { return migrations.Check(ctx, pool) },
			}),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
		}
		logger.Info("listening", "addr", ln.Addr().String(), "role", c.Role, "version", version)
		if hooks != nil && hooks.listening != nil {
			hooks.listening(ln.Addr().String())
		}
		go func() { errc <- srv.Serve(ln) }()
	}

	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	logger.Info("shutting down", "timeout", c.ShutdownTimeout)
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.ShutdownTimeout)
	defer cancel()
	var errs []error
	if srv != nil {
		errs = append(errs, srv.Shutdown(shutdownCtx))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	logger.Info("stopped")
	return nil
}
