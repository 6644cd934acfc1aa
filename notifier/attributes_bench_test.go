package notifier_test

import (
	"encoding/json"
	"testing"

	jsonv2 "github.com/go-json-experiment/json"
)

// BenchmarkDecodeAttributes decodes a recipient's attributes as the claim does
// for every delivery (JSON v2), beside encoding/json, which it replaced.
func BenchmarkDecodeAttributes(b *testing.B) {
	doc := []byte(`{"name": "Person 500001", "plan": "free"}`)
	for _, bc := range []struct {
		name   string
		decode func([]byte, any) error
	}{
		{"jsonv2", func(in []byte, out any) error { return jsonv2.Unmarshal(in, out) }},
		{"encoding-json", json.Unmarshal},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var attributes map[string]any
				if err := bc.decode(doc, &attributes); err != nil || attributes["plan"] != "free" {
					b.Fatalf("decode = %v, %v", attributes, err)
				}
			}
		})
	}
}
