package push

import (
	"strconv"

	"firebase.google.com/go/v4/messaging"

	"github.com/notifyd/notifyd/notifier"
)

// Data keys that carry a message's identity to the device, so that an app (and
// anyone reading FCM's delivery data) can tie a push back to notifyd's records.
const (
	DataKeyDeliveryID     = "notifyd_delivery_id"
	DataKeyBroadcastID    = "notifyd_broadcast_id"
	DataKeyNotificationID = "notifyd_notification_id"
)

// toFCMMessage maps one recipient's push message to the FCM message for one of
// their device tokens.
//
// Transactional notifications (BroadcastID == 0) go at high priority, broadcasts
// at normal priority so that bulk sends do not wake every device at once. A
// message without title and body is a data-only (background) push, which APNs
// only accepts at priority 5 with push type "background".
func toFCMMessage(m notifier.Message, token string) *messaging.Message {
	var p notifier.PushMessage
	if m.Push != nil {
		p = *m.Push
	}

	data := make(map[string]string, len(p.Data)+3)
	for k, v := range p.Data {
		data[k] = v
	}
	// Set after the caller's data so the identity cannot be overwritten by content.
	data[DataKeyDeliveryID] = strconv.FormatInt(m.DeliveryID, 10)
	data[DataKeyBroadcastID] = strconv.FormatInt(m.BroadcastID, 10)
	if m.NotificationID != 0 {
		data[DataKeyNotificationID] = strconv.FormatInt(m.NotificationID, 10)
	}

	transactional := m.BroadcastID == 0
	androidPriority := "normal"
	if transactional {
		androidPriority = "high"
	}

	msg := &messaging.Message{
		Token:   token,
		Data:    data,
		Android: &messaging.AndroidConfig{Priority: androidPriority},
	}

	if p.Title == "" && p.Body == "" {
		msg.APNS = &messaging.APNSConfig{
			Headers: map[string]string{"apns-push-type": "background", "apns-priority": "5"},
			Payload: &messaging.APNSPayload{Aps: &messaging.Aps{ContentAvailable: true}},
		}
		return msg
	}

	msg.Notification = &messaging.Notification{Title: p.Title, Body: p.Body}
	apnsPriority := "5"
	if transactional {
		apnsPriority = "10"
	}
	msg.APNS = &messaging.APNSConfig{
		Headers: map[string]string{"apns-push-type": "alert", "apns-priority": apnsPriority},
	}
	return msg
}
