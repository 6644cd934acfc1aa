package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/notifyd/notifyd/notifier"
	"github.com/notifyd/notifyd/queue"
)

const broadcastUsage = "usage: notifyd broadcast status|cancel|pause|resume ID [--watch] [--interval 1s]"

// runBroadcast is the operator's command line for one broadcast: its status (once
// or live with --watch), and cancel, pause and resume, which go through the same
// service calls as the admin API and are audited as "cli:$USER".
func runBroadcast(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New(broadcastUsage)
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "status", notifier.ActionCancel, notifier.ActionPause, notifier.ActionResume:
	default:
		return fmt.Errorf("unknown broadcast command %q: %s", sub, broadcastUsage)
	}
	c, fs, err := parseConfig("broadcast "+sub, nil, getenv, stderr)
	if err != nil {
		return err
	}
	watch := fs.Bool("watch", false, "status: redraw until the broadcast is completed, cancelled or failed")
	interval := fs.Duration("interval", time.Second, "status --watch: time between redraws")
	// Flags may come before or after the ID.
	var positional []string
	for {
		if err := fs.Parse(rest); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(positional) != 1 {
		return errors.New(broadcastUsage)
	}
	id, err := strconv.ParseInt(positional[0], 10, 64)
	if err != nil || id <= 0 {
		return fmt.Errorf("broadcast ID must be a positive number, not %q", positional[0])
	}
	if *watch && sub != "status" {
		return fmt.Errorf("--watch goes with status only: notifyd broadcast status %d --watch", id)
	}
	if *interval <= 0 {
		return fmt.Errorf("--interval must be a positive duration such as 1s, not %s", *interval)
	}

	pool, err := openMigratedDB(ctx, c.DatabaseURL, minPoolConns)
	if err != nil {
		return err
	}
	defer pool.Close()

	if sub == "status" {
		svc := notifier.NewService(pool, nil, nil)
		if *watch {
			tty := isTerminal(stdout) && getenv("TERM") != "dumb"
			return cliError(watchBroadcast(ctx, svc, id, *interval, stdout, tty))
		}
		b, err := svc.FindBroadcastByID(ctx, id)
		if err != nil {
			return cliError(err)
		}
		_, err = io.WriteString(stdout, strings.Join(broadcastSummary(b), "\n")+"\n")
		return err
	}

	// Resume enqueues jobs in the same transaction as the state change: an
	// insert-only River client is enough, the serving workers run them.
	q, err := queue.New(queue.Config{Pool: pool, Workers: false})
	if err != nil {
		return err
	}
	svc := notifier.NewService(pool, nil, &notifier.ServiceOpts{Enqueuer: q, RequiredCategories: c.requiredCategories()})
	actor := "cli:" + cliUser(getenv)
	var res *notifier.ControlResult
	switch sub {
	case notifier.ActionCancel:
		res, err = svc.CancelBroadcast(ctx, actor, id)
	case notifier.ActionPause:
		res, err = svc.PauseBroadcast(ctx, actor, id)
	case notifier.ActionResume:
		res, err = svc.ResumeBroadcast(ctx, actor, id)
	}
	if err != nil {
		return cliError(err)
	}
	_, err = io.WriteString(stdout, strings.Join(controlSummary(res), "\n")+"\n")
	return err
}

// cliUser names the operator for the audit log.
func cliUser(getenv func(string) string) string {
	for _, k := range []string{"USER", "LOGNAME"} {
		if v := strings.TrimSpace(getenv(k)); v != "" {
			return v
		}
	}
	return "unknown"
}

// isFinalStatus reports whether a broadcast can no longer change by itself.
func isFinalStatus(status string) bool {
	return status == notifier.StatusCompleted || status == notifier.StatusCancelled || status == notifier.StatusFailed
}

