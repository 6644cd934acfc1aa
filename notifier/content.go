package notifier

import (
	"bytes"
	"fmt"
	htmltemplate "html/template"
	"slices"
	"strings"
	texttemplate "text/template"
)

// Content is what a broadcast or notification says, per channel. Every field is
// a Go template over TemplateData: text/template, except HTML (html/template).
type Content struct {
	Email *EmailContent `json:"email,omitempty"`
	Push  *PushContent  `json:"push,omitempty"`
	Inbox *InboxContent `json:"inbox,omitempty"`
}

type EmailContent struct {
	Subject string `json:"subject"`
	Text    string `json:"text,omitempty"`
	HTML    string `json:"html,omitempty"`
}

type PushContent struct {
	Title string            `json:"title,omitempty"`
	Body  string            `json:"body,omitempty"`
	Data  map[string]string `json:"data,omitempty"`
}

type InboxContent struct {
	Title string `json:"title"`
	Body  string `json:"body,omitempty"`
	URL   string `json:"url,omitempty"`
}

// TemplateData is what templates see: {{.Recipient.Attributes.name}}.
type TemplateData struct {
	Recipient TemplateRecipient
}

type TemplateRecipient struct {
	ID         string
	Email      string
	Locale     string
	Timezone   string
	Attributes map[string]any
}

// Push data keys FCM refuses, and the ones notifyd sets itself.
var reservedPushKeys = []string{"from", "notification", "message_type", "notifyd_delivery_id", "notifyd_broadcast_id", "notifyd_notification_id"}

// validate checks that each channel asked for has its content and that every
// template parses; problems are keyed by JSON path.
func (c *Content) validate(channels []string, problems map[string]string) {
	for _, ch := range channels {
		switch ch {
		case ChannelEmail:
			if c.Email == nil || strings.TrimSpace(c.Email.Subject) == "" || (c.Email.Text == "" && c.Email.HTML == "") {
				problems["email"] = "the email channel needs email.subject and email.text or email.html"
			}
		case ChannelPush:
			if c.Push == nil || (c.Push.Title == "" && c.Push.Body == "" && len(c.Push.Data) == 0) {
				problems["push"] = "the push channel needs push.title, push.body or push.data"
			}
			if c.Push != nil {
				for k := range c.Push.Data {
					if strings.HasPrefix(k, "google") || strings.HasPrefix(k, "gcm") || slices.Contains(reservedPushKeys, k) {
						problems["push.data."+k] = "is a reserved key"
					}
				}
			}
		case ChannelInbox:
			if c.Inbox == nil || strings.TrimSpace(c.Inbox.Title) == "" {
				problems["inbox"] = "the inbox channel needs inbox.title"
			}
		}
	}
	if len(problems) > 0 {
		return
	}
	if _, err := compileContent(c); err != nil {
		if e, ok := err.(*Error); ok {
			for k, v := range e.Fields {
				problems[k] = v
			}
		}
	}
}

// compiledContent holds the parsed templates of a Content.
type compiledContent struct {
	emailSubject, emailText *texttemplate.Template
	emailHTML               *htmltemplate.Template
	pushTitle, pushBody     *texttemplate.Template
	pushData                map[string]*texttemplate.Template
	inboxTitle, inboxBody   *texttemplate.Template
	inboxURL                *texttemplate.Template
	// plain holds the parts of the text templates that are only text and
	// fields (plainParts), rendered without text/template.
	plain map[*texttemplate.Template][]templatePart
}

