package notifier

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Filter is a segment's condition over a recipient, in the language of design.md:
// a leaf {"attr","op","value"}, or {"all": [..]}, {"any": [..]}, {"not": F}.
// Exactly one of the groups or the leaf is set.
type Filter struct {
	All   []*Filter `json:"all,omitempty"`
	Any   []*Filter `json:"any,omitempty"`
	Not   *Filter   `json:"not,omitempty"`
	Attr  string    `json:"attr,omitempty"`
	Op    string    `json:"op,omitempty"`
	Value any       `json:"value,omitempty"`
}

// Limits that keep one filter from becoming a denial of service.
const (
	maxFilterDepth = 8
	maxFilterNodes = 256
	maxInValues    = 1000
	maxAttrPath    = 8
)

var filterOps = []string{"eq", "ne", "in", "nin", "exists", "gt", "gte", "lt", "lte", "contains"}

// Recipient fields a filter can name directly; any other name is an attribute.
// "attributes.x" always means the attribute, even if x is one of these.
var recipientFields = []string{"id", "email", "locale", "timezone"}

var attrSegment = regexp.MustCompile(`^[A-Za-z0-9_\-$@:]{1,64}$`)

// ParseFilter decodes and validates raw JSON. Problems are keyed by their path
// under field, e.g. "filter.all[1].op".
func ParseFilter(raw json.RawMessage, field string) (*Filter, map[string]string) {
	problems := map[string]string{}
	if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		problems[field] = "is required"
		return nil, problems
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		problems[field] = "is not valid JSON"
		return nil, problems
	}
	nodes := 0
	f := parseFilterNode(v, field, 1, &nodes, problems)
	if len(problems) > 0 {
		return nil, problems
	}
	return f, problems
}

// MarshalJSON writes the filter in the form ParseFilter reads; a leaf always
// carries its value, since null is a value ("eq": null).
func (f *Filter) MarshalJSON() ([]byte, error) {
	switch {
	case f.All != nil:
		return json.Marshal(map[string]any{"all": f.All})
	case f.Any != nil:
		return json.Marshal(map[string]any{"any": f.Any})
	case f.Not != nil:
		return json.Marshal(map[string]any{"not": f.Not})
	}
	return json.Marshal(map[string]any{"attr": f.Attr, "op": f.Op, "value": f.Value})
}

func parseFilterNode(v any, path string, depth int, nodes *int, problems map[string]string) *Filter {
	*nodes++
	if *nodes > maxFilterNodes {
		problems[path] = fmt.Sprintf("the filter has more than %d conditions", maxFilterNodes)
		return nil
	}
	if depth > maxFilterDepth {
		problems[path] = fmt.Sprintf("is nested deeper than %d levels", maxFilterDepth)
		return nil
	}
	obj, ok := v.(map[string]any)
	if !ok {
		problems[path] = `must be an object: {"attr","op","value"}, {"all":[..]}, {"any":[..]} or {"not":{..}}`
		return nil
	}
	_, hasAll := obj["all"]
	_, hasAny := obj["any"]
	_, hasNot := obj["not"]
	_, hasAttr := obj["attr"]
	kinds := 0
	for _, has := range []bool{hasAll, hasAny, hasNot, hasAttr} {
		if has {
			kinds++
		}
	}
	if kinds != 1 {
		problems[path] = `must have exactly one of "attr", "all", "any", "not"`
		return nil
	}
	f := &Filter{}
	switch {
	case hasAll || hasAny:
		key := "all"
		if hasAny {
			key = "any"
		}
		if len(obj) != 1 {
			problems[path] = fmt.Sprintf("a %q group takes no other keys", key)
			return nil
		}
		list, ok := obj[key].([]any)
		if !ok || len(list) == 0 {
			problems[path+"."+key] = "must be a non-empty array of filters"
			return nil
		}
		children := make([]*Filter, 0, len(list))
		for i, item := range list {
			children = append(children, parseFilterNode(item, fmt.Sprintf("%s.%s[%d]", path, key, i), depth+1, nodes, problems))
		}
		if hasAll {
			f.All = children
		} else {
			f.Any = children
		}
	case hasNot:
		if len(obj) != 1 {
			problems[path] = `a "not" group takes no other keys`
			return nil
		}
		f.Not = parseFilterNode(obj["not"], path+".not", depth+1, nodes, problems)
	default:
		parseLeaf(obj, path, f, problems)
	}
	return f
}

func parseLeaf(obj map[string]any, path string, f *Filter, problems map[string]string) {
	for k := range obj {
		if k != "attr" && k != "op" && k != "value" {
			problems[path+"."+k] = "unknown key; a condition has attr, op and value"
		}
	}
	attr, ok := obj["attr"].(string)
	if !ok || attrPath(attr) == nil {
		problems[path+".attr"] = "must be an attribute name or a dotted path (up to 8 parts of letters, digits, _ - $ @ :)"
	}
	op, ok := obj["op"].(string)
	if !ok || !slices.Contains(filterOps, op) {
		problems[path+".op"] = "must be one of " + strings.Join(filterOps, ", ")
		return
	}
	f.Attr, f.Op = attr, op
	value, hasValue := obj["value"]
	valuePath := path + ".value"
	switch op {
	case "exists":
		if !hasValue {
			value = true
		}
		if _, ok := value.(bool); !ok {
			problems[valuePath] = "must be true or false (default true)"
		}
	case "eq", "ne":
		if !hasValue {
			problems[valuePath] = "is required"
		} else if !isScalar(value) {
			problems[valuePath] = "must be a string, number, boolean or null"
		}
	case "in", "nin":
		list, ok := value.([]any)
		if !ok || len(list) == 0 || len(list) > maxInValues {
			problems[valuePath] = fmt.Sprintf("must be an array of 1 to %d strings, numbers or booleans", maxInValues)
			break
		}
		for i, item := range list {
			if !isScalar(item) || item == nil {
				problems[fmt.Sprintf("%s[%d]", valuePath, i)] = "must be a string, number or boolean"
			}
		}
	case "gt", "gte", "lt", "lte":
		switch v := value.(type) {
		case string:
		case json.Number:
			if !finiteNumber(v) {
				problems[valuePath] = "must be a finite number"
			}
		default:
			problems[valuePath] = "must be a number or a string (strings compare bytewise, e.g. RFC 3339 times)"
		}
	case "contains":
		if !isScalar(value) || value == nil {
			problems[valuePath] = "must be a string (substring of a string attribute) or a scalar (element of an array attribute)"
		}
	}
	f.Value = value
}

