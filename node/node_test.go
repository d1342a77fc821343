package node

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"testing"

	"github.com/clipmpi/clipmpi/mpi"
	"github.com/clipmpi/clipmpi/mpi/mpitest"
)

func TestRanksOnNodeGroup(t *testing.T) {
	for _, w := range []int{1, 2, 5} {
		got := make([]int, w)
		errs := make([]error, w)
		mpitest.RunGroup(w, func(c mpi.Comm) {
			got[c.Rank()], errs[c.Rank()] = RanksOnNode(c)
		})
		for r := range w {
			if errs[r] != nil || got[r] != w {
				t.Errorf("W=%d rank %d: RanksOnNode = %d, %v; want %d (one process, one host)", w, r, got[r], errs[r], w)
			}
		}
	}
}

func TestRanksNamed(t *testing.T) {
	names := []string{"a", "b", "a", "", "a", "b"}
	want := []int{3, 2, 3, 1, 3, 2}
	got := make([]int, len(names))
	mpitest.RunGroup(len(names), func(c mpi.Comm) {
		n, err := ranksNamed(c, names[c.Rank()])
		if err != nil {
			t.Errorf("rank %d: %v", c.Rank(), err)
		}
		got[c.Rank()] = n
	})
	if !slices.Equal(got, want) {
		t.Errorf("ranks per host name %q: got %v, want %v", names, got, want)
	}
}

func TestRanksOnNodeError(t *testing.T) {
	errs := make([]error, 3)
	mpitest.RunGroup(3, func(c mpi.Comm) {
		if c.Rank() == 0 {
			c.Abort(1)
		}
		_, errs[c.Rank()] = MemoryBudget(c)
	})
	for r, err := range errs {
		if !errors.Is(err, mpi.ErrAborted) {
			t.Errorf("rank %d of an aborted group: MemoryBudget error %v, want one wrapping mpi.ErrAborted", r, err)
		}
	}
}

func TestMemoryBudget(t *testing.T) {
	const w = 4
	got := make([]int64, w)
	mpitest.RunGroup(w, func(c mpi.Comm) {
		b, err := MemoryBudget(c)
		if err != nil {
			t.Errorf("rank %d: %v", c.Rank(), err)
		}
		got[c.Rank()] = b
	})
	// Available memory changes between calls: allow for it doubling.
	avail := AvailableMemory()
	for r, b := range got {
		if b <= 0 || b > math.MaxInt64/w || (avail < math.MaxInt64/4 && b > 2*avail/w) {
			t.Errorf("rank %d: MemoryBudget = %d with AvailableMemory %d at W=%d", r, b, avail, w)
		}
	}
}

func TestAvailableMemory(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("no /proc/meminfo")
	}
	total := ProcValue("/proc/meminfo", "MemTotal") << 10
	if total <= 0 {
		t.Fatal("no MemTotal in /proc/meminfo")
	}
	if got := AvailableMemory(); got <= 0 || got > total {
		t.Errorf("AvailableMemory = %d, want in (0, MemTotal = %d]", got, total)
	}
}

func TestPeakRSS(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("no /proc/self/status")
	}
	debug.FreeOSMemory() // so that the allocation below needs new pages
	resetErr := ResetPeakRSS()
	before := PeakRSS()
	if before <= 0 {
		t.Fatalf("PeakRSS = %d", before)
	}
	if resetErr != nil {
		t.Skipf("%v: the peak may be an earlier one", resetErr)
	}
	// Touch 64 MiB more than is resident now: the peak must rise.
	const n = 64 << 20
	b := make([]byte, n)
	for i := 0; i < n; i += 4096 {
		b[i] = 1
	}
	if after := PeakRSS(); after < before+n/2 {
		t.Errorf("PeakRSS %d after touching %d bytes, was %d", after, n, before)
	}
	runtime.KeepAlive(b)
}

