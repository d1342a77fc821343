/*
 * clipmpi.h: the C ABI of clipmpi, OpenCLIP's ClipLoss and SigLipLoss
 * computed across MPI ranks (lib/libclipmpi.so, built by `make lib`).
 *
 * The loss, its options and its numbers are those of the Go package
 * github.com/clipmpi/clipmpi/loss; see its documentation and README.md for
 * the formulas and the algorithms. In short, rank r holds b rows of image
 * features I_r and text features T_r (b x d, row-major, float32 or
 * float64), the global batch is the concatenation in rank order
 * (N = W*b), and every call returns on each rank exactly what OpenCLIP's
 * loss returns there and leaves in .grad before any DDP averaging: the
 * loss, the gradients of the rank's features, and the gradients of the
 * logit scale and bias (this rank's replicas).
 *
 * Conventions
 *   - Every function returns CLIPMPI_OK (0) or an error code below; on an
 *     error, clipmpi_last_error() gives a message for the calling thread.
 *     No Go panic crosses this boundary: misuse that the Go API answers
 *     with a panic comes back as CLIPMPI_ERR_USAGE (or CLIPMPI_ERR_INVALID,
 *     see below). The process may end, though: see the failure policy.
 *   - A function marked COLLECTIVE must be called by every rank of the
 *     communicator, in the same order. The losses' own checks are
 *     collective: an invalid argument on one rank (a NULL buffer, rows < 0,
 *     the wrong element type, overlapping buffers, or a rank that called
 *     clipmpi_reject_step) gives CLIPMPI_ERR_INVALID on EVERY rank, naming
 *     the rank; ranks that disagree on the batch size, dimension, element
 *     type, options, logit scale or bias, or on forward versus
 *     forward_backward, get CLIPMPI_ERR_DISAGREE on every rank; NaN or Inf
 *     anywhere gives CLIPMPI_ERR_NONFINITE on every rank. None of these
 *     hangs. Only CLIPMPI_ERR_USAGE (a NULL or freed handle, a call after
 *     clipmpi_finalize) is local to the rank that made the mistake.
 *   - Failure policy: an MPI communication error that not every rank sees
 *     (a dead peer, a broken link) ends the job, as MPI itself would with
 *     its default error handler: the rank prints "mpi: rank R of W: ..."
 *     and calls MPI_Abort. MPI errors that every rank sees (initialisation,
 *     MPI_Comm_dup) come back as CLIPMPI_ERR_MPI.
 *   - Handles (clipmpi_comm *, clipmpi_loss *) are opaque. Calls on one
 *     communicator, or on losses that share it, must not overlap in time;
 *     losses on different communicators may be used by different threads
 *     at once if MPI provides MPI_THREAD_MULTIPLE.
 *   - Buffers are owned by the caller; the library keeps no pointer to
 *     them after a call returns, and copies nothing.
 *
 * MPI
 *   The library initialises MPI (MPI_Init_thread, asking for
 *   MPI_THREAD_MULTIPLE) at its first call that needs it, unless the caller
 *   has initialised MPI already; it then uses the caller's MPI, which must
 *   provide MPI_THREAD_SERIALIZED or better (mpi4py's default is
 *   MPI_THREAD_MULTIPLE; plain MPI_Init gives MPI_THREAD_SINGLE, which is an
 *   error). clipmpi_finalize calls MPI_Finalize only if the library
 *   initialised MPI; it never finalises the caller's MPI.
 *
 *   A communicator is MPI_COMM_WORLD (pass NULL where a clipmpi_comm * is
 *   asked for) or any communicator given by its Fortran handle
 *   (clipmpi_comm_from_fortran: MPI_Comm_c2f(comm) in C, comm.py2f() in
 *   mpi4py). The library always works on a duplicate (MPI_Comm_dup) that
 *   returns errors; the caller's communicators and their error handlers
 *   are never modified, and the library's messages never match the
 *   caller's.
 *
 * Build: `make lib` writes lib/libclipmpi.so and include/clipmpi.h.
 *   mpicc -Iinclude prog.c -Llib -lclipmpi -Wl,-rpath,$PWD/lib
 */
#ifndef CLIPMPI_H
#define CLIPMPI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this ABI; clipmpi_abi_version() returns the library's.
 * Versions only add: a function, or a field at the end of an options
 * struct, which the library reads only up to the caller's struct_size (a
 * caller built against an older header gets the new fields' defaults). A
 * library older than the header ignores the fields it does not know, so a
 * caller that sets a newer field checks clipmpi_abi_version() first.
 *   1: the first.
 *   2: the options' precision (OpenCLIP's amp_bf16). */
