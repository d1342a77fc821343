/*
 * golden.c: the C ABI against OpenCLIP's golden cases, under mpirun.
 *
 *   mpirun -np W golden [--lib-init | --init-single] DIR
 *
 * Every case in DIR whose world_size is W runs on MPI_COMM_WORLD (NULL) and
 * on a duplicate given by its Fortran handle, with every algorithm (ClipLoss)
 * or the case's dist_impl and chunk size (SigLipLoss), forward_backward and
 * forward, in float64 to the golden tolerances (1e-9 of each array's largest
 * magnitude; ClipLoss's bias gradient to 1e-12 absolute) and in float32 to a
 * float32 tolerance. Every case's single_process outputs are then computed by
 * each rank alone, on a one-rank communicator made with MPI_Comm_split and
 * passed by its Fortran handle (freed by the caller right after). Then the
 * error paths: each must give the same code on every rank, and the
 * communicator must still work afterwards.
 *
 * MPI: by default this program initialises MPI (MPI_Init_thread,
 * MPI_THREAD_MULTIPLE) and finalises it after clipmpi_finalize, which must
 * leave it running. --lib-init lets the library initialise MPI; then
 * clipmpi_finalize must finalise it. --init-single initialises MPI with
 * MPI_Init (MPI_THREAD_SINGLE), which the library must refuse with
 * CLIPMPI_ERR_MPI.
 *
 * Exit status 0 when every check passed on every rank.
 */
#include <dirent.h>
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clipmpi.h"
#include "json.h"

static int rank, size;
static long passed, failed;

static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "rank %d: FAIL: ", rank);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    failed++;
}

static void check(int ok, const char *fmt, ...) {
    if (ok) {
        passed++;
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "rank %d: FAIL: ", rank);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    failed++;
}

/* The largest deviation seen in float32 runs, as a fraction of the array's
 * largest magnitude and absolute. */
static double worst32_rel, worst32_abs;

/* mismatch compares got with want to rel times max|want| plus abs (exact
 * zeros for an all-zero want and abs = 0), as test/golden.go does; 1 if
 * they agree. */
static int mismatch(const char *what, const char *name, const double *got, const double *want, size_t n,
                    double rel, double abs) {
    double scale = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
    double tol = rel * scale + abs, worst = -1;
    if (abs > 0) {
        for (size_t i = 0; i < n; i++) {
            double d = fabs(got[i] - want[i]);
            worst32_abs = fmax(worst32_abs, d);
            if (scale > 1e-3) worst32_rel = fmax(worst32_rel, d / scale);
        }
    }
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(got[i] - want[i]);
        if (!(d <= tol) && (d > worst || isnan(d))) worst = d, at = i;
    }
    if (worst < 0) return 1;
    fail("%s: %s[%zu] = %.17g, want %.17g (|diff| %.3g > %.3g)", name, what, at, got[at], want[at], worst, tol);
    return 0;
}

typedef struct {
    const char *kind; /* "clip" or "siglip" */
    int world, b, d, local, gwg, has_bias;
    double scale, bias;
    const char *impl;
    int chunk;
} casedef;

typedef struct {
    double *img, *txt, *gimg, *gtxt;
    double loss, gscale, gbias;
    int has_gbias;
} outputs;

static void free_outputs(outputs *o) {
    free(o->img);
    free(o->txt);
    free(o->gimg);
    free(o->gtxt);
}

/* read_outputs reads rows x d inputs (from r, or NULL) and the outputs
 * (from o). */
static int read_outputs(const json *r, const json *o, int rows, int d, outputs *out) {
    memset(out, 0, sizeof *out);
    if (r) {
        out->img = json_matrix(json_get(r, "image_features"), rows, d);
        out->txt = json_matrix(json_get(r, "text_features"), rows, d);
        if (!out->img || !out->txt) return 0;
    }
    out->gimg = json_matrix(json_get(o, "grad_image_features"), rows, d);
    out->gtxt = json_matrix(json_get(o, "grad_text_features"), rows, d);
    const json *l = json_get(o, "loss"), *gs = json_get(o, "grad_logit_scale"), *gb = json_get(o, "grad_logit_bias");
    if (!out->gimg || !out->gtxt || !l || !gs) return 0;
    out->loss = l->num;
    out->gscale = gs->num;
    if (gb && gb->t == J_NUM) out->has_gbias = 1, out->gbias = gb->num;
    return 1;
}

