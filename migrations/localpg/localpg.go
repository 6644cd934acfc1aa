// Package localpg starts a throwaway PostgreSQL cluster with initdb and pg_ctl, for
// tests, `notifyd dev` and `notifyd bench` on a machine where no server is running.
package localpg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Cluster is a running throwaway PostgreSQL server.
type Cluster struct {
	Dir  string // holds data/, the log and the owner file
	Port int
	bin  string
	cred *syscall.Credential // run as postgres when we are root
}

// Options tune a cluster.
type Options struct {
	// Durable keeps fsync on; tests and dev turn it off for speed.
	Durable bool
	// MaxConnections defaults to 300.
	MaxConnections int
}

// ownerFile records the pid of the process that started the cluster, so a later run
// can stop clusters whose owner died without cleaning up.
const ownerFile = "owner.pid"

// FindBin returns the directory holding initdb and pg_ctl.
func FindBin() (string, error) {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		return filepath.Dir(p), nil
	}
	for _, pattern := range []string{"/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/opt/postgresql*/bin"} {
		matches, _ := filepath.Glob(pattern)
		// Prefer the newest version: Glob sorts, so walk backwards.
		for i := len(matches) - 1; i >= 0; i-- {
			if _, err := os.Stat(filepath.Join(matches[i], "initdb")); err == nil {
				return matches[i], nil
			}
		}
	}
	return "", errors.New("PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL or set DATABASE_URL")
}

// Start creates a cluster in dir (which must not hold one yet, or holds a stopped
// one from an earlier Start) and starts it on a free loopback port.
func Start(ctx context.Context, dir string, opts Options) (*Cluster, error) {
	bin, err := FindBin()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, bin: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs a postgres user to run the server: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	// Parents must be traversable by the postgres user; the cluster dir is its own.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return nil, err
	}
	if c.cred != nil {
		if err := os.Chown(dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, err
	}
	dataDir := filepath.Join(dir, "data")
	if _, err := os.Stat(filepath.Join(dataDir, "PG_VERSION")); err != nil {
		if out, err := c.command(ctx, "initdb", "-D", dataDir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("initdb: %v: %s", err, lastLines(out))
		}
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	c.Port = port
	maxConns := opts.MaxConnections
	if maxConns == 0 {
		maxConns = 300
	}
	settings := []string{
		"-p", strconv.Itoa(port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=" + dir,
		"-c", "max_connections=" + strconv.Itoa(maxConns),
		"-c", "shared_buffers=256MB",
		"-c", "max_locks_per_transaction=256",
	}
	if !opts.Durable {
		settings = append(settings, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	logFile := filepath.Join(dir, "postgres.log")
	if out, err := c.command(ctx, "pg_ctl", "-D", dataDir, "-l", logFile, "-w", "-t", "60", "-o", strings.Join(settings, " "), "start").CombinedOutput(); err != nil {
		log, _ := os.ReadFile(logFile)
		return nil, fmt.Errorf("pg_ctl start: %v: %s %s", err, lastLines(out), lastLines(log))
	}
	return c, nil
}

// URL is the connection string for database name on this cluster.
func (c *Cluster) URL(database string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port, database)
}

// Stop stops the server; it does not remove the data directory.
func (c *Cluster) Stop() error {
	// A fresh context: stopping must happen even when the caller's context is done.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := c.command(ctx, "pg_ctl", "-D", filepath.Join(c.Dir, "data"), "-m", "fast", "-w", "stop").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %v: %s", err, lastLines(out))
	}
	return nil
}

// Restart stops and starts the server on the same port and settings (pg_ctl
// keeps them in postmaster.opts), as a crash test needs; mode is pg_ctl's -m:
// smart, fast or immediate (a crash and recovery). The server's output goes to
// the log file, as in Start: without -l the new postmaster inherits pg_ctl's
// stdout, the pipe CombinedOutput reads, and the call never returns.
func (c *Cluster) Restart(ctx context.Context, mode string) error {
	logFile := filepath.Join(c.Dir, "postgres.log")
	out, err := c.command(ctx, "pg_ctl", "-D", filepath.Join(c.Dir, "data"), "-l", logFile, "-m", mode, "-w", "-t", "60", "restart").CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(logFile)
		return fmt.Errorf("pg_ctl restart: %v: %s %s", err, lastLines(out), lastLines(log))
	}
	return nil
}

// Destroy stops the server and removes its directory.
func (c *Cluster) Destroy() error {
	stopErr := c.Stop()
	return errors.Join(stopErr, os.RemoveAll(c.Dir))
}

// SweepOrphans stops and removes clusters under parent whose directory name starts
// with prefix and whose owning process is gone: what a killed test run left behind.
func SweepOrphans(parent, prefix string) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		dir := filepath.Join(parent, e.Name())
		raw, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
		if err != nil || processAlive(pid) {
			continue
		}
		orphan := &Cluster{Dir: dir}
		if bin, err := FindBin(); err == nil {
			orphan.bin = bin
		}
		if os.Geteuid() == 0 {
			if u, err := user.Lookup("postgres"); err == nil {
				uid, _ := strconv.Atoi(u.Uid)
				gid, _ := strconv.Atoi(u.Gid)
				orphan.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
			}
		}
		_ = orphan.Destroy()
	}
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func (c *Cluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, name), args...)
	cmd.Dir = c.Dir
	// Its own process group: a Ctrl-C in the terminal reaches us, and we stop the
	// server in order, instead of the signal killing it mid-way.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if c.cred != nil {
		cmd.SysProcAttr.Credential = c.cred
	}
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}
