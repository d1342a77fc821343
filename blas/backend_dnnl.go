//go:build dnnl && cgo

package blas

/*
#cgo LDFLAGS: -ldnnl -lgomp
#include <stdint.h>
#include <stdlib.h>
#include <pthread.h>
#include <oneapi/dnnl/dnnl.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <unistd.h>
#include <sys/syscall.h>
#endif

void omp_set_num_threads(int);

// clip_bf16_cpu asks the kernel for the AMX tile state (failure ignored:
// oneDNN then does not report AMX) and returns 2 for AMX-BF16, 1 for
// AVX512-BF16, 0 for neither, by the CPU's flags and oneDNN's ISA.
static int clip_bf16_cpu(void) {
#if defined(__x86_64__)
	unsigned a, b, c, d;
	syscall(SYS_arch_prctl, 0x1023, 18); // ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
	dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
	// The ISA values are bit sets: avx2_vnni (0x407) is numerically above amx.
	int amx = 0, bf16 = 0;
	if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
		amx = (d >> 22) & 1; // AMX-BF16
	}
	if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) {
		bf16 = (a >> 5) & 1; // AVX512-BF16
	}
	if (amx && (isa & dnnl_cpu_isa_avx512_core_amx) == dnnl_cpu_isa_avx512_core_amx) {
		return 2;
	}
	if (bf16 && (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16) {
		return 1;
	}
#endif
	return 0;
}

static dnnl_engine_t clip_engine;

static int clip_bf16_engine(void) {
	return dnnl_engine_create(&clip_engine, dnnl_cpu, 0);
}

// Streams are not shared between concurrent executions: a mutex-guarded
// stack of idle ones.
static pthread_mutex_t clip_streams_mu = PTHREAD_MUTEX_INITIALIZER;
static dnnl_stream_t clip_streams[64];
static int clip_nstreams;

static dnnl_status_t clip_stream_get(dnnl_stream_t *s) {
	pthread_mutex_lock(&clip_streams_mu);
	if (clip_nstreams > 0) {
		*s = clip_streams[--clip_nstreams];
		pthread_mutex_unlock(&clip_streams_mu);
		return dnnl_success;
	}
	pthread_mutex_unlock(&clip_streams_mu);
	return dnnl_stream_create(s, clip_engine, dnnl_stream_default_flags);
}

static void clip_stream_put(dnnl_stream_t s) {
	pthread_mutex_lock(&clip_streams_mu);
	if (clip_nstreams < 64) {
		clip_streams[clip_nstreams++] = s;
		s = NULL;
	}
	pthread_mutex_unlock(&clip_streams_mu);
	if (s) {
		dnnl_stream_destroy(s);
	}
}

// clip_gemm is one cached matmul primitive with the memory descriptors of
// its arguments; the scratchpad is the caller's (user mode), so executions
// on several threads share nothing.
typedef struct {
	dnnl_primitive_t prim;
	dnnl_memory_desc_t a, b, c, s;
	size_t scratch;
	const char *impl;
} clip_gemm;

#define CLIP_CHECK(x) do { st = (x); if (st != dnnl_success) { goto out; } } while (0)

// clip_bf16_create builds the matmul C(f32) = alpha*A(bf16)*B(bf16) + beta*C
// with nthr OpenMP threads (oneDNN fixes its partition at creation).
static int clip_bf16_create(int nthr, int tA, int tB, int64_t m, int64_t n, int64_t k,
		int64_t lda, int64_t ldb, int64_t ldc, float alpha, float beta, clip_gemm **out) {
	dnnl_status_t st;
	dnnl_primitive_attr_t attr = NULL;
	dnnl_post_ops_t po = NULL;
	dnnl_primitive_desc_t pd = NULL;
	clip_gemm *g = calloc(1, sizeof *g);
	if (!g) {
		return dnnl_out_of_memory;
	}
	omp_set_num_threads(nthr);
	dnnl_dims_t ad = {m, k}, bd = {k, n}, cd = {m, n};
	dnnl_dims_t as = {lda, 1}, bs = {ldb, 1}, cs = {ldc, 1};
	if (tA) {
		as[0] = 1;
		as[1] = lda;
	}
	if (tB) {
		bs[0] = 1;
		bs[1] = ldb;
	}
	CLIP_CHECK(dnnl_memory_desc_init_by_strides(&g->a, 2, ad, dnnl_bf16, as));
	CLIP_CHECK(dnnl_memory_desc_init_by_strides(&g->b, 2, bd, dnnl_bf16, bs));
	CLIP_CHECK(dnnl_memory_desc_init_by_strides(&g->c, 2, cd, dnnl_f32, cs));
	dnnl_matmul_desc_t md;
	CLIP_CHECK(dnnl_matmul_desc_init(&md, &g->a, &g->b, NULL, &g->c));
	CLIP_CHECK(dnnl_primitive_attr_create(&attr));
	CLIP_CHECK(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
	if (alpha != 1) {
		CLIP_CHECK(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha));
	}
	if (beta != 0) {
		CLIP_CHECK(dnnl_post_ops_create(&po));
		CLIP_CHECK(dnnl_post_ops_append_sum(po, beta));
		CLIP_CHECK(dnnl_primitive_attr_set_post_ops(attr, po));
	}
	CLIP_CHECK(dnnl_primitive_desc_create(&pd, &md, attr, clip_engine, NULL));
	const dnnl_memory_desc_t *s = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
	if (s) {
		g->s = *s;
		g->scratch = dnnl_memory_desc_get_size(s);
	}
	CLIP_CHECK(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &g->impl));
	CLIP_CHECK(dnnl_primitive_create(&g->prim, pd));
out:
	if (pd) {
		dnnl_primitive_desc_destroy(pd);
	}
	if (po) {
		dnnl_post_ops_destroy(po);
	}
	if (attr) {
		dnnl_primitive_attr_destroy(attr);
	}
	if (st != dnnl_success) {
		free(g);
		g = NULL;
	}
	*out = g;
	return st;
}

static void clip_bf16_destroy(clip_gemm *g) {
	dnnl_primitive_destroy(g->prim);
	free(g);
}

// clip_bf16_exec runs g on nthr OpenMP threads, set on this OS thread in
// the same call.
static int clip_bf16_exec(int nthr, clip_gemm *g, void *a, void *b, float *c, void *scratch) {
	dnnl_status_t st;
	dnnl_memory_t ma = NULL, mb = NULL, mc = NULL, ms = NULL;
	dnnl_stream_t str = NULL;
	int nargs = 3;
	omp_set_num_threads(nthr);
	CLIP_CHECK(dnnl_memory_create(&ma, &g->a, clip_engine, a));
	CLIP_CHECK(dnnl_memory_create(&mb, &g->b, clip_engine, b));
	CLIP_CHECK(dnnl_memory_create(&mc, &g->c, clip_engine, c));
	if (g->scratch) {
		CLIP_CHECK(dnnl_memory_create(&ms, &g->s, clip_engine, scratch));
		nargs = 4;
	}
	dnnl_exec_arg_t args[4] = {
		{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}, {DNNL_ARG_SCRATCHPAD, ms},
	};
	CLIP_CHECK(clip_stream_get(&str));
	CLIP_CHECK(dnnl_primitive_execute(g->prim, str, nargs, args));
	CLIP_CHECK(dnnl_stream_wait(str));
out:
	if (str) {
		clip_stream_put(str);
	}
	if (ms) {
		dnnl_memory_destroy(ms);
	}
	if (mc) {
		dnnl_memory_destroy(mc);
	}
	if (mb) {
		dnnl_memory_destroy(mb);
	}
	if (ma) {
		dnnl_memory_destroy(ma);
	}
	return st;
}
*/
import "C"

