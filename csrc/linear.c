/* Linear: out = act(x @ w.T + b), forward and backward.
 *
 * The three products run on fastnn's own core (gemm.c), with the bias and ReLU fused into the
 * micro-kernel's store and tanh/sigmoid applied to each tile while it is in L1:
 *   forward   out (B, OC)  = x (B, C) @ w.T        w.T packed panel by panel, x read in place
 *   backward  dx (B, C)    = dz (B, OC) @ w        both read in place
 *             dw (OC, C)  += dz.T @ x (B, C)       both read in place (dz.T by columns)
 * where dz = dout * act'(out) and db += column sums of dz come from one pass over dout. The
 * blocks of dx and dw are handed out together, dynamically, in one parallel region.
 * Where the CPU has no FMA micro-kernel (FASTNN_ISA_BLAS), the products are scipy's BLAS gemm,
 * called on one thread per block inside our own OpenMP team.
 *
 * This file is a template: it includes itself once per element type (float, double).
 */
#ifndef REAL

#include <math.h>
#include "gemm.h"
#include "runtime.h"
#include "fastmath.h"

/* BLAS path: rows (or output features) per block at least; smaller blocks waste time
 * re-packing the other operand inside gemm. */
#define LINEAR_MIN_BLOCK 32
/* Column sums are accumulated this many features at a time, in a stack buffer. */
#define COLSUM_CHUNK 256

static int imax1(int64_t v) { return v < 1 ? 1 : (int)v; }

/* BLAS path: blocks of n rows or features for a product of `work` multiply-adds, one below
 * the size that runs on one thread anyway, else up to one per processor. A function of the
 * shape alone, so results do not depend on the thread count. */
static int64_t linear_blocks(int64_t n, double work)
{
    return work < FASTNN_PARALLEL_MIN_WORK ? 1 : fastnn_num_blocks(n, LINEAR_MIN_BLOCK);
}

/* BLAS path: the blocks of a backward product that splits the larger of C and n (n = B for
 * dx, OC for dw); 0 when that gradient is not wanted. */
static int64_t blas_backward_blocks(int has_grad, int64_t n, int64_t B, int64_t C, int64_t OC)
{
    return has_grad ? linear_blocks(C > n ? C : n, (double)B * C * OC) : 0;
}


#define REAL float
#define ACC double
#define SFX(name) name##_f32
#define GEMM fastnn_sgemm
#define TANH fastnn_tanhf
#define EXP fastnn_expf
#include "linear.c"
#undef REAL
#undef ACC
#undef SFX
#undef GEMM
#undef TANH
#undef EXP

#define REAL double
#define ACC double
#define SFX(name) name##_f64
#define GEMM fastnn_dgemm
#define TANH tanh
#define EXP exp
#include "linear.c"

#else /* template body, instantiated above */

#include "act_template.h"

/* ---- BLAS path ---- */

/* c (m, n col-major, ldc) = alpha * op(a) @ op(b) + beta * c, sizes as in BLAS. */
static void SFX(blas_gemm)(char ta, char tb, int64_t m, int64_t n, int64_t k, REAL alpha,
                           const REAL *a, int64_t lda, const REAL *b, int64_t ldb, REAL beta,
                           REAL *c, int64_t ldc)
{
    int im = (int)m, in = (int)n, ik = (int)k;
    int ilda = imax1(lda), ildb = imax1(ldb), ildc = imax1(ldc);
    if (m == 0 || n == 0) return;
    GEMM(&ta, &tb, &im, &in, &ik, &alpha, (REAL *)a, &ilda, (REAL *)b, &ildb, &beta, c, &ildc);
}

/* The part [i0, i1) of the rows (split_m) or columns (!split_m) of the gemm above. Each block
 * re-packs the operand that is not split, so the caller splits the dimension whose other
 * operand is the smaller. */
static void SFX(blas_gemm_part)(char ta, char tb, int64_t m, int64_t n, int64_t k,
                                const REAL *a, int64_t lda, const REAL *b, int64_t ldb,
                                REAL beta, REAL *c, int64_t ldc, int split_m, int64_t i0,
                                int64_t i1)
{
    if (split_m)
        SFX(blas_gemm)(ta, tb, i1 - i0, n, k, 1, a + (ta == 'N' ? i0 : i0 * lda), lda, b, ldb,
                       beta, c + i0, ldc);
    else
        SFX(blas_gemm)(ta, tb, m, i1 - i0, k, 1, a, lda, b + (tb == 'N' ? i0 * ldb : i0), ldb,
                       beta, c + i0 * ldc, ldc);
}

