package slurm

import (
	"reflect"
	"strings"
	"testing"
)

func TestExpandHostlist(t *testing.T) {
	cases := []struct {
		in   string
		want []string
	}{
		{"", []string{}},
		{"localhost", []string{"localhost"}},
		{"a,b", []string{"a", "b"}},
		{"n[1-3]", []string{"n1", "n2", "n3"}},
		{"n[01-03,07],login", []string{"n01", "n02", "n03", "n07", "login"}},
		{"n[8-11]", []string{"n8", "n9", "n10", "n11"}},
		{"n[098-101]", []string{"n098", "n099", "n100", "n101"}},
		{"n[5]", []string{"n5"}},
		{"n[3,1]", []string{"n3", "n1"}},
		{"r[1-2]-c[1-2]", []string{"r1-c1", "r1-c2", "r2-c1", "r2-c2"}},
		{"[1-2]x", []string{"1x", "2x"}},
		{"gpu[1-2].ib,cpu[3]", []string{"gpu1.ib", "gpu2.ib", "cpu3"}},
		{"a, b", []string{"a", "b"}},
	}
	for _, c := range cases {
		got, err := ExpandHostlist(c.in)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("ExpandHostlist(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"n[1-", "n1]", "n[[1]]", "n[]", "n[a-b]", "n[3-1]", "a,,b", "a,", ",a", "n[1-2-3]", "n[-2]", "n[1-1000000000]", "n[0-1048576]", "n[1-1024]-[1-1025]"} {
		if got, err := ExpandHostlist(in); err == nil || !strings.HasPrefix(err.Error(), "hostlist ") {
			t.Errorf("ExpandHostlist(%q) = %q, %v; want a hostlist error", in, got, err)
		}
	}
}

func TestExpandTasksPerNode(t *testing.T) {
	cases := []struct {
		in   string
		want []int
	}{
		{"2", []int{2}},
		{"2(x3)", []int{2, 2, 2}},
		{"2(x3),1", []int{2, 2, 2, 1}},
		{"4,3(x2)", []int{4, 3, 3}},
	}
	for _, c := range cases {
		got, err := ExpandTasksPerNode(c.in)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("ExpandTasksPerNode(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "x", "2(3)", "2(x)", "2(x0)", "2(x3", "-1", "2,,1", "1(x2000000)"} {
		if got, err := ExpandTasksPerNode(in); err == nil {
			t.Errorf("ExpandTasksPerNode(%q) = %v; want an error", in, got)
		}
	}
}
