package slurm

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// maxHosts bounds what ExpandHostlist produces, so that a typo such as
// n[1-100000000] is an error rather than an allocation.
const maxHosts = 1 << 20

// ExpandHostlist expands Slurm's hostlist syntax, as in SLURM_JOB_NODELIST:
// a comma-separated list of names, each of which may hold bracketed ranges
// that expand to every combination in order. A range keeps the zero padding
// of its lower bound:
//
//	"n[01-03,07],login" -> n01 n02 n03 n07 login
//	"r[1-2]-c[1-2]"     -> r1-c1 r1-c2 r2-c1 r2-c2
//
// An empty string gives an empty list. Unbalanced brackets, an empty name,
// a range whose upper bound is below its lower one, or more than 2^20
// names are errors.
func ExpandHostlist(s string) ([]string, error) {
	var out []string
	depth, start := 0, 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) {
			switch s[i] {
			case '[':
				if depth++; depth > 1 {
					return nil, fmt.Errorf("hostlist %q: nested brackets", s)
				}
				continue
			case ']':
				if depth--; depth < 0 {
					return nil, fmt.Errorf("hostlist %q: ']' without '['", s)
				}
				continue
			case ',':
				if depth > 0 {
					continue
				}
			default:
				continue
			}
		}
		if depth != 0 {
			return nil, fmt.Errorf("hostlist %q: '[' without ']'", s)
		}
		item := strings.TrimSpace(s[start:i])
		start = i + 1
		if item == "" {
			if len(s) == 0 {
				return []string{}, nil
			}
			return nil, fmt.Errorf("hostlist %q: empty name", s)
		}
		names, err := expandItem(item, len(out))
		if err != nil {
			return nil, fmt.Errorf("hostlist %q: %w", s, err)
		}
		out = append(out, names...)
	}
	return out, nil
}

// expandItem expands one name with bracketed ranges; have is how many names
// the list already holds (for the size bound).
func expandItem(item string, have int) ([]string, error) {
	open := strings.IndexByte(item, '[')
	if open < 0 {
		return []string{item}, nil
	}
	end := strings.IndexByte(item[open:], ']') + open
	values, err := expandRanges(item[open+1 : end])
	if err != nil {
		return nil, err
	}
	rest, err := expandItem(item[end+1:], have)
	if err != nil {
		return nil, err
	}
	if have+len(values)*len(rest) > maxHosts {
		return nil, errors.New("more than 2^20 names")
	}
	out := make([]string, 0, len(values)*len(rest))
	for _, v := range values {
		for _, r := range rest {
			out = append(out, item[:open]+v+r)
		}
	}
	return out, nil
}

// expandRanges expands "01-03,7" to 01 02 03 7.
func expandRanges(s string) ([]string, error) {
	var out []string
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := bound(lo)
		if err != nil {
			return nil, err
		}
		if !isRange {
			out = append(out, lo)
			continue
		}
		b, err := bound(hi)
		if err != nil {
			return nil, err
		}
		if b < a {
			return nil, fmt.Errorf("range %q runs backwards", part)
		}
		if len(out)+b-a+1 > maxHosts {
			return nil, errors.New("more than 2^20 names")
		}
		for v := a; v <= b; v++ {
			out = append(out, fmt.Sprintf("%0*d", len(lo), v))
		}
	}
	return out, nil
}

func bound(s string) (int, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" || len(s) > 9 {
		return 0, fmt.Errorf("bad range bound %q", s)
	}
	return strconv.Atoi(s)
}

// ExpandTasksPerNode expands Slurm's tasks-per-node syntax, as in
// SLURM_TASKS_PER_NODE, to one count per node: "2(x3),1" -> 2 2 2 1.
func ExpandTasksPerNode(s string) ([]int, error) {
	var out []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		count, times := part, "1"
		if i := strings.IndexByte(part, '('); i >= 0 {
			if !strings.HasPrefix(part[i:], "(x") || !strings.HasSuffix(part, ")") {
				return nil, fmt.Errorf("tasks per node %q: bad repeat %q", s, part[i:])
			}
			count, times = part[:i], part[i+2:len(part)-1]
		}
		n, err1 := strconv.Atoi(count)
		k, err2 := strconv.Atoi(times)
		if err1 != nil || err2 != nil || n < 0 || k < 1 {
			return nil, fmt.Errorf("tasks per node %q: bad entry %q", s, part)
		}
		if k > maxHosts-len(out) { // len(out)+k could overflow
			return nil, fmt.Errorf("tasks per node %q: more than 2^20 nodes", s)
		}
		for range k {
			out = append(out, n)
		}
	}
	return out, nil
}
