package notifier

import (
	"bytes"
	"fmt"
	"testing"
	texttemplate "text/template"
)

// A plain template renders exactly as text/template does, and anything that is
// not a string that is there goes to text/template, errors included.
func TestPlainTemplatesRenderAsTextTemplate(t *testing.T) {
	t.Parallel()
	templates := []struct {
		src   string
		plain bool
	}{
		{"Hello {{.Recipient.Attributes.name}}, your {{.Recipient.Attributes.plan}} plan", true},
		{"{{.Recipient.ID}} <{{.Recipient.Email}}> {{.Recipient.Locale}} {{.Recipient.Timezone}}", true},
		{"{{- .Recipient.Attributes.name -}} !\n", true},
		{"{{.Recipient.Attributes.profile.city}}", true},
		{"{{/* a comment */}}just text", true},
		{"just text, é ✓", true},
		{"{{.Recipient.Attributes}}", true},
		{"{{.Recipient.ID.x}}", true},
		{"{{.Recipient.Nope}}", true},
		{"{{.Recipient}}", false},
		{"{{if .Recipient.ID}}x{{end}}", false},
		{`{{.Recipient.Attributes.name | printf "%q"}}`, false},
		{"{{$x := .Recipient.ID}}{{$x}}", false},
		{`{{index .Recipient.Attributes "name"}}`, false},
	}
	recipients := []TemplateRecipient{
		{ID: "r1", Email: "a@example.com", Locale: "fr", Timezone: "Europe/Paris",
			Attributes: map[string]any{"name": "Ada <&>", "plan": "pro", "profile": map[string]any{"city": "Lyon"}}},
		{ID: "r2", Attributes: map[string]any{"name": 30.0, "plan": true, "profile": map[string]any{"city": nil}}},
		{ID: "r3", Attributes: map[string]any{"name": nil, "profile": "flat"}},
		{ID: "r4", Attributes: map[string]any{}},
		{ID: "r5"},
	}
	for _, tt := range templates {
		content := &Content{Push: &PushContent{Title: tt.src}}
		cc, err := compileContent(content)
		if err != nil {
			t.Fatalf("%q: %v", tt.src, err)
		}
		if _, plain := cc.plain[cc.pushTitle]; plain != tt.plain {
			t.Errorf("%q: plain = %v, want %v", tt.src, plain, tt.plain)
		}
		ref := texttemplate.Must(texttemplate.New("push.title").Option("missingkey=error").Parse(tt.src))
		for _, r := range recipients {
			data := &TemplateData{Recipient: r}
			var want bytes.Buffer
			wantErr := ref.Execute(&want, data)
			var buf bytes.Buffer
			got, err := cc.renderText(&buf, "push.title", cc.pushTitle, data)
			switch {
			case wantErr != nil:
				if err == nil || err.Error() != fmt.Sprintf("push.title: %v", wantErr) {
					t.Errorf("%q for %s: error %v, want %v", tt.src, r.ID, err, wantErr)
				}
			case err != nil || got != want.String():
				t.Errorf("%q for %s: %q, %v; want %q", tt.src, r.ID, got, err, want.String())
			}
		}
	}
}

func BenchmarkRenderText(b *testing.B) {
	cc, err := compileContent(&Content{Push: &PushContent{Title: "Hello {{.Recipient.Attributes.name}}, your {{.Recipient.Attributes.plan}} plan"}})
	if err != nil {
		b.Fatal(err)
	}
	data := &TemplateData{Recipient: TemplateRecipient{ID: "r1", Attributes: map[string]any{"name": "Ada", "plan": "pro"}}}
	ref := texttemplate.Must(texttemplate.New("t").Option("missingkey=error").Parse("Hello {{.Recipient.Attributes.name}}, your {{.Recipient.Attributes.plan}} plan"))
	var buf bytes.Buffer
	b.Run("plain", func(b *testing.B) {
		for b.Loop() {
			if _, err := cc.renderText(&buf, "push.title", cc.pushTitle, data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("text/template", func(b *testing.B) {
		for b.Loop() {
			buf.Reset()
			if err := ref.Execute(&buf, data); err != nil {
				b.Fatal(err)
			}
		}
	})
}