/* out[r0:r1, c0:c1] <- act(out + b), row segment by row segment while it is in L1 */
static void SFX(bias_act)(REAL *restrict out, const REAL *restrict b, int act, int64_t r0,
                          int64_t r1, int64_t c0, int64_t c1, int64_t OC)
{
    for (int64_t i = r0; i < r1; i++) {
        REAL *restrict o = out + i * OC + c0;
        if (b)
            for (int64_t j = 0; j < c1 - c0; j++) o[j] += b[c0 + j];
        SFX(act_inplace)(o, act, c1 - c0);
    }
}

static void SFX(linear_forward_blas)(REAL *out, const REAL *x, const REAL *w, const REAL *b,
                                     int act, int64_t B, int64_t C, int64_t OC)
{
    /* column-major view: out.T (OC, B) = w (C, OC).T @ x.T (C, B). Split the rows of x
     * (each block re-packs w) or the features (each block re-packs x), whichever is larger. */
    int split_features = OC > B;
    int64_t n = split_features ? OC : B;
    int64_t nblocks = linear_blocks(n, (double)B * C * OC);
    fastnn_blas_hold();
    FASTNN_PARALLEL_BLOCKS(fastnn_team_for, (double)B * C * OC, nblocks, n, blk, i0, i1, {
        SFX(blas_gemm_part)('T', 'N', OC, B, C, w, C, x, C, 0, out, OC, split_features, i0, i1);
        if (split_features)
            SFX(bias_act)(out, b, act, 0, B, i0, i1, OC);
        else
            SFX(bias_act)(out, b, act, i0, i1, 0, OC, OC);
    });
    fastnn_blas_release();
}

/* dx.T (C, B) = w (C, OC) @ dz.T (OC, B): split rows (re-pack w) or in-features (re-pack
 * dz). dw.T (C, OC) += x.T (C, B) @ dz (B, OC): split out-features (re-pack x) or
 * in-features (re-pack dz), in dx_blocks and dw_blocks blocks (blas_backward_blocks).
 * Called inside the parallel region; dz is complete. */
static void SFX(linear_backward_blas)(REAL *dx, REAL *dw, const REAL *dz, const REAL *x,
                                      const REAL *w, int64_t dx_blocks, int64_t dw_blocks,
                                      int64_t B, int64_t C, int64_t OC)
{
    int dx_split_in = C > B;
    int64_t dx_n = dx_split_in ? C : B;
    int dw_split_in = C > OC;
    int64_t dw_n = dw_split_in ? C : OC;
    #pragma omp for schedule(dynamic, 1) nowait
    for (int64_t t = 0; t < dx_blocks + dw_blocks; t++) {
        int64_t i0, i1;
        if (t < dx_blocks) {
            fastnn_block_range(t, dx_blocks, dx_n, &i0, &i1);
            SFX(blas_gemm_part)('N', 'N', C, B, OC, w, C, dz, OC, 0, dx, C, dx_split_in, i0, i1);
        } else {
            fastnn_block_range(t - dx_blocks, dw_blocks, dw_n, &i0, &i1);
            SFX(blas_gemm_part)('N', 'T', C, OC, B, x, C, dz, OC, 1, dw, C, dw_split_in, i0, i1);
        }
    }
}

/* ---- fastnn's core ---- */

/* Run every block of the planned jobs, taken dynamically by the threads of the enclosing
 * parallel region (or all on the calling thread outside one), no barrier after; scratch:
 * per_thread elements for each thread. */
static void SFX(run_gemm_blocks)(const SFX(gemm_job) *jobs, const int64_t *nblocks, int njobs,
                                 REAL *scratch, int64_t per_thread)
{
    int64_t total = 0;
    for (int j = 0; j < njobs; j++) total += nblocks[j];
    REAL *mine = scratch ? scratch + fastnn_thread_num() * per_thread : NULL;
    #pragma omp for schedule(dynamic, 1) nowait
    for (int64_t t = 0; t < total; t++) {
        int j = 0;
        int64_t blk = t;
        while (blk >= nblocks[j]) blk -= nblocks[j++];
        SFX(gemm_run_block)(&jobs[j], blk, mine);
    }
}

