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

/* Rows (or output features) per block at least: smaller blocks waste time re-packing
 * the other operand inside gemm. */
#define LINEAR_MIN_BLOCK 32
/* Column sums are accumulated this many features at a time, in a stack buffer. */
#define COLSUM_CHUNK 256

static int imax1(int64_t v) { return v < 1 ? 1 : (int)v; }

#define REAL float
#define ACC double
#define SFX(name) name##_f32
#define GEMM fastnn_sgemm
#define TANH tanhf
#define EXP expf
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

/* out rows [r0, r1) (.., OC) <- act(out + b); one pass, the switch hoisted out of the loops */
static void SFX(bias_act_rows)(REAL *restrict out, const REAL *restrict b, int act, int64_t r0,
                               int64_t r1, int64_t OC)
{
#define BIAS_ACT_LOOP(EXPR)                                            \
    for (int64_t i = r0; i < r1; i++) {                                \
        REAL *restrict o = out + i * OC;                               \
        for (int64_t j = 0; j < OC; j++) {                             \
            REAL v = b ? o[j] + b[j] : o[j];                           \
            o[j] = (EXPR);                                             \
        }                                                              \
    }
    switch (act) {
    /* written so that NaN passes through, as np.maximum(v, 0) does */
    case FASTNN_ACT_RELU: BIAS_ACT_LOOP(v < 0 ? 0 : v) break;
    case FASTNN_ACT_TANH: BIAS_ACT_LOOP(TANH(v)) break;
    case FASTNN_ACT_SIGMOID: BIAS_ACT_LOOP(1 / (1 + EXP(-v))) break;
    default: if (b) BIAS_ACT_LOOP(v) break;
    }
#undef BIAS_ACT_LOOP
}

/* dz rows [r0, r1) (.., OC) <- dout * act'(out), act' written in terms of the output */
static void SFX(act_backward_rows)(REAL *restrict dz, const REAL *restrict dout,
                                   const REAL *restrict out, int act, int64_t r0, int64_t r1,
                                   int64_t OC)
{
    int64_t n0 = r0 * OC, n1 = r1 * OC;
    switch (act) {
    case FASTNN_ACT_RELU:
        for (int64_t i = n0; i < n1; i++) dz[i] = out[i] > 0 ? dout[i] : 0;
        break;
    case FASTNN_ACT_TANH:
        for (int64_t i = n0; i < n1; i++) dz[i] = dout[i] * (1 - out[i] * out[i]);
        break;
    case FASTNN_ACT_SIGMOID:
        for (int64_t i = n0; i < n1; i++) dz[i] = dout[i] * out[i] * (1 - out[i]);
        break;
    default:
        for (int64_t i = n0; i < n1; i++) dz[i] = dout[i];
        break;
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
    int64_t nblocks = fastnn_num_blocks(B, LINEAR_MIN_BLOCK);
    int64_t rows = (B + nblocks - 1) / nblocks;
    int nthreads = fastnn_threads_for((double)B * C * OC);
    int blas = fastnn_blas_serial_begin();
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t blk = 0; blk < nblocks; blk++) {
        int64_t r0 = blk * rows, r1 = r0 + rows < B ? r0 + rows : B;
        /* column-major view: out.T (OC, r) = w (C, OC).T @ x.T (C, r) */
        SFX(gemm)('T', 'N', OC, r1 - r0, C, 1, w, C, x + r0 * C, C, 0, out + r0 * OC, OC);
        SFX(bias_act_rows)(out, b, act, r0, r1, OC);
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
    int64_t row_blocks = fastnn_num_blocks(B, LINEAR_MIN_BLOCK);
    int64_t rows = (B + row_blocks - 1) / row_blocks;
    int64_t feat_blocks = fastnn_num_blocks(OC, LINEAR_MIN_BLOCK);
    int64_t feats = (OC + feat_blocks - 1) / feat_blocks;
    int nthreads = fastnn_threads_for((double)B * C * OC);
    int blas = fastnn_blas_serial_begin();
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        /* rows own dz and dx */
        #pragma omp for schedule(static)
        for (int64_t blk = 0; blk < row_blocks; blk++) {
            int64_t r0 = blk * rows, r1 = r0 + rows < B ? r0 + rows : B;
            if (act != FASTNN_ACT_NONE)
                SFX(act_backward_rows)(work, dout, out, act, r0, r1, OC);
            /* dx.T (C, r) = w (C, OC) @ dz.T (OC, r) */
            if (dx)
                SFX(gemm)('N', 'N', C, r1 - r0, OC, 1, w, C, dz + r0 * OC, OC, 0,
                          dx + r0 * C, C);
        }
        /* output features own dw and db (after the barrier: dz is complete) */
        #pragma omp for schedule(static)
        for (int64_t blk = 0; blk < feat_blocks; blk++) {
            int64_t f0 = blk * feats, f1 = f0 + feats < OC ? f0 + feats : OC;
            /* dw.T (C, f) += x.T (C, B) @ dz (B, f) */
            if (dw)
                SFX(gemm)('N', 'T', C, f1 - f0, B, 1, x, C, dz + f0, OC, 1, dw + f0 * C, C);
            if (db)
                SFX(colsum_add)(db, dz, f0, f1, B, OC);
        }
    }
    fastnn_blas_serial_end(blas);
}

#endif
