// Command capi is clipmpi's C ABI: built with -buildmode=c-shared (`make
// lib`) it is lib/libclipmpi.so, whose functions clipmpi.h declares and
// documents (capi/clipmpi.h, installed as include/clipmpi.h). The Python
// package python/clipmpi loads it with ctypes.
//
// Every exported function recovers panics and returns an error code with a
// thread-local message (clipmpi_last_error); rank-local argument errors
// join a small agreement (one all-reduce) so that every rank of the step
// returns the same code; the loss's own checks (shapes, options,
// finiteness) are collective already. The losses are those of package
// loss; the communicators are mpi.CommFromFortran duplicates of
// MPI_COMM_WORLD or of a caller's communicator.
//
// Without cgo there is nothing to export and this package is an empty
// program.
package main

func main() {}