#define CLIPMPI_ABI_VERSION 2

/* Return codes. */
#define CLIPMPI_OK 0
/* An invalid argument on at least one rank (see Conventions); the same on
 * every rank of the call. */
#define CLIPMPI_ERR_INVALID 1
/* The ranks disagree on the batch size, dimension, element type, options,
 * logit scale or bias, or on forward versus forward_backward
 * (loss.ErrShapeMismatch); the same on every rank. */
#define CLIPMPI_ERR_DISAGREE 2
/* The batch has 0 rows (loss.ErrEmptyBatch); the same on every rank. */
#define CLIPMPI_ERR_EMPTY 3
/* NaN or Inf in some rank's features, logit scale or bias
 * (loss.ErrNonFinite); the same on every rank, naming the rank. */
#define CLIPMPI_ERR_NONFINITE 4
/* MPI failed where every rank sees it: initialisation, the thread level,
 * an invalid Fortran handle, MPI_Comm_dup. */
#define CLIPMPI_ERR_MPI 5
/* The launch environment (OMPI_COMM_WORLD_SIZE, SLURM_NTASKS, PMI_SIZE,
 * WORLD_SIZE ...) says this process is one of several ranks, but MPI
 * started it alone: it was not launched by mpirun or srun --mpi=pmix. */
#define CLIPMPI_ERR_LAUNCH 6
/* Local misuse on this rank only: a NULL or freed handle, a NULL out
 * pointer, an unknown option name, a dimension < 1, a call after
 * clipmpi_finalize. Other ranks are not told. */
#define CLIPMPI_ERR_USAGE 7
/* A bug in clipmpi (a Go panic caught at the boundary); please report the
 * message. */
#define CLIPMPI_ERR_INTERNAL 8
/* algorithm "auto" (or dist_impl "auto") found no algorithm whose memory
 * fits memory_budget (loss.ErrNoFit); the same on every rank. */
#define CLIPMPI_ERR_NOFIT 9

/* Element types. */
#define CLIPMPI_FLOAT32 1
#define CLIPMPI_FLOAT64 2

/* Reasons for clipmpi_reject_step. */
#define CLIPMPI_REJECT_DTYPE 1    /* an input has an element type clipmpi does not take */
#define CLIPMPI_REJECT_DEVICE 2   /* an input is not in host memory (a GPU tensor) */
#define CLIPMPI_REJECT_SHAPE 3    /* inputs of the wrong rank or shape on this rank */
#define CLIPMPI_REJECT_ARGUMENT 4 /* any other invalid argument */

typedef struct clipmpi_comm clipmpi_comm;
typedef struct clipmpi_loss clipmpi_loss;

/* ---- library ---------------------------------------------------------- */

/* Returns CLIPMPI_ABI_VERSION of the library. */
int clipmpi_abi_version(void);

/* Returns a static string describing the build, e.g.
 * "clipmpi abi 2; mpi=true; blas=openblas; bf16=avx512_bf16". bf16 names
 * the GEMM of precision "amp_bf16": "amx" or "avx512_bf16" (oneDNN on the
 * CPU's matrix units or bf16 instructions) or "emulated" (operands widened
 * to float32 exactly and multiplied by the float32 GEMM: the same numbers
 * up to the order of the float32 sums, at the float32 GEMM's speed). */
const char *clipmpi_build_info(void);

/* Returns the message of the last failed call on the calling thread, or ""
 * if the last call on this thread succeeded. The string stays valid until
 * the next clipmpi call on this thread. */
const char *clipmpi_last_error(void);

/* COLLECTIVE over MPI_COMM_WORLD. Initialises MPI unless the caller has,
 * duplicates MPI_COMM_WORLD for the library, and checks the launch
 * environment against MPI (CLIPMPI_ERR_LAUNCH). Optional: every function
 * that needs MPI calls it. Calling it again returns its first result. */
int clipmpi_init(void);

/* COLLECTIVE over MPI_COMM_WORLD. Frees every loss and communicator the
 * library still holds and calls MPI_Finalize if, and only if, the library
 * initialised MPI. Afterwards every call returns CLIPMPI_ERR_USAGE (MPI
 * cannot be initialised twice). Calling it again, or without a prior
 * clipmpi_init, does nothing and returns CLIPMPI_OK. If someone else has
 * finalised MPI already, it only releases memory. */
int clipmpi_finalize(void);

