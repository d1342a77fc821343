package blas

// Panic messages.
const errThreads = "blas: thread count must be at least 1"