import (
	"math"
	"os"
	"strconv"
	"sync"
	"unsafe"
)

// bf16Path is set at init: oneDNN's path where the CPU has bf16
// instructions and CLIPMPI_BF16 is not "emulated".
var bf16Path = pathEmulated

func init() {
	switch C.clip_bf16_cpu() {
	case 2:
		bf16Path = pathAMX
	case 1:
		bf16Path = pathAVX512BF16
	}
	if os.Getenv("CLIPMPI_BF16") == pathEmulated {
		bf16Path = pathEmulated
	}
}

// dnnlKey identifies a cached primitive. The thread count is part of it:
// oneDNN partitions the work when the primitive is created.
type dnnlKey struct {
	tA, tB                           Transpose
	m, n, k, lda, ldb, ldc, nthreads int
	alpha, beta                      uint32
}

// dnnlCacheMax bounds the cache; shapes beyond it get a primitive built
// and destroyed per call.
const dnnlCacheMax = 256

var dnnl struct {
	once  sync.Once
	err   C.int
	mu    sync.RWMutex
	cache map[dnnlKey]*C.clip_gemm
}

// byteScratch holds idle oneDNN scratchpads (user mode).
var byteScratch freeList[byte]

func dnnlStatus(st C.int) string { return "oneDNN status " + strconv.Itoa(int(st)) }