static clipmpi_loss *make_loss(const casedef *c, clipmpi_comm *comm, int dtype, const char *algo, int chunk) {
    clipmpi_loss *l = NULL;
    int rc;
    if (strcmp(c->kind, "clip") == 0) {
        clipmpi_clip_options o;
        clipmpi_clip_options_init(&o);
        o.local_loss = c->local;
        o.gather_with_grad = c->gwg;
        o.algorithm = algo;
        rc = clipmpi_clip_new(&l, comm, dtype, c->d, &o);
    } else {
        clipmpi_siglip_options o;
        clipmpi_siglip_options_init(&o);
        o.dist_impl = algo;
        o.tile = chunk;
        rc = clipmpi_siglip_new(&l, comm, dtype, c->d, &o);
    }
    if (rc != CLIPMPI_OK) {
        fail("creating the loss: code %d: %s", rc, clipmpi_last_error());
        return NULL;
    }
    return l;
}

/* run_case computes rows rows on comm with loss options algo (and chunk)
 * and compares with want; f32 runs the float32 path at tolerance tol32. */
static void run_case(const char *name, const casedef *c, clipmpi_comm *comm, const char *algo, int chunk,
                     int rows, const outputs *in, const outputs *want, int f32) {
    char label[512];
    snprintf(label, sizeof label, "%s [%s, %s, %s]", name, comm ? "handle" : "world", algo, f32 ? "float32" : "float64");
    size_t n = (size_t)rows * c->d;
    clipmpi_loss *l = make_loss(c, comm, f32 ? CLIPMPI_FLOAT32 : CLIPMPI_FLOAT64, algo, chunk);
    if (!l) return;
    double *gi = calloc(n + 1, sizeof *gi), *gt = calloc(n + 1, sizeof *gt);
    clipmpi_result res;
    double fwd = NAN;
    int rc, rc2;
    if (!f32) {
        rc = clipmpi_forward_backward_f64(l, rows, in->img, in->txt, gi, gt, c->scale, c->bias, c->has_bias, &res);
        rc2 = clipmpi_forward_f64(l, rows, in->img, in->txt, c->scale, c->bias, c->has_bias, &fwd);
    } else {
        float *i32 = malloc((n + 1) * sizeof *i32), *t32 = malloc((n + 1) * sizeof *t32);
        float *gi32 = malloc((n + 1) * sizeof *gi32), *gt32 = malloc((n + 1) * sizeof *gt32);
        for (size_t k = 0; k < n; k++) i32[k] = (float)in->img[k], t32[k] = (float)in->txt[k];
        rc = clipmpi_forward_backward_f32(l, rows, i32, t32, gi32, gt32, c->scale, c->bias, c->has_bias, &res);
        rc2 = clipmpi_forward_f32(l, rows, i32, t32, c->scale, c->bias, c->has_bias, &fwd);
        for (size_t k = 0; k < n; k++) gi[k] = gi32[k], gt[k] = gt32[k];
        free(i32), free(t32), free(gi32), free(gt32);
    }
    if (rc != CLIPMPI_OK || rc2 != CLIPMPI_OK) {
        fail("%s: codes %d, %d: %s", label, rc, rc2, clipmpi_last_error());
    } else {
        /* float64: the golden tolerance. float32: the inputs rounded to
         * float32 and float32 logits; gradients that cancel to ~1e-14 or
         * underflow (the golden's 1e-270) can only be matched absolutely,
         * hence a floor of 1e-6 besides 5e-5 of the array's magnitude
         * (the worst deviations seen are printed at the end). */
        double rel = f32 ? 5e-5 : 1e-9, abs = f32 ? 1e-6 : 0;
        int ok = mismatch("loss", label, &res.loss, &want->loss, 1, rel, abs) &
                 mismatch("forward loss", label, &fwd, &want->loss, 1, rel, abs) &
                 mismatch("grad_image_features", label, gi, want->gimg, n, rel, abs) &
                 mismatch("grad_text_features", label, gt, want->gtxt, n, rel, abs) &
                 mismatch("grad_logit_scale", label, &res.grad_logit_scale, &want->gscale, 1, rel, abs);
        if (want->has_gbias) {
            if (strcmp(c->kind, "clip") == 0) {
                double abs_tol = f32 ? 1e-6 : 1e-12;
                if (!(fabs(res.grad_logit_bias - want->gbias) <= abs_tol)) {
                    fail("%s: grad_logit_bias = %.17g, want %.17g", label, res.grad_logit_bias, want->gbias);
                    ok = 0;
                }
            } else {
                ok &= mismatch("grad_logit_bias", label, &res.grad_logit_bias, &want->gbias, 1, rel, abs);
            }
        }
        check(ok, "%s", label);
        if (*clipmpi_last_error() != 0) fail("%s: last_error %s after a success", label, clipmpi_last_error());
    }
    clipmpi_loss_free(l);
    free(gi), free(gt);
}