func compileContent(c *Content) (*compiledContent, error) {
	problems := map[string]string{}
	cc := &compiledContent{plain: map[*texttemplate.Template][]templatePart{}}
	text := func(field, src string) *texttemplate.Template {
		if src == "" {
			return nil
		}
		t, err := texttemplate.New(field).Option("missingkey=error").Parse(src)
		if err != nil {
			problems[field] = "template does not parse: " + err.Error()
			return nil
		}
		if parts := plainParts(t); parts != nil {
			cc.plain[t] = parts
		}
		return t
	}
	if c.Email != nil {
		cc.emailSubject = text("email.subject", c.Email.Subject)
		cc.emailText = text("email.text", c.Email.Text)
		if c.Email.HTML != "" {
			t, err := htmltemplate.New("email.html").Option("missingkey=error").Parse(c.Email.HTML)
			if err != nil {
				problems["email.html"] = "template does not parse: " + err.Error()
			}
			cc.emailHTML = t
		}
	}
	if c.Push != nil {
		cc.pushTitle = text("push.title", c.Push.Title)
		cc.pushBody = text("push.body", c.Push.Body)
		cc.pushData = map[string]*texttemplate.Template{}
		for k, v := range c.Push.Data {
			cc.pushData[k] = text("push.data."+k, v)
		}
	}
	if c.Inbox != nil {
		cc.inboxTitle = text("inbox.title", c.Inbox.Title)
		cc.inboxBody = text("inbox.body", c.Inbox.Body)
		cc.inboxURL = text("inbox.url", c.Inbox.URL)
	}
	if err := Invalid(problems); err != nil {
		return nil, err
	}
	return cc, nil
}

// renderText runs a text template; nil renders as "".
func (cc *compiledContent) renderText(buf *bytes.Buffer, field string, t *texttemplate.Template, data *TemplateData) (string, error) {
	if t == nil {
		return "", nil
	}
	if parts, ok := cc.plain[t]; ok {
		if s, ok := renderPlain(buf, parts, data); ok {
			return s, nil
		}
	}
	buf.Reset()
	if err := t.Execute(buf, data); err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	return buf.String(), nil
}

// render fills m's channel part from the templates for one recipient.
func (cc *compiledContent) render(channel string, data *TemplateData, m *Message) error {
	var buf bytes.Buffer
	var err error
	switch channel {
	case ChannelEmail:
		e := &EmailMessage{To: data.Recipient.Email}
		if e.Subject, err = cc.renderText(&buf, "email.subject", cc.emailSubject, data); err != nil {
			return err
		}
		if e.Text, err = cc.renderText(&buf, "email.text", cc.emailText, data); err != nil {
			return err
		}
		if cc.emailHTML != nil {
			buf.Reset()
			if err := cc.emailHTML.Execute(&buf, data); err != nil {
				return fmt.Errorf("email.html: %w", err)
			}
			e.HTML = buf.String()
		}
		m.Email = e
	case ChannelPush:
		p := &PushMessage{}
		if p.Title, err = cc.renderText(&buf, "push.title", cc.pushTitle, data); err != nil {
			return err
		}
		if p.Body, err = cc.renderText(&buf, "push.body", cc.pushBody, data); err != nil {
			return err
		}
		if len(cc.pushData) > 0 {
			p.Data = make(map[string]string, len(cc.pushData))
			for k, t := range cc.pushData {
				if p.Data[k], err = cc.renderText(&buf, "push.data."+k, t, data); err != nil {
					return err
				}
			}
		}
		m.Push = p
	case ChannelInbox:
		in := &InboxMessage{}
		if in.Title, err = cc.renderText(&buf, "inbox.title", cc.inboxTitle, data); err != nil {
			return err
		}
		if in.Body, err = cc.renderText(&buf, "inbox.body", cc.inboxBody, data); err != nil {
			return err
		}
		if in.URL, err = cc.renderText(&buf, "inbox.url", cc.inboxURL, data); err != nil {
			return err
		}
		m.Inbox = in
	}
	return nil
}

// renderSample renders every channel for one recipient, so that a template naming
// a missing field is refused at creation rather than failing every delivery.
func (cc *compiledContent) renderSample(channels []string, data *TemplateData) (map[string]*Message, error) {
	out := map[string]*Message{}
	for _, ch := range channels {
		m := &Message{}
		if err := cc.render(ch, data, m); err != nil {
			field, _, _ := strings.Cut(err.Error(), ":")
			return nil, Invalid(map[string]string{field: "template fails for recipient " + data.Recipient.ID + ": " + err.Error()})
		}
		out[ch] = m
	}
	return out, nil
}