/* Plan the jobs on path `isa` (blocks into nblocks); returns scratch for as many threads as
 * a team may have (per_thread elements each), or NULL: none needed (*ok = 1) or none to be
 * had (*ok = 0). */
static REAL *SFX(plan_gemm_jobs)(SFX(gemm_job) *jobs, int64_t *nblocks, int njobs, int isa,
                                 int64_t *per_thread, int *ok)
{
    *per_thread = 0;
    for (int j = 0; j < njobs; j++) {
        jobs[j].isa = isa;
        nblocks[j] = SFX(gemm_plan)(&jobs[j]);
        int64_t size = SFX(gemm_scratch_size)(&jobs[j]);
        if (size > *per_thread) *per_thread = size;
    }
    if (*per_thread == 0) {
        *ok = 1;
        return NULL;
    }
    size_t threads = (size_t)fastnn_get_num_threads();
    REAL *scratch = fastnn_scratch(threads * *per_thread * sizeof(REAL));
    *ok = scratch != NULL;
    return scratch;
}

/* dz[:, f0:f1] = dout * act'(out) (unless act is NONE: dz is dout) and db[f0:f1] += its
 * column sums, rows added in order. */
FASTNN_HOT
static void SFX(dz_and_bias_grad)(REAL *dz, REAL *db, const REAL *dout, const REAL *out,
                                  int act, int64_t f0, int64_t f1, int64_t B, int64_t OC)
{
    ACC acc[COLSUM_CHUNK];
    int64_t n = f1 - f0;
    for (int64_t j = 0; j < n; j++) acc[j] = 0;
    for (int64_t i = 0; i < B; i++) {
        const REAL *row = dout + i * OC + f0;
        if (act != FASTNN_ACT_NONE) {
            SFX(act_backward)(dz + i * OC + f0, row, out + i * OC + f0, act, n);
            row = dz + i * OC + f0;
        }
        if (db)
            for (int64_t j = 0; j < n; j++) acc[j] += row[j];
    }
    if (db)
        for (int64_t j = 0; j < n; j++) db[f0 + j] += (REAL)acc[j];
}

void SFX(linear_forward)(REAL *out, const REAL *x, const REAL *w, const REAL *b, int act,
                         int64_t B, int64_t C, int64_t OC)
{
    if (B == 0 || OC == 0) return;
    SFX(gemm_job) job = {.c = out, .ldc = OC, .a = x, .rsa = C, .csa = 1, .b = w, .rsb = 1,
                         .csb = C, .M = B, .N = OC, .K = C, .bias = b, .act = act};
    int64_t nblocks, per_thread;
    int isa = fastnn_get_isa(), ok = isa != FASTNN_ISA_BLAS;
    REAL *scratch = ok ? SFX(plan_gemm_jobs)(&job, &nblocks, 1, isa, &per_thread, &ok) : NULL;
    if (!ok) {
        SFX(linear_forward_blas)(out, x, w, b, act, B, C, OC);
        return;
    }
    fastnn_team team;
    int nthreads = fastnn_team_for(&team, (double)B * C * OC, nblocks);
    if (nthreads == 1) { /* small products: no parallel region at all */
        SFX(run_gemm_blocks)(&job, &nblocks, 1, scratch, per_thread);
        return;
    }
    #pragma omp parallel num_threads(nthreads)
    {
        int64_t clock0 = fastnn_team_clock(&team);
        SFX(run_gemm_blocks)(&job, &nblocks, 1, scratch, per_thread);
        fastnn_team_done(&team, clock0);
    }
    fastnn_team_end(&team);
}

/* What each thread of the backward's team (or the lone caller) needs. */
typedef struct {
    REAL *dx, *dw, *db, *work;
    const REAL *dout, *dz, *x, *w, *out;
    int act;
    int64_t B, C, OC, dz_chunks; /* dz_chunks: of COLSUM_CHUNK features (0: no dz pass) */
    SFX(gemm_job) jobs[2]; /* dx and dw, on fastnn's core */
    int64_t nblocks[2];
    int njobs, core;       /* core: the jobs run on fastnn's core, else on the BLAS */
    REAL *scratch;
    int64_t per_thread;
} SFX(backward_work);

