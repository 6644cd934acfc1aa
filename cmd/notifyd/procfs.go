package main

// What the bench commands read from /proc to report CPU and memory (Linux only),
// and how they format counts.

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc CPU times: 100 on every mainstream Linux.
const clockTicks = 100

// readMachineCPU reads the all-CPU line of /proc/stat.
func readMachineCPU() (busy, total uint64, ok bool) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	fields := strings.Fields(line)
	if len(fields) < 5 || fields[0] != "cpu" {
		return 0, 0, false
	}
	// user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
	for i, f := range fields[1:min(len(fields), 9)] {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total, total > 0
}

// clusterCPU is the CPU time of a cluster's postmaster, its live children (the
// backends) and its exited children (parallel workers, autovacuum workers).
func clusterCPU(dataDir string) (time.Duration, bool) {
	raw, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	first, _, _ := strings.Cut(string(raw), "\n")
	postmaster, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return 0, false
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, false
	}
	var ticks uint64
	found := false
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, ok := readProcStat(pid)
		if !ok {
			continue
		}
		switch {
		case pid == postmaster:
			ticks += st.utime + st.stime + st.cutime + st.cstime
			found = true
		case st.ppid == postmaster:
			ticks += st.utime + st.stime
		}
	}
	return time.Duration(ticks) * time.Second / clockTicks, found
}

// processCPU is the CPU time a live process has used (user + system).
func processCPU(pid int) (time.Duration, bool) {
	st, ok := readProcStat(pid)
	return time.Duration(st.utime+st.stime) * time.Second / clockTicks, ok
}

type procStat struct {
	ppid                         int
	utime, stime, cutime, cstime uint64
}

// readProcStat reads /proc/PID/stat (man 5 proc).
func readProcStat(pid int) (procStat, bool) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	// The command name is in parentheses and may hold spaces: fields follow the last ")".
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 15 {
		return procStat{}, false
	}
	var st procStat
	var errs [5]error
	st.ppid, errs[0] = strconv.Atoi(f[1])
	st.utime, errs[1] = strconv.ParseUint(f[11], 10, 64)
	st.stime, errs[2] = strconv.ParseUint(f[12], 10, 64)
	cutime, err3 := strconv.ParseInt(f[13], 10, 64)
	cstime, err4 := strconv.ParseInt(f[14], 10, 64)
	errs[3], errs[4] = err3, err4
	if errors.Join(errs[:]...) != nil {
		return procStat{}, false
	}
	st.cutime, st.cstime = uint64(max(cutime, 0)), uint64(max(cstime, 0))
	return st, true
}

// procStatusKiB reads a "Vm...: N kB" line of /proc/PID/status; -1 if absent.
func procStatusKiB(pid int, field string) int64 {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(raw)) {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}

// thousands writes n with thousands separators: 10000 -> 10,000.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