static int cmp_names(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }

static int is_json(const struct dirent *e) {
    size_t n = strlen(e->d_name);
    return n > 5 && strcmp(e->d_name + n - 5, ".json") == 0;
}

/* run_file runs one golden case file; returns the number of runs. */
static int run_file(const char *path, const char *name, clipmpi_comm *world_dup, clipmpi_comm *solo) {
    json *j = json_read(path);
    if (!j) {
        fail("%s: unreadable", path);
        return 0;
    }
    casedef c = {0};
    c.kind = json_get(j, "loss_kind")->str;
    c.world = (int)json_get(j, "world_size")->num;
    c.b = (int)json_get(j, "batch_per_rank")->num;
    c.d = (int)json_get(j, "dim")->num;
    c.scale = json_get(j, "logit_scale")->num;
    const json *v;
    if ((v = json_get(j, "logit_bias")) && v->t == J_NUM) c.has_bias = 1, c.bias = v->num;
    if ((v = json_get(j, "local_loss")) && v->t == J_BOOL) c.local = (int)v->num;
    if ((v = json_get(j, "gather_with_grad")) && v->t == J_BOOL) c.gwg = (int)v->num;
    if ((v = json_get(j, "siglip_dist_impl")) && v->t == J_STR) c.impl = v->str;
    if ((v = json_get(j, "siglip_chunk_size")) && v->t == J_NUM) c.chunk = (int)v->num;
    const json *ranks = json_get(j, "ranks");
    int runs = 0;
    static const char *algos[] = {"naive", "fused", "tiled", "ring", "auto"};
    int is_clip = strcmp(c.kind, "clip") == 0;
    if (c.world == size) {
        outputs mine;
        if (!read_outputs(ranks->items[rank], ranks->items[rank], c.b, c.d, &mine)) {
            fail("%s: rank %d's arrays have the wrong shape", name, rank);
        } else {
            for (int a = 0; a < (is_clip ? 5 : 2); a++) {
                const char *algo = is_clip ? algos[a] : a == 0 ? c.impl : "auto";
                for (int f32 = 0; f32 <= 1; f32++) {
                    run_case(name, &c, NULL, algo, c.chunk, c.b, &mine, &mine, f32);
                    runs++;
                }
                run_case(name, &c, world_dup, algo, c.chunk, c.b, &mine, &mine, 0);
                runs++;
            }
        }
        free_outputs(&mine);
    }
    /* single_process on this rank alone: all ranks' rows concatenated. */
    int rows = c.world * c.b;
    size_t per = (size_t)c.b * c.d;
    outputs in = {0}, want;
    in.img = malloc((rows * (size_t)c.d + 1) * sizeof(double));
    in.txt = malloc((rows * (size_t)c.d + 1) * sizeof(double));
    int shape_ok = read_outputs(NULL, json_get(j, "single_process"), rows, c.d, &want);
    for (int r = 0; r < c.world && shape_ok; r++) {
        double *im = json_matrix(json_get(ranks->items[r], "image_features"), c.b, c.d);
        double *tx = json_matrix(json_get(ranks->items[r], "text_features"), c.b, c.d);
        if (!im || !tx) shape_ok = 0;
        else memcpy(in.img + r * per, im, per * sizeof(double)), memcpy(in.txt + r * per, tx, per * sizeof(double));
        free(im), free(tx);
    }
    if (!shape_ok) {
        fail("%s: single_process arrays have the wrong shape", name);
    } else {
        run_case(name, &c, solo, is_clip ? "fused" : c.impl, c.chunk, rows, &in, &want, 0);
        runs++;
    }
    free_outputs(&in);
    free_outputs(&want);
    json_free(j);
    return runs;
}

