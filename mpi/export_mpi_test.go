//go:build mpi

package mpi

// P2PModes are the ways World can drive IsendrecvF32 and Wait, for tests.
var P2PModes = []string{modeIsend.String(), modeWaitall.String(), modeSendrecv.String()}

// SetP2PMode makes World's c use the named mode for later Isendrecv calls
// and returns the previous one. No request may be outstanding.
func SetP2PMode(c Comm, mode string) (old string) {
	w := c.(*worldComm)
	old = w.mode.String()
	for _, m := range []p2pMode{modeIsend, modeWaitall, modeSendrecv} {
		if m.String() == mode {
			w.setMode(m)
			return old
		}
	}
	panic("mpi: unknown mode " + mode)
}

// ThreadMultiple reports whether World got MPI_THREAD_MULTIPLE.
func ThreadMultiple(c Comm) bool { return !c.(*worldComm).serial }
