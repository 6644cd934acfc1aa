package notifier

import (
	"context"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgxpool"
)

// The send lock of a broadcast is a Postgres advisory lock. Every delivery batch
// holds it shared, on its own connection, from just before the claim until its
// results are recorded; cancel and pause take it exclusively. So when cancel
// returns, every batch that claimed before it has finished its provider call, and
// every later claim sees the new status: no provider call starts after cancel.
// A worker that dies loses its connection, and with it the lock.
const sendLockClass = 0x6e6f7464 // "notd"

// capLockClass keys the advisory lock claims of a frequency-capped category take
// turns on (see ClaimBatch), one per category and channel.
const capLockClass = 0x6e636170 // "ncap"

// SendLock is a held shared send lock.
type SendLock struct {
	Conn *pgxpool.Conn
	id   int64
}

// AcquireSendLock takes the broadcast's send lock shared on a dedicated connection.
func (s *Service) AcquireSendLock(ctx context.Context, broadcastID int64) (*SendLock, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock_shared($1, $2)", int32(sendLockClass), int32(broadcastID)); err != nil {
		conn.Release()
		return nil, err
	}
	return &SendLock{Conn: conn, id: broadcastID}, nil
}

// Release gives the lock and the connection back. If unlocking fails the
// connection is closed, which releases the lock too.
func (l *SendLock) Release(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	if _, err := l.Conn.Exec(ctx, "SELECT pg_advisory_unlock_shared($1, $2)", int32(sendLockClass), int32(l.id)); err != nil {
		_ = l.Conn.Conn().Close(ctx)
	}
	l.Conn.Release()
}

// Guard returns ctx with a send gate (see SendGateOpen) that closes as soon as
// the lock's connection fails, and stop, to call once the provider calls are
// over and before the connection is used again. Nothing else uses the
// connection meanwhile, so a goroutine waits on it: when the server goes away
// the socket closes and the wait ends at once, while PostgreSQL is still down
// and no cancel can have returned.
func (l *SendLock) Guard(ctx context.Context) (guarded context.Context, stop func()) {
	var lost atomic.Bool
	watchCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The connection LISTENs to nothing, so the wait ends only when watchCtx
		// is done (a read deadline, which leaves the connection usable) or the
		// connection fails.
		_ = l.Conn.Conn().PgConn().WaitForNotification(watchCtx)
		if watchCtx.Err() == nil {
			lost.Store(true)
		}
	}()
	return WithSendGate(ctx, func() bool { return !lost.Load() }), func() {
		cancel()
		<-done
	}
}