/* Ends every rank of the job: prints "clipmpi: rank R of W: message" on
 * standard error and calls MPI_Abort(MPI_COMM_WORLD, code) (exit status
 * code, 1 if code is 0 mod 256). For a failure that only this rank met,
 * when the other ranks may be waiting for it. Does not return. */
void clipmpi_abort(int32_t code, const char *message);

/* ---- communicators ---------------------------------------------------- */

/* COLLECTIVE over the communicator whose Fortran handle is fortran_handle
 * (MPI_Comm_c2f(comm), or mpi4py's comm.py2f()). Stores in *out a
 * communicator over a duplicate of it; the original may be freed
 * afterwards. CLIPMPI_ERR_MPI if the handle is not a valid communicator. */
int clipmpi_comm_from_fortran(clipmpi_comm **out, int64_t fortran_handle);

/* COLLECTIVE (MPI_Comm_free). Frees a communicator of
 * clipmpi_comm_from_fortran. Losses made on it must be freed first.
 * NULL (MPI_COMM_WORLD) is accepted and does nothing. */
int clipmpi_comm_free(clipmpi_comm *comm);

/* This process's rank and the number of ranks of comm (NULL:
 * MPI_COMM_WORLD, which initialises the library). Either out pointer may
 * be NULL. Not collective, except for the initialisation. */
int clipmpi_comm_rank(clipmpi_comm *comm, int32_t *rank, int32_t *size);

/* COLLECTIVE. Copies nbytes bytes at buf on rank root into buf on every
 * rank of comm (NULL: MPI_COMM_WORLD), e.g. to share rank 0's address for
 * another library's rendezvous. 0 <= nbytes <= 1 MiB, the same on every
 * rank. */
int clipmpi_comm_bcast(clipmpi_comm *comm, void *buf, int64_t nbytes, int32_t root);

/* COLLECTIVE: the counterpart of a forward or forward_backward call (on a
 * loss over comm) for a rank that cannot take part in this step, e.g. its
 * inputs are of a type or on a device the library does not take. Every
 * rank of the step returns CLIPMPI_ERR_INVALID, with a message that names
 * this rank, the reason (CLIPMPI_REJECT_*) and, on this rank, detail
 * (may be NULL). Returns CLIPMPI_ERR_INVALID (or an MPI error). */
int clipmpi_reject_step(clipmpi_comm *comm, int32_t reason, const char *detail);

/* ---- losses ----------------------------------------------------------- */

/* Options of a ClipLoss (OpenCLIP's ClipLoss plus the algorithm). Fill it
 * with clipmpi_clip_options_init, then change fields; struct_size lets
 * later versions add fields at the end. */
typedef struct clipmpi_clip_options {
    int64_t struct_size;      /* sizeof(clipmpi_clip_options) */
    int32_t local_loss;       /* OpenCLIP's local_loss (0 or 1; default 0) */
    int32_t gather_with_grad; /* OpenCLIP's gather_with_grad (default 0) */
    const char *algorithm;    /* "fused" (default, also NULL), "naive",
                                 "tiled", "ring", or "auto": the fastest
                                 whose memory fits memory_budget by the
                                 cost model, chosen at the first call for
                                 its batch size (loss.Auto) */
    int64_t tile;             /* column tile of tiled and ring; 0: default */
    int32_t threads;          /* threads of this loss's elementwise kernels
                                 (softmax statistics, gradient tiles ...;
                                 loss.Threads); 0: the BLAS threads when
                                 the loss is made. Results are the same bit
                                 for bit for every value. */
    int64_t memory_budget;    /* auto: bytes per rank; 0: the node's
                                 available memory / its ranks */
    const char *rates_json;   /* auto: the cost model's machine rates as
                                 JSON (loss.Rates' fields, as bin/bench
                                 -kernel-rates prints them); NULL: measured
                                 at the first call */
    int32_t blas_threads;     /* if > 0, set the threads of every GEMM of
                                 the process (OpenBLAS is process-wide);
                                 0: leave them (OPENBLAS_NUM_THREADS) */
    const char *precision;    /* (ABI 2) the GEMMs' arithmetic, named as
                                 OpenCLIP's --precision: "fp32" (default,
                                 also NULL) multiplies in the features'
                                 type; "amp_bf16" (or "bf16"), what
                                 OpenCLIP computes under
                                 torch.autocast(dtype=torch.bfloat16):
                                 the GEMM operands (the features; in the
                                 backward pass, the logits' gradients)
                                 rounded to bf16, products summed in
                                 float32; logits, the loss and the
                                 gradients stay float32, statistics
                                 float64.
                                 Features travel between ranks in bf16.
                                 CLIPMPI_FLOAT32 losses only: with
                                 CLIPMPI_FLOAT64 it is CLIPMPI_ERR_USAGE.
                                 Ranks that differ in it get
                                 CLIPMPI_ERR_DISAGREE. */
} clipmpi_clip_options;