// watchBroadcast shows a broadcast every interval until it reaches a final
// status or ctx ends (Ctrl-C, which is not an error). On a terminal it redraws
// the summary in place; otherwise it writes one line per tick and the full
// summary at the end.
func watchBroadcast(ctx context.Context, svc *notifier.Service, id int64, interval time.Duration, w io.Writer, tty bool) error {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	drawn := 0 // lines of the previous frame (terminal)
	for {
		b, err := svc.FindBroadcastByID(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return nil // interrupted while asking
			}
			return err
		}
		final := isFinalStatus(b.Status)
		switch {
		case tty:
			drawn, err = redraw(w, broadcastSummary(b), drawn)
		case final:
			_, err = fmt.Fprintf(w, "%s %s\n%s\n", time.Now().Format("15:04:05"), broadcastLine(b), strings.Join(broadcastSummary(b), "\n"))
		default:
			_, err = fmt.Fprintf(w, "%s %s\n", time.Now().Format("15:04:05"), broadcastLine(b))
		}
		if err != nil || final {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// redraw moves the cursor up over the previous frame and writes lines over it,
// clearing each line first, and clears what is left below if the new frame is
// shorter. It returns the number of lines now on screen.
func redraw(w io.Writer, lines []string, previous int) (int, error) {
	var sb strings.Builder
	if previous > 0 {
		fmt.Fprintf(&sb, "\x1b[%dA", previous)
	}
	for _, l := range lines {
		sb.WriteString("\r\x1b[2K")
		sb.WriteString(l)
		sb.WriteString("\n")
	}
	if len(lines) < previous {
		sb.WriteString("\x1b[J")
	}
	_, err := io.WriteString(w, sb.String())
	return len(lines), err
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// broadcastSummary is the multi-line view of status: who and what, then one
// line per channel with a progress bar and the deliveries by status.
func broadcastSummary(b *notifier.Broadcast) []string {
	head := fmt.Sprintf("broadcast %d %q: %s", b.ID, b.Name, b.Status)
	if b.Status == notifier.StatusScheduled && b.SendAt != nil {
		head += ", sends at " + b.SendAt.Local().Format("2006-01-02 15:04:05")
	}
	switch {
	case b.Expanded || isFinalStatus(b.Status):
	case b.Status == notifier.StatusExpanding || b.Status == notifier.StatusSending:
		head += " (audience still expanding: totals will grow)"
	default:
		head += " (audience not expanded yet)"
	}
	audience := "segment " + b.Segment
	if b.Segment == "" {
		audience = fmt.Sprintf("%d listed recipients", b.Recipients)
	}
	lines := []string{head,
		fmt.Sprintf("  category %s, %s, %s recipients, created %s by %s", b.Category, audience,
			thousands(b.Counts.Recipients), b.CreatedAt.Local().Format("2006-01-02 15:04:05"), b.CreatedBy)}
	if b.FailureReason != "" {
		lines = append(lines, "  failed: "+b.FailureReason)
	}
	rows := [][]string{}
	for _, ch := range b.ChannelNames {
		rows = append(rows, channelRow(ch, b.Channels[ch]))
	}
	if len(b.ChannelNames) > 1 {
		t := b.Counts
		rows = append(rows, channelRow("total", notifier.ChannelCounts{Deliveries: t.Deliveries, Pending: t.Pending, Sending: t.Sending,
			Sent: t.Sent, Failed: t.Failed, Suppressed: t.Suppressed, Cancelled: t.Cancelled, Unknown: t.Unknown}))
	}
	return append(lines, alignColumns(rows, "  ")...)
}

// channelRow is one channel's columns: name, bar, percent, done/total, counts.
func channelRow(name string, c notifier.ChannelCounts) []string {
	done := c.Deliveries - c.Pending - c.Sending
	if c.Deliveries == 0 {
		return []string{name, progressBar(0, 20), "-", "0/0", countsText(c)}
	}
	frac := float64(done) / float64(c.Deliveries)
	return []string{name, progressBar(frac, 20), fmt.Sprintf("%d%%", int(frac*100)),
		thousands(done) + "/" + thousands(c.Deliveries), countsText(c)}
}

func countsText(c notifier.ChannelCounts) string {
	s := fmt.Sprintf("sent %s  failed %s  suppressed %s  pending %s  cancelled %s  unknown %s",
		thousands(c.Sent), thousands(c.Failed), thousands(c.Suppressed), thousands(c.Pending),
		thousands(c.Cancelled), thousands(c.Unknown))
	if c.Sending > 0 {
		s += "  in flight " + thousands(c.Sending)
	}
	return s
}

// broadcastLine is status on one line, for logs and pipes.
func broadcastLine(b *notifier.Broadcast) string {
	parts := []string{fmt.Sprintf("broadcast %d %s", b.ID, b.Status)}
	for _, ch := range b.ChannelNames {
		r := channelRow(ch, b.Channels[ch])
		parts = append(parts, r[0]+" "+r[2]+" "+r[3])
	}
	t := b.Counts
	parts = append(parts, countsText(notifier.ChannelCounts{Pending: t.Pending, Sending: t.Sending, Sent: t.Sent,
		Failed: t.Failed, Suppressed: t.Suppressed, Cancelled: t.Cancelled, Unknown: t.Unknown}))
	return strings.Join(parts, "  ")
}

// controlSummary says what an action changed and the counts when it took effect.
func controlSummary(r *notifier.ControlResult) []string {
	past := map[string]string{notifier.ActionCancel: "cancelled", notifier.ActionPause: "paused", notifier.ActionResume: "resumed"}[r.Action]
	var head string
	switch {
	case !r.Changed:
		head = fmt.Sprintf("broadcast %d is already %s: nothing changed", r.ID, r.Status)
	case r.Action == notifier.ActionCancel:
		head = fmt.Sprintf("cancelled broadcast %d: no provider call for it starts any more", r.ID)
	case r.Action == notifier.ActionPause:
		head = fmt.Sprintf("paused broadcast %d: sending stopped; resume continues with what is pending", r.ID)
	default:
		head = fmt.Sprintf("%s broadcast %d: status is now %s", past, r.ID, r.Status)
	}
	c := r.Counts
	counts := fmt.Sprintf("  status %s: sent %s  failed %s  suppressed %s  pending %s  cancelled %s  unknown %s",
		r.Status, thousands(c.Sent), thousands(c.Failed), thousands(c.Suppressed), thousands(c.Pending),
		thousands(c.Cancelled), thousands(c.Unknown))
	if c.InFlight > 0 {
		counts += fmt.Sprintf("  in flight %s (their worker stopped; they become unknown)", thousands(c.InFlight))
	}
	return []string{head, counts}
}

// progressBar draws frac (0..1) as [#####-----] of the given width.
func progressBar(frac float64, width int) string {
	frac = max(0, min(1, frac))
	n := int(frac * float64(width))
	return "[" + strings.Repeat("#", n) + strings.Repeat("-", width-n) + "]"
}

// alignColumns pads every column but the last to its widest cell; the third and
// fourth (percent, done/total) are right-aligned.
func alignColumns(rows [][]string, indent string) []string {
	var widths []int
	for _, r := range rows {
		for i, cell := range r {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], len(cell))
		}
	}
	out := make([]string, len(rows))
	for j, r := range rows {
		cells := make([]string, len(r))
		for i, cell := range r {
			switch {
			case i == len(r)-1:
				cells[i] = cell
			case i == 2 || i == 3:
				cells[i] = fmt.Sprintf("%*s", widths[i], cell)
			default:
				cells[i] = fmt.Sprintf("%-*s", widths[i], cell)
			}
		}
		out[j] = indent + strings.Join(cells, "  ")
	}
	return out
}
