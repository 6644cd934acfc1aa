package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/migrations/pgtest"
)

// The timing and worker settings: defaults, environment, flags, and errors
// that name the variable (a value that does not parse is an error, not the
// default).
func TestConfigTimingAndWorkerSettings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		wantErr string // "" means valid
		check   func(t *testing.T, c *config)
	}{
		{name: "defaults", check: func(t *testing.T, c *config) {
			if c.SendTimeout != 30*time.Second || c.RescueAfter != 3*time.Minute || c.BulkWorkers != 8 {
				t.Errorf("send timeout %s, rescue after %s, bulk workers %d; want 30s, 3m, 8", c.SendTimeout, c.RescueAfter, c.BulkWorkers)
			}
		}},
		{name: "from the environment", env: map[string]string{"NOTIFYD_SEND_TIMEOUT": "10s", "NOTIFYD_RESCUE_AFTER": "80s", "NOTIFYD_BULK_WORKERS": "6"},
			check: func(t *testing.T, c *config) {
				if c.SendTimeout != 10*time.Second || c.RescueAfter != 80*time.Second || c.BulkWorkers != 6 {
					t.Errorf("got %s, %s, %d", c.SendTimeout, c.RescueAfter, c.BulkWorkers)
				}
			}},
		{name: "the flag wins", env: map[string]string{"NOTIFYD_SEND_TIMEOUT": "10s"}, args: []string{"--send-timeout", "5s", "--rescue-after", "2m"},
			check: func(t *testing.T, c *config) {
				if c.SendTimeout != 5*time.Second || c.RescueAfter != 2*time.Minute {
					t.Errorf("got %s, %s", c.SendTimeout, c.RescueAfter)
				}
			}},
		{name: "rescue shorter than a job can run", env: map[string]string{"NOTIFYD_SEND_TIMEOUT": "10s", "NOTIFYD_RESCUE_AFTER": "30s"},
			wantErr: "NOTIFYD_RESCUE_AFTER must be at least 1m20s"},
		{name: "rescue below the default send timeout", env: map[string]string{"NOTIFYD_RESCUE_AFTER": "1m"},
			wantErr: "NOTIFYD_RESCUE_AFTER must be at least 2m0s"},
		{name: "send timeout too short", env: map[string]string{"NOTIFYD_SEND_TIMEOUT": "100ms"}, wantErr: "NOTIFYD_SEND_TIMEOUT must be 1s to 10m"},
		{name: "send timeout not a duration", env: map[string]string{"NOTIFYD_SEND_TIMEOUT": "10"}, wantErr: `NOTIFYD_SEND_TIMEOUT must be a duration like 30s or 2m, not "10"`},
		{name: "rescue not a duration", env: map[string]string{"NOTIFYD_RESCUE_AFTER": "soon"}, wantErr: `NOTIFYD_RESCUE_AFTER must be a duration`},
		{name: "bulk workers not a number", env: map[string]string{"NOTIFYD_BULK_WORKERS": "four"}, wantErr: `NOTIFYD_BULK_WORKERS must be a whole number, not "four"`},
		{name: "rate not a number", env: map[string]string{"NOTIFYD_EMAIL_RATE": "1k"}, wantErr: `NOTIFYD_EMAIL_RATE must be a number, not "1k"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, _, err := parseConfig("serve", tt.args, envOf(tt.env), io.Discard)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			err = c.validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("validate: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("validate = %v, want an error containing %q", err, tt.wantErr)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

// `notifyd help serve` lists the new settings with their variables.
func TestHelpServeListsTimingSettings(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	if err := runHelp([]string{"serve"}, envOf(nil), &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"NOTIFYD_SEND_TIMEOUT", "NOTIFYD_RESCUE_AFTER", "NOTIFYD_BULK_WORKERS", "-send-timeout", "-rescue-after"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help serve lacks %s:\n%s", want, out.String())
		}
	}
}

// A pool that delivery batches could exhaust while each waits for a second
// connection is refused with the URL setting that fixes it.
func TestPoolSizeMustOutgrowTheBulkWorkers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		role     string
		bulk     int
		maxConns int32
		wantErr  string
	}{
		{"all", 4, 20, ""},
		{"worker", 8, 32, ""},
		{"worker", 8, 20, "add pool_max_conns=32 to DATABASE_URL"},
		{"all", 5, 20, "add pool_max_conns=23 to DATABASE_URL"},
		{"api", 100, 20, ""}, // runs no workers
	} {
		err := checkPoolSize(&config{Role: tc.role, BulkWorkers: tc.bulk}, tc.maxConns)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("role %s, %d bulk workers, pool of %d: error %v, want %q", tc.role, tc.bulk, tc.maxConns, err, tc.wantErr)
		}
	}
}

// Without pool_max_conns in DATABASE_URL, a worker's pool is sized for its bulk
// workers, so the defaults never trip checkPoolSize; with it, the URL wins.
func TestPoolIsSizedForTheBulkWorkers(t *testing.T) {
	t.Parallel()
	for _, bulk := range []int{1, 4, 8, 30} {
		for _, role := range []string{"all", "worker", "api"} {
			c := &config{Role: role, BulkWorkers: bulk}
			if err := checkPoolSize(c, poolConnsFor(c)); err != nil {
				t.Errorf("role %s, %d bulk workers: the default pool of %d is refused: %v", role, bulk, poolConnsFor(c), err)
			}
		}
	}
	if got := poolConnsFor(&config{Role: "api", BulkWorkers: 30}); got != minPoolConns {
		t.Errorf("an API process opens %d connections, want %d", got, minPoolConns)
	}

	dbURL := pgtest.NewDatabase(t)
	sep := "?"
	if strings.Contains(dbURL, "?") {
		sep = "&"
	}
	for _, tc := range []struct {
		url   string
		conns int32
		want  int32
	}{
		{dbURL, 40, 40},
		{dbURL, 5, minPoolConns},
		{dbURL + sep + "pool_max_conns=25", 40, 25},
		{dbURL + sep + "pool_max_conns=5", 40, minPoolConns},
	} {
		pool, err := openSizedDB(t.Context(), tc.url, tc.conns)
		if err != nil {
			t.Fatal(err)
		}
		if got := pool.Config().MaxConns; got != tc.want {
			t.Errorf("openSizedDB(%s, %d): pool of %d, want %d", tc.url, tc.conns, got, tc.want)
		}
		pool.Close()
	}
}