/* every reports whether all ranks got code want (collective, on the
 * caller's MPI_COMM_WORLD). */
static int every(int got, int want) {
    int ok = got == want, all;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    return all;
}

/* error_paths: rank-local mistakes and disagreements must give the same
 * code on every rank, and the loss must work again afterwards. */
static void error_paths(void) {
    enum { B = 3, D = 4 };
    double img[B * D], txt[B * D], gi[B * D], gt[B * D];
    float f32[B * D];
    for (int k = 0; k < B * D; k++) img[k] = sin(k + rank), txt[k] = cos(k - rank), f32[k] = (float)img[k];
    clipmpi_clip_options o;
    clipmpi_clip_options_init(&o);
    o.local_loss = o.gather_with_grad = 1;
    clipmpi_loss *l = NULL;
    if (clipmpi_clip_new(&l, NULL, CLIPMPI_FLOAT64, D, &o) != CLIPMPI_OK) {
        fail("clip_new: %s", clipmpi_last_error());
        return;
    }
    clipmpi_result res;
    double lossv;
    int rc;
#define EXPECT(what, want, call)                                                                   \
    do {                                                                                           \
        rc = (call);                                                                               \
        check(every(rc, want), "%s: code %d (want %d on every rank): %s", what, rc, want,          \
              clipmpi_last_error());                                                               \
        if (rank == 0 && rc != CLIPMPI_OK) printf("  %-34s -> %d: %s\n", what, rc, clipmpi_last_error()); \
        rc = clipmpi_forward_backward_f64(l, B, img, txt, gi, gt, 10, 0, 0, &res);                 \
        check(every(rc, CLIPMPI_OK), "a step after '%s': code %d: %s", what, rc, clipmpi_last_error()); \
    } while (0)

    EXPECT("a valid step", CLIPMPI_OK, clipmpi_forward_backward_f64(l, B, img, txt, gi, gt, 10, 0, 0, &res));
    EXPECT("batch size differs on rank 1", CLIPMPI_ERR_DISAGREE,
           clipmpi_forward_backward_f64(l, rank == 1 ? B - 1 : B, img, txt, gi, gt, 10, 0, 0, &res));
    double nan_img[B * D];
    memcpy(nan_img, img, sizeof img);
    nan_img[5] = rank == 1 ? NAN : img[5];
    EXPECT("NaN on rank 1", CLIPMPI_ERR_NONFINITE, clipmpi_forward_backward_f64(l, B, nan_img, txt, gi, gt, 10, 0, 0, &res));
    EXPECT("rank 1 rejects the step", CLIPMPI_ERR_INVALID,
           rank == 1 ? clipmpi_reject_step(NULL, CLIPMPI_REJECT_DTYPE, "image_features is float16")
                     : clipmpi_forward_backward_f64(l, B, img, txt, gi, gt, 10, 0, 0, &res));
    EXPECT("NULL image on rank 0", CLIPMPI_ERR_INVALID,
           clipmpi_forward_backward_f64(l, B, rank == 0 ? NULL : img, txt, gi, gt, 10, 0, 0, &res));
    EXPECT("forward on rank 1 only", CLIPMPI_ERR_DISAGREE,
           rank == 1 ? clipmpi_forward_f64(l, B, img, txt, 10, 0, 0, &lossv)
                     : clipmpi_forward_backward_f64(l, B, img, txt, gi, gt, 10, 0, 0, &res));
    EXPECT("float32 buffers on rank 1", CLIPMPI_ERR_INVALID,
           rank == 1 ? clipmpi_forward_f32(l, B, f32, f32, 10, 0, 0, &lossv)
                     : clipmpi_forward_f64(l, B, img, txt, 10, 0, 0, &lossv));
    EXPECT("grad_image = image on rank 0", CLIPMPI_ERR_INVALID,
           clipmpi_forward_backward_f64(l, B, img, txt, rank == 0 ? img : gi, gt, 10, 0, 0, &res));
    EXPECT("scale differs on rank 1", CLIPMPI_ERR_DISAGREE,
           clipmpi_forward_backward_f64(l, B, img, txt, gi, gt, rank == 1 ? 11 : 10, 0, 0, &res));
    EXPECT("0 rows", CLIPMPI_ERR_EMPTY, clipmpi_forward_backward_f64(l, 0, NULL, NULL, NULL, NULL, 10, 0, 0, &res));
    EXPECT("negative rows on rank 0", CLIPMPI_ERR_INVALID,
           clipmpi_forward_backward_f64(l, rank == 0 ? -1 : B, img, txt, gi, gt, 10, 0, 0, &res));

    /* A loss of another dimension on rank 1. */
    clipmpi_loss *l5 = NULL;
    if (clipmpi_clip_new(&l5, NULL, CLIPMPI_FLOAT64, rank == 1 ? D + 1 : D, &o) != CLIPMPI_OK) fail("clip_new");
    double big[(B + 1) * (D + 1)], gbig[(B + 1) * (D + 1)], gbig2[(B + 1) * (D + 1)];
    for (int k = 0; k < (B + 1) * (D + 1); k++) big[k] = cos(3 * k);
    EXPECT("dimension differs on rank 1", CLIPMPI_ERR_DISAGREE,
           clipmpi_forward_backward_f64(l5, B, big, big, gbig, gbig2, 10, 0, 0, &res));
    clipmpi_loss_free(l5);

    /* Local misuse: only this rank is told, nobody waits. */
    check(clipmpi_forward_f64(l5, B, img, txt, 10, 0, 0, &lossv) == CLIPMPI_ERR_USAGE, "a freed handle: %s",
          clipmpi_last_error());
    check(strstr(clipmpi_last_error(), "freed") != NULL, "freed handle message: %s", clipmpi_last_error());
    clipmpi_clip_options bad = o;
    bad.algorithm = "bogus";
    check(clipmpi_clip_new(&l5, NULL, CLIPMPI_FLOAT64, D, &bad) == CLIPMPI_ERR_USAGE, "unknown algorithm");
    check(strstr(clipmpi_last_error(), "bogus") != NULL, "unknown algorithm message: %s", clipmpi_last_error());
    check(clipmpi_clip_new(&l5, NULL, CLIPMPI_FLOAT64, 0, &o) == CLIPMPI_ERR_USAGE, "dimension 0");
    check(clipmpi_clip_new(&l5, NULL, 3, D, &o) == CLIPMPI_ERR_USAGE, "dtype 3");
    bad = o;
    bad.tile = -1;
    check(clipmpi_clip_new(&l5, NULL, CLIPMPI_FLOAT64, D, &bad) == CLIPMPI_ERR_USAGE, "negative tile: %s",
          clipmpi_last_error());
    clipmpi_siglip_options so;
    clipmpi_siglip_options_init(&so);
    so.dist_impl = "sideways";
    check(clipmpi_siglip_new(&l5, NULL, CLIPMPI_FLOAT64, D, &so) == CLIPMPI_ERR_USAGE, "unknown dist_impl");
    check(clipmpi_abi_version() == CLIPMPI_ABI_VERSION, "abi version %d", clipmpi_abi_version());

    /* precision (ABI 2): an unknown name, and amp_bf16 with float64, are
     * local misuse; amp_bf16 is close to fp32 in float32; ranks that
     * differ in it disagree. */
    clipmpi_clip_options po = o;
    po.precision = "fp16";
    check(clipmpi_clip_new(&l5, NULL, CLIPMPI_FLOAT32, D, &po) == CLIPMPI_ERR_USAGE &&
              strstr(clipmpi_last_error(), "fp16") != NULL,
          "unknown precision: %s", clipmpi_last_error());
    po.precision = "amp_bf16";
    check(clipmpi_clip_new(&l5, NULL, CLIPMPI_FLOAT64, D, &po) == CLIPMPI_ERR_USAGE &&
              strstr(clipmpi_last_error(), "CLIPMPI_FLOAT32") != NULL,
          "amp_bf16 with float64: %s", clipmpi_last_error());
    so.dist_impl = NULL;
    so.precision = "amp_bf16";
    check(clipmpi_siglip_new(&l5, NULL, CLIPMPI_FLOAT64, D, &so) == CLIPMPI_ERR_USAGE, "siglip amp_bf16 with float64");
    {
        float t32[B * D], gi1[B * D], gt1[B * D], gi2[B * D], gt2[B * D];
        for (int k = 0; k < B * D; k++) t32[k] = (float)txt[k];
        clipmpi_loss *lf = NULL, *lb = NULL;
        clipmpi_result rf, rb;
        po.precision = NULL;
        if (clipmpi_clip_new(&lf, NULL, CLIPMPI_FLOAT32, D, &po) != CLIPMPI_OK) fail("fp32 clip_new: %s", clipmpi_last_error());
        po.precision = "amp_bf16";
        if (clipmpi_clip_new(&lb, NULL, CLIPMPI_FLOAT32, D, &po) != CLIPMPI_OK) fail("amp_bf16 clip_new: %s", clipmpi_last_error());
        int rf_rc = clipmpi_forward_backward_f32(lf, B, f32, t32, gi1, gt1, 10, 0, 0, &rf);
        int rb_rc = clipmpi_forward_backward_f32(lb, B, f32, t32, gi2, gt2, 10, 0, 0, &rb);
        check(every(rf_rc, CLIPMPI_OK) && every(rb_rc, CLIPMPI_OK), "fp32 and amp_bf16 steps: %d, %d: %s", rf_rc,
              rb_rc, clipmpi_last_error());
        check(fabs(rb.loss - rf.loss) <= 2e-2 * fabs(rf.loss), "amp_bf16 loss %g, fp32 %g", rb.loss, rf.loss);
        EXPECT("precision amp_bf16 on rank 1 only", CLIPMPI_ERR_DISAGREE,
               clipmpi_forward_backward_f32(rank == 1 ? lb : lf, B, f32, t32, gi1, gt1, 10, 0, 0, &rf));
        clipmpi_loss_free(lf);
        clipmpi_loss_free(lb);
    }

    /* auto with a budget nothing fits: CLIPMPI_ERR_NOFIT on every rank at
     * the first call; rates given as JSON; bad JSON is local misuse. */
    clipmpi_clip_options tight = o;
    tight.algorithm = "auto";
    tight.memory_budget = 1;
    tight.rates_json = "{\"gemm_gflops\": 10, \"stats_ns\": 1, \"grad_ns\": 1}";
    if (clipmpi_clip_new(&l5, NULL, CLIPMPI_FLOAT64, D, &tight) != CLIPMPI_OK) fail("auto clip_new: %s", clipmpi_last_error());
    EXPECT("auto with a 1-byte budget", CLIPMPI_ERR_NOFIT, clipmpi_forward_backward_f64(l5, B, img, txt, gi, gt, 10, 0, 0, &res));
    clipmpi_loss_free(l5);
    tight.rates_json = "{\"gemm_gflops\": ";
    check(clipmpi_clip_new(&l5, NULL, CLIPMPI_FLOAT64, D, &tight) == CLIPMPI_ERR_USAGE, "bad rates_json");
    tight.rates_json = "{\"no_such_rate\": 1}";
    check(clipmpi_clip_new(&l5, NULL, CLIPMPI_FLOAT64, D, &tight) == CLIPMPI_ERR_USAGE, "unknown rate: %s", clipmpi_last_error());

    /* The kernels' threads change no bit of the result. */
    double gi1[B * D], gt1[B * D];
    clipmpi_result r1, r3;
    clipmpi_clip_options th = o;
    th.threads = 1;
    if (clipmpi_clip_new(&l5, NULL, CLIPMPI_FLOAT64, D, &th) != CLIPMPI_OK) fail("threads 1: %s", clipmpi_last_error());
    rc = clipmpi_forward_backward_f64(l5, B, img, txt, gi1, gt1, 10, 0, 0, &r1);
    clipmpi_loss_free(l5);
    th.threads = 3;
    if (clipmpi_clip_new(&l5, NULL, CLIPMPI_FLOAT64, D, &th) != CLIPMPI_OK) fail("threads 3: %s", clipmpi_last_error());
    int rc3 = clipmpi_forward_backward_f64(l5, B, img, txt, gi, gt, 10, 0, 0, &r3);
    clipmpi_loss_free(l5);
    check(rc == CLIPMPI_OK && rc3 == CLIPMPI_OK && r1.loss == r3.loss && r1.grad_logit_scale == r3.grad_logit_scale &&
              memcmp(gi1, gi, sizeof gi) == 0 && memcmp(gt1, gt, sizeof gt) == 0,
          "threads 1 and 3 differ (codes %d, %d)", rc, rc3);
    th.threads = -1;
    check(clipmpi_clip_new(&l5, NULL, CLIPMPI_FLOAT64, D, &th) == CLIPMPI_ERR_USAGE, "negative threads");
    th.threads = 0;
    th.blas_threads = -2;
    check(clipmpi_clip_new(&l5, NULL, CLIPMPI_FLOAT64, D, &th) == CLIPMPI_ERR_USAGE, "negative blas_threads");

    /* An options struct of an older, shorter layout: only local_loss. */
    struct {
        int64_t struct_size;
        int32_t local_loss;
    } old = {sizeof old, 1};
    check(clipmpi_clip_new(&l5, NULL, CLIPMPI_FLOAT64, D, (const clipmpi_clip_options *)&old) == CLIPMPI_OK,
          "a shorter options struct: %s", clipmpi_last_error());
    clipmpi_loss_free(l5);

    char msg[32] = {0};
    if (rank == 0) snprintf(msg, sizeof msg, "rank 0 says hello");
    EXPECT("bcast from rank 0", CLIPMPI_OK, clipmpi_comm_bcast(NULL, msg, sizeof msg, 0));
    check(strcmp(msg, "rank 0 says hello") == 0, "bcast gave '%s'", msg);
    EXPECT("bcast of differing sizes", CLIPMPI_ERR_DISAGREE,
           clipmpi_comm_bcast(NULL, msg, rank == 1 ? 8 : (int64_t)sizeof msg, 0));
    clipmpi_loss_free(l);
#undef EXPECT
}

