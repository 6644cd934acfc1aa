package queue

import (
	"math/rand/v2"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// retryPolicy is exponential backoff with jitter, capped at a minute. River's
// default grows as attempt^4 (81 s, 256 s, 625 s ...), which after a provider
// outage leaves deliveries waiting for minutes although the claim makes a quick
// retry safe; provider-wide slowing is the rate limiter's job, not the retry's.
type retryPolicy struct{}

var _ river.ClientRetryPolicy = retryPolicy{}

const maxRetryDelay = time.Minute

func (retryPolicy) NextRetry(job *rivertype.JobRow) time.Time {
	return time.Now().Add(retryDelay(job.Attempt))
}

// retryDelay is 1 s, 2 s, 4 s ... up to a minute, each +-20%.
func retryDelay(attempt int) time.Duration {
	d := min(time.Second<<min(max(attempt-1, 0), 10), maxRetryDelay)
	jitter := time.Duration(rand.Int64N(int64(d)*2/5+1)) - d/5
	return d + jitter
}
