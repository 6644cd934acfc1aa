package push

import (
	"encoding/json"
	"reflect"
	"testing"

	"firebase.google.com/go/v4/messaging"

	"github.com/notifyd/notifyd/notifier"
)

func TestToFCMMessage(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name  string
		msg   notifier.Message
		token string
		want  *messaging.Message
	}{
		{
			name: "notification is high priority and carries its id",
			msg: notifier.Message{
				DeliveryID: 11, NotificationID: 7,
				Push: &notifier.PushMessage{Title: "Hi", Body: "There", Data: map[string]string{"screen": "home"}},
			},
			token: "tok-1",
			want: &messaging.Message{
				Token:        "tok-1",
				Notification: &messaging.Notification{Title: "Hi", Body: "There"},
				Data: map[string]string{
					"screen":                  "home",
					"notifyd_delivery_id":     "11",
					"notifyd_broadcast_id":    "0",
					"notifyd_notification_id": "7",
				},
				Android: &messaging.AndroidConfig{Priority: "high"},
				APNS: &messaging.APNSConfig{Headers: map[string]string{
					"apns-push-type": "alert", "apns-priority": "10",
				}},
			},
		},
		{
			name: "broadcast is normal priority",
			msg: notifier.Message{
				DeliveryID: 12, BroadcastID: 3,
				Push: &notifier.PushMessage{Title: "Sale", Body: "50% off"},
			},
			token: "tok-2",
			want: &messaging.Message{
				Token:        "tok-2",
				Notification: &messaging.Notification{Title: "Sale", Body: "50% off"},
				Data:         map[string]string{"notifyd_delivery_id": "12", "notifyd_broadcast_id": "3"},
				Android:      &messaging.AndroidConfig{Priority: "normal"},
				APNS: &messaging.APNSConfig{Headers: map[string]string{
					"apns-push-type": "alert", "apns-priority": "5",
				}},
			},
		},
		{
			name: "content cannot overwrite the identity keys",
			msg: notifier.Message{
				DeliveryID: 13, BroadcastID: 4,
				Push: &notifier.PushMessage{Title: "t", Data: map[string]string{
					"notifyd_delivery_id": "999", "notifyd_broadcast_id": "999", "k": "v",
				}},
			},
			token: "tok-3",
			want: &messaging.Message{
				Token:        "tok-3",
				Notification: &messaging.Notification{Title: "t"},
				Data:         map[string]string{"notifyd_delivery_id": "13", "notifyd_broadcast_id": "4", "k": "v"},
				Android:      &messaging.AndroidConfig{Priority: "normal"},
				APNS: &messaging.APNSConfig{Headers: map[string]string{
					"apns-push-type": "alert", "apns-priority": "5",
				}},
			},
		},
		{
			name: "no title or body is a background data push",
			msg: notifier.Message{
				DeliveryID: 14, NotificationID: 8,
				Push: &notifier.PushMessage{Data: map[string]string{"sync": "1"}},
			},
			token: "tok-4",
			want: &messaging.Message{
				Token: "tok-4",
				Data: map[string]string{
					"sync": "1", "notifyd_delivery_id": "14", "notifyd_broadcast_id": "0", "notifyd_notification_id": "8",
				},
				Android: &messaging.AndroidConfig{Priority: "high"},
				APNS: &messaging.APNSConfig{
					Headers: map[string]string{"apns-push-type": "background", "apns-priority": "5"},
					Payload: &messaging.APNSPayload{Aps: &messaging.Aps{ContentAvailable: true}},
				},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := toFCMMessage(tt.msg, tt.token)
			if !reflect.DeepEqual(tt.want, got) {
				t.Errorf("toFCMMessage:\n got %s\nwant %s", jsonString(t, got), jsonString(t, tt.want))
			}
		})
	}
}

func TestToFCMMessageDoesNotModifyInput(t *testing.T) {
	t.Parallel()
	data := map[string]string{"a": "b"}
	toFCMMessage(notifier.Message{DeliveryID: 1, Push: &notifier.PushMessage{Title: "x", Data: data}}, "tok")
	if len(data) != 1 {
		t.Fatalf("caller's data map was modified: %v", data)
	}
}

// jsonString shows a message the way the SDK puts it on the wire, which is also
// the most readable form of a mismatch.
func jsonString(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return string(b)
}