int main(int argc, char **argv) {
    int lib_init = 0, init_single = 0;
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--lib-init") == 0) lib_init = 1;
        else if (strcmp(argv[i], "--init-single") == 0) init_single = 1;
        else dir = argv[i];
    }
    if (!dir && !init_single) {
        fprintf(stderr, "usage: mpirun -np W %s [--lib-init | --init-single] GOLDEN_DIR\n", argv[0]);
        return 2;
    }
    if (init_single) {
        MPI_Init(&argc, &argv);
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        int rc = clipmpi_init();
        int ok = rc == CLIPMPI_ERR_MPI && strstr(clipmpi_last_error(), "thread level") != NULL;
        if (rank == 0) printf("MPI_Init (MPI_THREAD_SINGLE): clipmpi_init -> %d: %s\n", rc, clipmpi_last_error());
        int all;
        MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
        MPI_Finalize();
        if (rank == 0) printf("%s\n", all ? "PASS" : "FAIL");
        return all ? 0 : 1;
    }
    if (!lib_init) {
        int provided;
        MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    }
    int rc = clipmpi_init();
    if (rc != CLIPMPI_OK) {
        fprintf(stderr, "clipmpi_init: %d: %s\n", rc, clipmpi_last_error());
        return 1;
    }
    int32_t r32, s32;
    clipmpi_comm_rank(NULL, &r32, &s32);
    rank = r32, size = s32;
    int mpi_rank, mpi_size;
    MPI_Comm_rank(MPI_COMM_WORLD, &mpi_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &mpi_size);
    check(rank == mpi_rank && size == mpi_size, "clipmpi_comm_rank says %d of %d, MPI %d of %d", rank, size, mpi_rank,
          mpi_size);
    if (rank == 0) printf("%s; %d ranks; MPI initialised by %s\n", clipmpi_build_info(), size, lib_init ? "the library" : "the caller");

    /* One-rank communicators, freed by the caller once the library has
     * its duplicate; and a duplicate of MPI_COMM_WORLD by handle. */
    MPI_Comm split;
    MPI_Comm_split(MPI_COMM_WORLD, rank, 0, &split);
    clipmpi_comm *solo = NULL, *world_dup = NULL;
    if (clipmpi_comm_from_fortran(&solo, MPI_Comm_c2f(split)) != CLIPMPI_OK ||
        clipmpi_comm_from_fortran(&world_dup, MPI_Comm_c2f(MPI_COMM_WORLD)) != CLIPMPI_OK) {
        fprintf(stderr, "clipmpi_comm_from_fortran: %s\n", clipmpi_last_error());
        return 1;
    }
    MPI_Comm_free(&split);
    int32_t sr, ss;
    clipmpi_comm_rank(solo, &sr, &ss);
    check(sr == 0 && ss == 1, "the split communicator is rank %d of %d", sr, ss);
    clipmpi_comm *badc = NULL;
    check(clipmpi_comm_from_fortran(&badc, 1 << 30) == CLIPMPI_ERR_MPI, "an invalid Fortran handle");

    struct dirent **names;
    int n = scandir(dir, &names, is_json, cmp_names);
    if (n <= 0) {
        fprintf(stderr, "no golden cases (*.json) in %s\n", dir);
        return 1;
    }
    int runs = 0, cases = 0;
    char path[4096];
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]->d_name);
        runs += run_file(path, names[i]->d_name, world_dup, solo);
        cases++;
        free(names[i]);
    }
    free(names);
    if (size >= 2) error_paths();

    check(clipmpi_comm_free(solo) == CLIPMPI_OK, "comm_free: %s", clipmpi_last_error());
    check(clipmpi_comm_free(world_dup) == CLIPMPI_OK, "comm_free: %s", clipmpi_last_error());
    long counts[2] = {passed, failed}, total[2];
    MPI_Allreduce(counts, total, 2, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("%d case files, %d runs on rank 0; %ld checks passed, %ld failed (all ranks)\n", cases, runs, total[0],
               total[1]);
        printf("float32 on rank 0: worst deviation %.2g of an array's largest magnitude (arrays above 1e-3), %.2g absolute\n",
               worst32_rel, worst32_abs);
    }
    rc = clipmpi_finalize();
    int fin;
    MPI_Finalized(&fin);
    if (rc != CLIPMPI_OK) fprintf(stderr, "rank %d: clipmpi_finalize: %s\n", rank, clipmpi_last_error()), total[1]++;
    if (lib_init && !fin) fprintf(stderr, "rank %d: the library initialised MPI but did not finalise it\n", rank), total[1]++;
    if (!lib_init) {
        if (fin) {
            fprintf(stderr, "rank %d: clipmpi_finalize finalised the caller's MPI\n", rank);
            return 1;
        }
        int after = 1, sum;
        MPI_Allreduce(&after, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD); /* the caller's MPI still works */
        if (sum != size) total[1]++;
        MPI_Finalize();
    }
    if (clipmpi_init() != CLIPMPI_ERR_USAGE) fprintf(stderr, "rank %d: clipmpi_init after clipmpi_finalize: %s\n", rank, clipmpi_last_error()), total[1]++;
    if (rank == 0) printf("%s\n", total[1] == 0 ? "PASS" : "FAIL");
    return total[1] == 0 ? 0 : 1;
}