// write creates the file dir/name holding s, and its directory.
func write(t *testing.T, dir, name, s string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestProcValue(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "meminfo", "MemTotal:       24683772 kB\n"+
		"MemFree:         1000 kB\n"+
		"MemAvailable:   24318992 kB\n"+
		"HugePages_Total:       7\n"+
		"Broken:\n"+
		"VmHWM:\t    5120 kB\n")
	file := filepath.Join(dir, "meminfo")
	for _, c := range []struct {
		name string
		want int64
	}{
		{"MemTotal", 24683772},
		{"MemTotal:", 24683772},
		{"MemAvailable:", 24318992},
		{"HugePages_Total", 7},
		{"VmHWM", 5120},
		{"Mem", 0}, // a prefix is not a name
		{"Broken", 0},
		{"Missing", 0},
	} {
		if got := ProcValue(file, c.name); got != c.want {
			t.Errorf("ProcValue(%q) = %d, want %d", c.name, got, c.want)
		}
	}
	if got := ProcValue(filepath.Join(dir, "absent"), "MemTotal"); got != 0 {
		t.Errorf("ProcValue of a missing file = %d, want 0", got)
	}
}

func TestAvailableMemoryCgroups(t *testing.T) {
	root := t.TempDir()
	proc := filepath.Join(root, "proc")
	cg := filepath.Join(root, "cgroup")
	write(t, proc, "meminfo", "MemTotal: 4000 kB\nMemAvailable: 1000 kB\n")
	meminfo := filepath.Join(proc, "meminfo")
	const avail = 1000 << 10

	// v2: the job's limit is on an ancestor; the task's own group has none.
	job := filepath.Join(cg, "job")
	task := filepath.Join(job, "step", "task")
	write(t, job, "memory.max", "600000\n")
	write(t, job, "memory.current", "100000\n")
	write(t, task, "memory.max", "max\n")
	write(t, task, "memory.current", "50000\n")
	// v1: the memory controller's own hierarchy.
	v1 := filepath.Join(cg, "memory", "slurm", "uid")
	write(t, v1, "memory.limit_in_bytes", strconv.FormatInt(math.MaxInt64&^4095, 10))
	write(t, v1, "memory.usage_in_bytes", "7\n")
	write(t, proc, "cgroup", "12:cpu,cpuacct:/other\n"+
		"4:blkio,memory:/slurm/uid\n"+
		"0::/job/step/task\n")

	dirs := cgroupDirs(filepath.Join(proc, "cgroup"), cg)
	wantDirs := []string{v1, filepath.Join(cg, "memory", "slurm"), filepath.Join(cg, "memory"),
		task, filepath.Dir(task), job, cg}
	if !slices.Equal(dirs, wantDirs) {
		t.Fatalf("cgroupDirs = %q, want %q", dirs, wantDirs)
	}
	if got := availableMemory(meminfo, dirs); got != 500000 {
		t.Errorf("with the job's v2 limit: %d bytes, want 500000", got)
	}

	// A v1 limit below the v2 one wins; usage above the limit gives 0.
	write(t, v1, "memory.limit_in_bytes", "300000")
	if got := availableMemory(meminfo, dirs); got != 300000-7 {
		t.Errorf("with a v1 limit: %d bytes, want %d", got, 300000-7)
	}
	write(t, job, "memory.current", "700000\n")
	if got := availableMemory(meminfo, dirs); got != 0 {
		t.Errorf("usage over the limit: %d bytes, want 0", got)
	}

	// Limits above MemAvailable, or none, leave MemAvailable.
	if got := availableMemory(meminfo, []string{task}); got != avail {
		t.Errorf("without a limit: %d bytes, want MemAvailable %d", got, avail)
	}
	if got := availableMemory(meminfo, nil); got != avail {
		t.Errorf("without cgroups: %d bytes, want MemAvailable %d", got, avail)
	}
	if got := availableMemory(filepath.Join(proc, "absent"), nil); got != math.MaxInt64 {
		t.Errorf("with nothing to read: %d, want math.MaxInt64", got)
	}
	if got := cgroupDirs(filepath.Join(proc, "absent"), cg); got != nil {
		t.Errorf("cgroupDirs of a missing file = %q, want nil", got)
	}
}
