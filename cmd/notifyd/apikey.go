package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/notifyd/notifyd/notifier"
)

func runAPIKey(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: notifyd apikey create|list|revoke")
	}
	sub, rest := args[0], args[1:]
	c, fs, err := parseConfig("apikey "+sub, nil, getenv, stderr)
	if err != nil {
		return err
	}
	name := fs.String("name", "", "a name for the key (shown in the audit log)")
	scopes := fs.String("scopes", notifier.ScopeSend, "comma-separated scopes: send, admin")
	if err := fs.Parse(rest); err != nil {
		return err
	}
	pool, err := openMigratedDB(ctx, c.DatabaseURL, minPoolConns)
	if err != nil {
		return err
	}
	defer pool.Close()
	svc := notifier.NewService(pool, nil, nil)
	switch sub {
	case "create":
		key, secret, err := svc.CreateAPIKey(ctx, *name, strings.Split(*scopes, ","))
		if err != nil {
			return cliError(err)
		}
		fmt.Fprintf(stdout, "created API key %s (%s) with scopes %s; the secret is shown once:\n%s\n",
			key.ID, key.Name, strings.Join(key.Scopes, ","), secret)
		return nil
	case "list":
		keys, err := svc.FindAPIKeys(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tSCOPES\tCREATED\tLAST USED\tREVOKED")
		for _, k := range keys {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Name, strings.Join(k.Scopes, ","),
				k.CreatedAt.Format("2006-01-02 15:04"), timeOrDash(k.LastUsedAt), timeOrDash(k.RevokedAt))
		}
		return tw.Flush()
	case "revoke":
		if fs.NArg() != 1 {
			return errors.New("usage: notifyd apikey revoke ID|NAME")
		}
		key, err := svc.RevokeAPIKey(ctx, fs.Arg(0))
		if err != nil {
			return cliError(err)
		}
		fmt.Fprintf(stdout, "revoked API key %s (%s)\n", key.ID, key.Name)
		return nil
	}
	return fmt.Errorf("unknown apikey command %q: use create, list or revoke", sub)
}

// cliError renders a domain error as one readable line.
func cliError(err error) error {
	var e *notifier.Error
	if !errors.As(err, &e) {
		return err
	}
	msg := e.Message
	for field, detail := range e.Fields {
		msg += fmt.Sprintf("; %s %s", field, detail)
	}
	return errors.New(msg)
}

func timeOrDash(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Format("2006-01-02 15:04")
}
