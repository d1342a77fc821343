// Package node reports facts about the machine a process runs on: how many
// ranks of a communicator share it, how much memory this process may still
// allocate, and this process's peak resident set. Memory facts come from
// Linux's /proc and cgroup files; where those are missing they say
// "unknown" (math.MaxInt64 or 0, as each function documents) rather than
// fail.
package node

import (
	"bufio"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/clipmpi/clipmpi/mpi"
)

// RanksOnNode returns the number of ranks of comm, this one included, whose
// host name (os.Hostname) is this rank's. It is collective: every rank of
// comm must call it. A rank whose host name cannot be read counts as on a
// host named "".
func RanksOnNode(comm mpi.Comm) (int, error) {
	name, _ := os.Hostname()
	return ranksNamed(comm, name)
}

// ranksNamed is RanksOnNode for a given host name. Ranks exchange a 52-bit
// FNV-64a hash of their names, exact in a float64, in one all-gather.
func ranksNamed(comm mpi.Comm, name string) (int, error) {
	h := fnv.New64a()
	h.Write([]byte(name))
	mine := float64(h.Sum64() & (1<<52 - 1))
	all := make([]float64, comm.Size())
	if err := comm.AllgatherF64(all, []float64{mine}); err != nil {
		return 0, fmt.Errorf("node: counting the ranks on this node: %w", err)
	}
	n := 0
	for _, x := range all {
		if x == mine {
			n++
		}
	}
	return n, nil
}

// AvailableMemory returns the bytes this process may still allocate: the
// kernel's MemAvailable, or less if a memory cgroup of this process (its
// own or an ancestor) has a limit closer to its usage: cgroup v2
// memory.max - memory.current, v1 memory.limit_in_bytes -
// memory.usage_in_bytes. It returns math.MaxInt64 when none of these
// can be read.
func AvailableMemory() int64 {
	return availableMemory("/proc/meminfo", cgroupDirs("/proc/self/cgroup", "/sys/fs/cgroup"))
}

// MemoryBudget returns this rank's share of the node's available memory:
// AvailableMemory divided by RanksOnNode. It is collective, as RanksOnNode
// is.
func MemoryBudget(comm mpi.Comm) (int64, error) {
	n, err := RanksOnNode(comm)
	if err != nil {
		return 0, err
	}
	return AvailableMemory() / int64(n), nil
}

// PeakRSS returns the high-water mark of this process's resident set in
// bytes (VmHWM of /proc/self/status), or 0 if it cannot be read.
func PeakRSS() int64 {
	return ProcValue("/proc/self/status", "VmHWM") << 10
}

// ResetPeakRSS resets the high-water mark that PeakRSS reports to the
// current resident set, so that a later PeakRSS covers only what follows.
func ResetPeakRSS() error {
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		return fmt.Errorf("node: resetting the peak resident set: %w", err)
	}
	return nil
}

// ProcValue returns the number on the line "name: value [kB]" of a /proc
// file such as /proc/meminfo or /proc/self/status, in the file's unit
// (kB for memory sizes). The name may be given with or without its colon.
// It returns 0 if the file cannot be read or has no such line.
func ProcValue(file, name string) int64 {
	f, err := os.Open(file)
	if err != nil {
		return 0
	}
	defer f.Close()
	name = strings.TrimSuffix(name, ":")
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || key != name {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return 0
		}
		v, _ := strconv.ParseInt(fields[0], 10, 64)
		return v
	}
	return 0
}

// availableMemory is AvailableMemory for the given meminfo file and
// memory cgroup directories.
func availableMemory(meminfo string, dirs []string) int64 {
	avail := int64(math.MaxInt64)
	if kb := ProcValue(meminfo, "MemAvailable"); kb > 0 {
		avail = kb << 10
	}
	for _, dir := range dirs {
		for _, f := range [][2]string{{"memory.max", "memory.current"}, {"memory.limit_in_bytes", "memory.usage_in_bytes"}} {
			limit, err1 := readInt(filepath.Join(dir, f[0]))
			used, err2 := readInt(filepath.Join(dir, f[1]))
			// v2 writes "max" for no limit, v1 a number near 1<<63.
			if err1 == nil && err2 == nil && limit > 0 && limit < 1<<60 {
				avail = min(avail, max(limit-used, 0))
			}
		}
	}
	return avail
}

// cgroupDirs returns the directories, under the cgroup mount root, of the
// memory cgroups that the file cgroupFile (in the format of
// /proc/self/cgroup) names: the v2 group (root/path) and the v1 memory
// group (root/memory/path), each followed by its ancestors up to its
// hierarchy's root, a limit on any of which applies. Only directories that
// exist are returned.
func cgroupDirs(cgroupFile, root string) []string {
	f, err := os.Open(cgroupFile)
	if err != nil {
		return nil
	}
	defer f.Close()
	var dirs []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		var top string
		switch {
		case parts[0] == "0" && parts[1] == "":
			top = root
		case strings.Contains(","+parts[1]+",", ",memory,"):
			top = filepath.Join(root, "memory")
		default:
			continue
		}
		for dir := filepath.Join(top, parts[2]); ; dir = filepath.Dir(dir) {
			if _, err := os.Stat(dir); err == nil {
				dirs = append(dirs, dir)
			}
			if dir == top || !strings.HasPrefix(dir, top+string(filepath.Separator)) {
				break
			}
		}
	}
	return dirs
}

// readInt reads a file holding one decimal integer.
func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}