/* dz and db, then (dz complete) the disjoint dx and dw; no barrier after. The wait for dz is
 * left out of the team's timed shares: a thread spinning there for a parked one would count
 * as busy. */
static void SFX(linear_backward_team)(const SFX(backward_work) *t, fastnn_team *team)
{
    int64_t clock0 = fastnn_team_clock(team);
    #pragma omp for schedule(static) nowait
    for (int64_t ch = 0; ch < t->dz_chunks; ch++) {
        int64_t f0 = ch * COLSUM_CHUNK;
        int64_t f1 = f0 + COLSUM_CHUNK < t->OC ? f0 + COLSUM_CHUNK : t->OC;
        SFX(dz_and_bias_grad)(t->work, t->db, t->dout, t->out, t->act, f0, f1, t->B, t->OC);
    }
    fastnn_team_done(team, clock0);
    if (t->dz_chunks > 0) {
        #pragma omp barrier
    }
    clock0 = fastnn_team_clock(team);
    if (t->core)
        SFX(run_gemm_blocks)(t->jobs, t->nblocks, t->njobs, t->scratch, t->per_thread);
    else
        SFX(linear_backward_blas)(t->dx, t->dw, t->dz, t->x, t->w, t->nblocks[0], t->nblocks[1],
                                  t->B, t->C, t->OC);
    fastnn_team_done(team, clock0);
}

void SFX(linear_backward)(REAL *dx, REAL *dw, REAL *db, REAL *work, const REAL *dout,
                          const REAL *x, const REAL *w, const REAL *out, int act,
                          int64_t B, int64_t C, int64_t OC)
{
    if (B == 0 || OC == 0) {
        /* no rows, or no outputs: dx = 0, nothing to accumulate */
        if (dx)
            for (int64_t i = 0; i < B * C; i++) dx[i] = 0;
        return;
    }
    const REAL *dz = act == FASTNN_ACT_NONE ? dout : work;
    SFX(backward_work) t = {.dx = dx, .dw = dw, .db = db, .work = work, .dout = dout, .dz = dz,
                            .x = x, .w = w, .out = out, .act = act, .B = B, .C = C, .OC = OC};
    if (act != FASTNN_ACT_NONE || db) t.dz_chunks = (OC + COLSUM_CHUNK - 1) / COLSUM_CHUNK;
    if (dx)
        t.jobs[t.njobs++] = (SFX(gemm_job)){.c = dx, .ldc = C, .a = dz, .rsa = OC, .csa = 1,
                                            .b = w, .rsb = C, .csb = 1, .M = B, .N = C, .K = OC};
    if (dw)
        t.jobs[t.njobs++] = (SFX(gemm_job)){.c = dw, .ldc = C, .a = dz, .rsa = 1, .csa = OC,
                                            .b = x, .rsb = C, .csb = 1, .M = OC, .N = C,
                                            .K = B, .accumulate = 1};
    int isa = fastnn_get_isa();
    t.core = isa != FASTNN_ISA_BLAS;
    if (t.core)
        t.scratch = SFX(plan_gemm_jobs)(t.jobs, t.nblocks, t.njobs, isa, &t.per_thread, &t.core);
    if (!t.core) {
        t.nblocks[0] = blas_backward_blocks(dx != NULL, B, B, C, OC);
        t.nblocks[1] = blas_backward_blocks(dw != NULL, OC, B, C, OC);
    }
    /* a team larger than both loops would have a thread idle whatever the load */
    int64_t most = t.nblocks[0] + t.nblocks[1];
    fastnn_team team;
    int nthreads = fastnn_team_for(&team, (double)B * C * OC,
                                   t.dz_chunks > most ? t.dz_chunks : most);
    if (!t.core) fastnn_blas_hold();
    if (nthreads == 1) { /* small products: no parallel region at all */
        SFX(linear_backward_team)(&t, &team);
    } else {
        #pragma omp parallel num_threads(nthreads)
        SFX(linear_backward_team)(&t, &team);
        fastnn_team_end(&team);
    }
    if (!t.core) fastnn_blas_release();
}

#endif
