package queue

import (
	"testing"
	"time"
)

func TestRetryDelayGrowsWithJitterAndIsCapped(t *testing.T) {
	t.Parallel()
	tests := []struct {
		attempt int
		base    time.Duration
	}{
		{1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second}, {6, 32 * time.Second},
		{7, time.Minute}, {25, time.Minute},
	}
	for _, tt := range tests {
		seen := map[time.Duration]bool{}
		for range 50 {
			d := retryDelay(tt.attempt)
			if d < tt.base*4/5 || d > tt.base*6/5 {
				t.Fatalf("attempt %d: delay %v outside %v +-20%%", tt.attempt, d, tt.base)
			}
			seen[d] = true
		}
		if len(seen) < 2 {
			t.Fatalf("attempt %d: no jitter", tt.attempt)
		}
	}
}
