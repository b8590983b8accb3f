/* Linear: out = act(x @ w.T + b), forward and backward.
 *
 * The matrix products are the BLAS gemm (scipy's OpenBLAS), called on one thread per block
 * inside our own OpenMP team; bias and activation are applied to each block right after its
 * gemm, while it is still in cache.
 *
 * This file is a template: it includes itself once per element type (float, double).
 */
#ifndef REAL

#include <math.h>
#include "runtime.h"
#include "fastmath.h"

/* Rows (or output features) per block at least: smaller blocks waste time re-packing
 * the other operand inside gemm. */
#define LINEAR_MIN_BLOCK 32
/* Column sums are accumulated this many features at a time, in a stack buffer. */
#define COLSUM_CHUNK 256

static int imax1(int64_t v) { return v < 1 ? 1 : (int)v; }

/* Blocks of n rows or features for a product of `work` multiply-adds: one below the size
 * that runs on one thread anyway (every extra block is a BLAS call and a re-pack), else up to
 * one per processor. A function of the shape alone, so results do not depend on the thread
 * count. */
static int64_t linear_blocks(int64_t n, double work)
{
    return work < FASTNN_PARALLEL_MIN_WORK ? 1 : fastnn_num_blocks(n, LINEAR_MIN_BLOCK);
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

/* c (m, n col-major, ldc) = alpha * op(a) @ op(b) + beta * c, sizes as in BLAS. */
static void SFX(gemm)(char ta, char tb, int64_t m, int64_t n, int64_t k, REAL alpha,
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
static void SFX(gemm_part)(char ta, char tb, int64_t m, int64_t n, int64_t k, const REAL *a,
                           int64_t lda, const REAL *b, int64_t ldb, REAL beta, REAL *c,
                           int64_t ldc, int split_m, int64_t i0, int64_t i1)
{
    if (split_m)
        SFX(gemm)(ta, tb, i1 - i0, n, k, 1, a + (ta == 'N' ? i0 : i0 * lda), lda, b, ldb,
                  beta, c + i0, ldc);
    else
        SFX(gemm)(ta, tb, m, i1 - i0, k, 1, a, lda, b + (tb == 'N' ? i0 * ldb : i0), ldb,
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

/* db[f0:f1] += sum over the B rows of dz[:, f0:f1], rows added in order. */
static void SFX(colsum_add)(REAL *db, const REAL *dz, int64_t f0, int64_t f1, int64_t B,
                            int64_t OC)
{
    ACC acc[COLSUM_CHUNK];
    for (int64_t c0 = f0; c0 < f1; c0 += COLSUM_CHUNK) {
        int64_t n = f1 - c0 < COLSUM_CHUNK ? f1 - c0 : COLSUM_CHUNK;
        for (int64_t j = 0; j < n; j++) acc[j] = 0;
        for (int64_t i = 0; i < B; i++) {
            const REAL *row = dz + i * OC + c0;
            for (int64_t j = 0; j < n; j++) acc[j] += row[j];
        }
        for (int64_t j = 0; j < n; j++) db[c0 + j] += (REAL)acc[j];
    }
}

void SFX(linear_forward)(REAL *out, const REAL *x, const REAL *w, const REAL *b, int act,
                         int64_t B, int64_t C, int64_t OC)
{
    if (B == 0 || OC == 0) return;
    /* column-major view: out.T (OC, B) = w (C, OC).T @ x.T (C, B). Split the rows of x
     * (each block re-packs w) or the features (each block re-packs x), whichever is larger. */
    int split_features = OC > B;
    int64_t n = split_features ? OC : B;
    int64_t nblocks = linear_blocks(n, (double)B * C * OC);
    int nthreads = fastnn_threads_for((double)B * C * OC);
    int blas = fastnn_blas_serial_begin();
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t blk = 0; blk < nblocks; blk++) {
        int64_t i0, i1;
        fastnn_block_range(blk, nblocks, n, &i0, &i1);
        SFX(gemm_part)('T', 'N', OC, B, C, w, C, x, C, 0, out, OC, split_features, i0, i1);
        if (split_features)
            SFX(bias_act)(out, b, act, 0, B, i0, i1, OC);
        else
            SFX(bias_act)(out, b, act, i0, i1, 0, OC, OC);
    }
    fastnn_blas_serial_end(blas);
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
    /* dx.T (C, B) = w (C, OC) @ dz.T (OC, B): split rows (re-pack w) or in-features
     * (re-pack dz). dw.T (C, OC) += x.T (C, B) @ dz (B, OC): split out-features (re-pack x)
     * or in-features (re-pack dz). */
    int dx_split_in = C > B;
    int64_t dx_n = dx_split_in ? C : B;
    int dw_split_in = C > OC;
    int64_t dw_n = dw_split_in ? C : OC;
    double madds = (double)B * C * OC;
    int64_t row_blocks = linear_blocks(B, madds);
    int64_t dx_blocks = linear_blocks(dx_n, madds);
    int64_t dw_blocks = linear_blocks(dw_n, madds);
    int64_t db_blocks = linear_blocks(OC, madds);
    int nthreads = fastnn_threads_for(madds);
    int blas = fastnn_blas_serial_begin();
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        if (act != FASTNN_ACT_NONE) {
            #pragma omp for schedule(static)
            for (int64_t blk = 0; blk < row_blocks; blk++) {
                int64_t r0, r1;
                fastnn_block_range(blk, row_blocks, B, &r0, &r1);
                SFX(act_backward)(work + r0 * OC, dout + r0 * OC, out + r0 * OC, act,
                                  (r1 - r0) * OC);
            }
        }
        /* dz is complete (barrier above); the three outputs below are disjoint: no waits */
        if (dx) {
            #pragma omp for schedule(static) nowait
            for (int64_t blk = 0; blk < dx_blocks; blk++) {
                int64_t i0, i1;
                fastnn_block_range(blk, dx_blocks, dx_n, &i0, &i1);
                SFX(gemm_part)('N', 'N', C, B, OC, w, C, dz, OC, 0, dx, C, dx_split_in, i0, i1);
            }
        }
        if (dw) {
            #pragma omp for schedule(static) nowait
            for (int64_t blk = 0; blk < dw_blocks; blk++) {
                int64_t i0, i1;
                fastnn_block_range(blk, dw_blocks, dw_n, &i0, &i1);
                SFX(gemm_part)('N', 'T', C, OC, B, x, C, dz, OC, 1, dw, C, dw_split_in, i0, i1);
            }
        }
        if (db) {
            #pragma omp for schedule(static) nowait
            for (int64_t blk = 0; blk < db_blocks; blk++) {
                int64_t f0, f1;
                fastnn_block_range(blk, db_blocks, OC, &f0, &f1);
                SFX(colsum_add)(db, dz, f0, f1, B, OC);
            }
        }
    }
    fastnn_blas_serial_end(blas);
}

#endif
