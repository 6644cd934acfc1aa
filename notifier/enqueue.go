package notifier

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// DeliveryBatch is the unit of delivery work: the deliveries of one broadcast (or
// notification) on one channel with ids in [FirstID, LastID]. A job carries a batch
// rather than one message, so the queue never bounds throughput; rows of other
// broadcasts that fall in the range are excluded by the broadcast id.
type DeliveryBatch struct {
	BroadcastID    int64  `json:"broadcast_id,omitempty"`
	NotificationID int64  `json:"notification_id,omitempty"`
	Channel        string `json:"channel"`
	FirstID        int64  `json:"first_id"`
	LastID         int64  `json:"last_id"`
	Count          int    `json:"count"`
}

// Enqueuer puts work on the job queue inside the caller's transaction, so the
// state change and its job commit or vanish together. The queue package
// implements it with River's InsertTx / InsertManyTx.
type Enqueuer interface {
	EnqueueExpandTx(ctx context.Context, tx pgx.Tx, broadcastID int64, at time.Time) error
	EnqueueDeliveriesTx(ctx context.Context, tx pgx.Tx, batches []DeliveryBatch, transactional bool) error
}