// dnnlGet returns the primitive for key, building and caching it when
// absent; cached is false for a primitive the caller must destroy.
func dnnlGet(key dnnlKey, alpha, beta float32) (g *C.clip_gemm, cached bool) {
	dnnl.once.Do(func() {
		dnnl.err = C.clip_bf16_engine()
		dnnl.cache = make(map[dnnlKey]*C.clip_gemm)
	})
	if dnnl.err != 0 {
		panic(errBF16Backend + "engine: " + dnnlStatus(dnnl.err))
	}
	dnnl.mu.RLock()
	g = dnnl.cache[key]
	dnnl.mu.RUnlock()
	if g != nil {
		return g, true
	}
	dnnl.mu.Lock()
	defer dnnl.mu.Unlock()
	if g = dnnl.cache[key]; g != nil {
		return g, true
	}
	g = dnnlCreate(key, alpha, beta)
	if len(dnnl.cache) >= dnnlCacheMax {
		return g, false
	}
	dnnl.cache[key] = g
	return g, true
}

// dnnlCreate builds the primitive for key.
func dnnlCreate(key dnnlKey, alpha, beta float32) *C.clip_gemm {
	tA, tB := C.int(0), C.int(0)
	if key.tA == Trans {
		tA = 1
	}
	if key.tB == Trans {
		tB = 1
	}
	var g *C.clip_gemm
	if st := C.clip_bf16_create(C.int(key.nthreads), tA, tB, C.int64_t(key.m), C.int64_t(key.n), C.int64_t(key.k),
		C.int64_t(key.lda), C.int64_t(key.ldb), C.int64_t(key.ldc), C.float(alpha), C.float(beta), &g); st != 0 {
		panic(errBF16Backend + "matmul primitive: " + dnnlStatus(st))
	}
	return g
}

// gemmBF16DNNL runs oneDNN's matmul on Threads() OpenMP threads.
// Arguments are checked and m, n, k > 0, alpha != 0.
func gemmBF16DNNL(tA, tB Transpose, m, n, k int, alpha float32, a []BF16, lda int, b []BF16, ldb int, beta float32, c []float32, ldc int) {
	key := dnnlKey{tA, tB, m, n, k, lda, ldb, ldc, Threads(), math.Float32bits(alpha), math.Float32bits(beta)}
	g, cached := dnnlGet(key, alpha, beta)
	var p *[]byte
	var pad unsafe.Pointer
	if size := int(g.scratch); size > 0 {
		// 64-byte aligned, as oneDNN's own scratchpads are.
		p = byteScratch.get(size + 63)
		buf := (*p)[:size+63]
		off := int(-uintptr(unsafe.Pointer(&buf[0])) & 63)
		pad = unsafe.Pointer(&buf[off])
	}
	st := C.clip_bf16_exec(C.int(key.nthreads), g, unsafe.Pointer(&a[0]), unsafe.Pointer(&b[0]), (*C.float)(&c[0]), pad)
	if p != nil {
		byteScratch.put(p)
	}
	if !cached {
		C.clip_bf16_destroy(g)
	}
	if st != 0 {
		panic(errBF16Backend + "execute: " + dnnlStatus(st))
	}
}

// dnnlImpl returns the name of oneDNN's implementation for a shape, for
// tests and benchmarks.
func dnnlImpl(tA, tB Transpose, m, n, k, lda, ldb, ldc int, alpha, beta float32) string {
	key := dnnlKey{tA, tB, m, n, k, lda, ldb, ldc, Threads(), math.Float32bits(alpha), math.Float32bits(beta)}
	g, cached := dnnlGet(key, alpha, beta)
	s := C.GoString(g.impl)
	if !cached {
		C.clip_bf16_destroy(g)
	}
	return s
}