/* Options of a SigLipLoss (OpenCLIP's SigLipLoss). */
typedef struct clipmpi_siglip_options {
    int64_t struct_size;   /* sizeof(clipmpi_siglip_options) */
    const char *dist_impl; /* "bidir" (default, also NULL), "shift",
                              "reduce", "gather", or "auto" (as the
                              clip algorithm "auto") */
    int64_t tile;          /* logit tile (OpenCLIP's chunk_size); 0: default */
    int32_t threads;       /* as in clipmpi_clip_options */
    int64_t memory_budget; /* as in clipmpi_clip_options */
    const char *rates_json;
    int32_t blas_threads;
    const char *precision; /* (ABI 2) as in clipmpi_clip_options */
} clipmpi_siglip_options;

/* Fill *opt with the defaults (OpenCLIP's defaults) and struct_size. */
void clipmpi_clip_options_init(clipmpi_clip_options *opt);
void clipmpi_siglip_options_init(clipmpi_siglip_options *opt);

/* Store in *out a ClipLoss (or SigLipLoss) over comm (NULL:
 * MPI_COMM_WORLD) for features of element type dtype (CLIPMPI_FLOAT32 or
 * CLIPMPI_FLOAT64) and dimension dim. opt NULL means the defaults. Not
 * collective (it communicates nothing), except for the library's
 * initialisation when comm is NULL. CLIPMPI_ERR_USAGE for an unknown
 * algorithm, dist_impl or precision, precision "amp_bf16" with
 * CLIPMPI_FLOAT64, dim < 1, tile, threads, blas_threads or memory_budget
 * < 0, bad rates_json, or another dtype. */
int clipmpi_clip_new(clipmpi_loss **out, clipmpi_comm *comm, int32_t dtype, int64_t dim,
                     const clipmpi_clip_options *opt);
int clipmpi_siglip_new(clipmpi_loss **out, clipmpi_comm *comm, int32_t dtype, int64_t dim,
                       const clipmpi_siglip_options *opt);

/* Frees a loss (not collective). NULL does nothing. */
int clipmpi_loss_free(clipmpi_loss *loss);

/* What a forward and backward pass returns on this rank. */
typedef struct clipmpi_result {
    double loss;             /* this rank's loss */
    double grad_logit_scale; /* d loss / d scale (the exponentiated scale) */
    double grad_logit_bias;  /* d loss / d bias; 0 without a bias */
} clipmpi_result;

/* COLLECTIVE over the loss's communicator. image and text are this rank's
 * rows x dim features (row-major, contiguous); grad_image and grad_text
 * (the same layout) receive their gradients, exactly OpenCLIP's .grad on
 * this rank; *out receives the loss and the scale and bias gradients.
 * logit_scale is the exponentiated scale (OpenCLIP's logit_scale.exp());
 * logit_bias is used only when has_bias is not 0. The gradient buffers
 * must not overlap each other or the inputs. The _f32 functions take a
 * CLIPMPI_FLOAT32 loss, the _f64 ones a CLIPMPI_FLOAT64 loss (anything
 * else is CLIPMPI_ERR_INVALID on every rank). After the first call with
 * the largest rows, calls allocate nothing. */
int clipmpi_forward_backward_f32(clipmpi_loss *loss, int64_t rows, const float *image,
                                 const float *text, float *grad_image, float *grad_text,
                                 double logit_scale, double logit_bias, int32_t has_bias,
                                 clipmpi_result *out);
int clipmpi_forward_backward_f64(clipmpi_loss *loss, int64_t rows, const double *image,
                                 const double *text, double *grad_image, double *grad_text,
                                 double logit_scale, double logit_bias, int32_t has_bias,
                                 clipmpi_result *out);

/* COLLECTIVE. The loss alone, without gradients, into *loss_out. */
int clipmpi_forward_f32(clipmpi_loss *loss, int64_t rows, const float *image,
                        const float *text, double logit_scale, double logit_bias,
                        int32_t has_bias, double *loss_out);
int clipmpi_forward_f64(clipmpi_loss *loss, int64_t rows, const double *image,
                        const double *text, double logit_scale, double logit_bias,
                        int32_t has_bias, double *loss_out);

#ifdef __cplusplus
}
#endif

#endif /* CLIPMPI_H */
