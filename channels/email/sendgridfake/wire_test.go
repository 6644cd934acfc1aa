package sendgridfake

import "testing"

func TestSubstitute(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		subs map[string]string
		want string
	}{
		{"no keys", "hello", nil, "hello"},
		{"whole value", "-t-", map[string]string{"-t-": "body"}, "body"},
		{"repeated", "a -n- b -n-", map[string]string{"-n-": "X"}, "a X b X"},
		{"to empty", "-n-", map[string]string{"-n-": ""}, ""},
		{"longest key wins", "-name-", map[string]string{"-name": "short", "-name-": "long"}, "long"},
		{"values not searched again", "-a-", map[string]string{"-a-": "-b-", "-b-": "no"}, "-b-"},
		{"empty key ignored", "abc", map[string]string{"": "x"}, "abc"},
		{"earliest match first", "-b- -a-", map[string]string{"-a-": "A", "-b-": "B"}, "B A"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := substitute(tt.in, substitutionKeys(tt.subs), tt.subs); got != tt.want {
				t.Errorf("substitute(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}
