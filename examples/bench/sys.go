package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"

	"github.com/clipmpi/clipmpi/mpi"
)

// countingComm counts the bytes a rank receives in each collective under the
// usual bandwidth-optimal algorithms: (W-1)/W of the gathered or reduced
// data for all-gather and reduce-scatter, twice that for all-reduce, the
// whole message for a send/receive.
type countingComm struct {
	mpi.Comm
	elem  int
	bytes int64
}

func (c *countingComm) count(n int, factor float64) {
	w := float64(c.Size())
	c.bytes += int64(float64(n*c.elem) * factor * (w - 1) / w)
}

func (c *countingComm) AllgatherF32(dst, src []float32) error {
	c.count(len(dst), 1)
	return c.Comm.AllgatherF32(dst, src)
}

func (c *countingComm) AllgatherF64(dst, src []float64) error {
	c.count(len(dst), 1)
	return c.Comm.AllgatherF64(dst, src)
}

func (c *countingComm) ReduceScatterF32(dst, src []float32) error {
	c.count(len(src), 1)
	return c.Comm.ReduceScatterF32(dst, src)
}

func (c *countingComm) ReduceScatterF64(dst, src []float64) error {
	c.bytes += int64(float64(len(src)*8) * float64(c.Size()-1) / float64(c.Size()))
	return c.Comm.ReduceScatterF64(dst, src)
}

func (c *countingComm) AllreduceF32(op mpi.Op, dst, src []float32) error {
	c.count(len(src), 2)
	return c.Comm.AllreduceF32(op, dst, src)
}

func (c *countingComm) AllreduceF64(op mpi.Op, dst, src []float64) error {
	c.bytes += int64(float64(len(src)*8) * 2 * float64(c.Size()-1) / float64(c.Size()))
	return c.Comm.AllreduceF64(op, dst, src)
}

func (c *countingComm) IsendrecvF32(dst []float32, from int, src []float32, to int) (mpi.Request, error) {
	c.bytes += int64(len(dst) * 4)
	return c.Comm.IsendrecvF32(dst, from, src, to)
}

func (c *countingComm) IsendrecvF64(dst []float64, from int, src []float64, to int) (mpi.Request, error) {
	c.bytes += int64(len(dst) * 8)
	return c.Comm.IsendrecvF64(dst, from, src, to)
}

// resetPeakRSS resets the kernel's high-water mark of this process's
// resident set (VmHWM), so that each configuration reports its own peak.
func resetPeakRSS() {
	os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// peakRSSMiB returns VmHWM from /proc/self/status in MiB (0 if unknown).
func peakRSSMiB() float64 {
	return procField("/proc/self/status", "VmHWM:") / 1024
}

// memAvailableMiB returns MemAvailable in MiB (a large value if unknown).
func memAvailableMiB() float64 {
	if v := procField("/proc/meminfo", "MemAvailable:"); v > 0 {
		return v / 1024
	}
	return 1 << 30
}

// procField reads a "Name: value kB" line.
func procField(file, name string) float64 {
	f, err := os.Open(file)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), name) {
			fields := strings.Fields(sc.Text())
			if len(fields) >= 2 {
				v, _ := strconv.ParseFloat(fields[1], 64)
				return v
			}
		}
	}
	return 0
}

// localRanks is the number of ranks on this node (Open MPI tells; else the
// world size).
func localRanks(comm mpi.Comm) int {
	if v, err := strconv.Atoi(os.Getenv("OMPI_COMM_WORLD_LOCAL_SIZE")); err == nil && v > 0 {
		return v
	}
	return comm.Size()
}