func isScalar(v any) bool {
	switch n := v.(type) {
	case nil, string, bool:
		return true
	case json.Number:
		return finiteNumber(n)
	}
	return false
}

func finiteNumber(n json.Number) bool {
	f, err := strconv.ParseFloat(string(n), 64)
	return err == nil && !math.IsInf(f, 0) && !math.IsNaN(f)
}

// attrPath splits a filter attribute into the jsonb path under attributes, or
// returns []string{"", field} for a recipient field. nil means invalid.
func attrPath(attr string) []string {
	if attr == "" || len(attr) > 512 {
		return nil
	}
	if slices.Contains(recipientFields, attr) {
		return []string{"", attr}
	}
	attr = strings.TrimPrefix(attr, "attributes.")
	parts := strings.Split(attr, ".")
	if len(parts) > maxAttrPath {
		return nil
	}
	for _, p := range parts {
		if !attrSegment.MatchString(p) {
			return nil
		}
	}
	return parts
}

// sqlArgs collects query parameters; values never go into the SQL text.
type sqlArgs struct{ values []any }

func (a *sqlArgs) add(v any) string {
	a.values = append(a.values, v)
	return "$" + strconv.Itoa(len(a.values))
}

// compileFilter returns a boolean SQL expression over a row aliased r with columns
// id, email, locale, timezone, attributes. A nil filter matches everyone.
func compileFilter(f *Filter, args *sqlArgs) string {
	if f == nil {
		return "TRUE"
	}
	switch {
	case f.All != nil:
		return joinFilters(f.All, " AND ", args)
	case f.Any != nil:
		return joinFilters(f.Any, " OR ", args)
	case f.Not != nil:
		// A condition on a missing attribute is false, so NOT of it is true:
		// coalesce keeps NULL from swallowing the negation.
		return "NOT coalesce(" + compileFilter(f.Not, args) + ", false)"
	}
	return compileLeaf(f, args)
}

func joinFilters(fs []*Filter, sep string, args *sqlArgs) string {
	parts := make([]string, len(fs))
	for i, f := range fs {
		parts[i] = "coalesce(" + compileFilter(f, args) + ", false)"
	}
	return "(" + strings.Join(parts, sep) + ")"
}

func compileLeaf(f *Filter, args *sqlArgs) string {
	// field is a jsonb expression; recipient columns are lifted to jsonb so every
	// operator has one definition.
	path := attrPath(f.Attr)
	var field string
	if path[0] == "" {
		field = "to_jsonb(r." + path[1] + ")" // path[1] is from the fixed recipientFields list
	} else {
		field = "(r.attributes #> " + args.add(path) + "::text[])"
	}
	jsonArg := func(v any) string {
		b, _ := json.Marshal(v)
		return args.add(string(b)) + "::jsonb"
	}
	switch f.Op {
	case "exists":
		if f.Value == false {
			return "(" + field + " IS NULL)"
		}
		return "(" + field + " IS NOT NULL)"
	case "eq":
		return "(" + field + " = " + jsonArg(f.Value) + ")"
	case "ne":
		return "(" + field + " IS DISTINCT FROM " + jsonArg(f.Value) + ")"
	case "in":
		// Scalars only (checked at parse), so containment is membership.
		return "(" + jsonArg(f.Value) + " @> jsonb_build_array(" + field + "))"
	case "nin":
		return "NOT coalesce(" + jsonArg(f.Value) + " @> jsonb_build_array(" + field + "), false)"
	case "gt", "gte", "lt", "lte":
		op := map[string]string{"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[f.Op]
		if n, ok := f.Value.(json.Number); ok {
			// CASE, not AND: Postgres may evaluate AND operands in any order, and the
			// cast fails on a non-number.
			return "(CASE WHEN jsonb_typeof(" + field + ") = 'number' THEN (" + field + ")::numeric " + op + " " + args.add(string(n)) + "::numeric ELSE false END)"
		}
		return "(CASE WHEN jsonb_typeof(" + field + ") = 'string' THEN (" + field + " #>> '{}') COLLATE \"C\" " + op + " " + args.add(f.Value) + "::text COLLATE \"C\" ELSE false END)"
	case "contains":
		arrayCase := "jsonb_typeof(" + field + ") = 'array' THEN " + field + " @> " + jsonArg([]any{f.Value})
		if s, ok := f.Value.(string); ok {
			return "(CASE WHEN " + arrayCase + " WHEN jsonb_typeof(" + field + ") = 'string' THEN strpos(" + field + " #>> '{}', " + args.add(s) + "::text) > 0 ELSE false END)"
		}
		return "(CASE WHEN " + arrayCase + " ELSE false END)"
	}
	return "FALSE" // unreachable: ops are checked at parse
}
