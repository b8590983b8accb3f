/* Elementwise activations (forward and backward) and softmax along the last axis.
 *
 * Elementwise kernels split [0, n) into fixed chunks; each element is computed on its own,
 * so results never depend on the thread count. Softmax is row-parallel; each row's sum runs
 * in order, in double.
 *
 * A template: this file includes itself once per element type.
 */
#ifndef REAL

#include <math.h>
#include "runtime.h"
#include "fastmath.h"

#define REAL float
#define SFX(name) name##_f32
#define TANH fastnn_tanhf
#define EXP fastnn_expf
#define ERFC erfcf
#include "activation.c"
#undef REAL
#undef SFX
#undef TANH
#undef EXP
#undef ERFC

#define REAL double
#define SFX(name) name##_f64
#define TANH tanh
#define EXP exp
#define ERFC erfc
#include "activation.c"

#else /* template body */

#include "act_template.h"

#define SQRT1_2 0.70710678118654752440    /* 1 / sqrt(2) */
#define SQRT2_PI 0.79788456080286535588   /* sqrt(2 / pi) */
#define INV_SQRT_2PI 0.39894228040143267794 /* 1 / sqrt(2 pi) */
#define GELU_C 0.044715

/* out[0:n] <- act(x[0:n]) for one chunk */
FASTNN_HOT
static void SFX(activation_chunk)(REAL *restrict out, const REAL *restrict x, int act,
                                  REAL slope, int64_t n)
{
    switch (act) {
    case FASTNN_ACT_LEAKY_RELU:
        for (int64_t i = 0; i < n; i++) out[i] = x[i] > 0 ? x[i] : slope * x[i];
        break;
    case FASTNN_ACT_GELU:
        /* x * Phi(x) with Phi = erfc(-x / sqrt 2) / 2: no cancellation for x << 0 */
        for (int64_t i = 0; i < n; i++) out[i] = (REAL)0.5 * x[i] * ERFC(-x[i] * (REAL)SQRT1_2);
        break;
    case FASTNN_ACT_GELU_TANH:
        /* x * (1 + tanh(u)) / 2 = x * sigmoid(2u): no cancellation for x << 0 */
        for (int64_t i = 0; i < n; i++) {
            REAL v = x[i];
            REAL u = (REAL)SQRT2_PI * (v + (REAL)GELU_C * v * v * v);
            out[i] = v / (1 + EXP(-2 * u));
        }
        break;
    default:
        for (int64_t i = 0; i < n; i++) out[i] = x[i];
        SFX(act_inplace)(out, act, n);
        break;
    }
}

/* dx[0:n] <- dout * act'(x), from the input x and the output y = act(x) */
FASTNN_HOT
static void SFX(activation_backward_chunk)(REAL *restrict dx, const REAL *restrict dout,
                                           const REAL *restrict x, const REAL *restrict y,
                                           int act, REAL slope, int64_t n)
{
    switch (act) {
    case FASTNN_ACT_LEAKY_RELU:
        for (int64_t i = 0; i < n; i++) {
            REAL g = dout[i];
            dx[i] = x[i] > 0 ? g : slope * g; /* at 0, slope: as torch */
        }
        break;
    case FASTNN_ACT_GELU:
        for (int64_t i = 0; i < n; i++) {
            REAL v = x[i];
            REAL cdf = (REAL)0.5 * ERFC(-v * (REAL)SQRT1_2);
            REAL pdf = (REAL)INV_SQRT_2PI * EXP((REAL)-0.5 * v * v);
            dx[i] = dout[i] * (cdf + v * pdf);
        }
        break;
    case FASTNN_ACT_GELU_TANH:
        /* with s = sigmoid(2u): d/dx [x s] = s + 2 x s (1 - s) u' */
        for (int64_t i = 0; i < n; i++) {
            REAL v = x[i];
            REAL u = (REAL)SQRT2_PI * (v + (REAL)GELU_C * v * v * v);
            REAL du = (REAL)SQRT2_PI * (1 + 3 * (REAL)GELU_C * v * v);
            REAL sg = 1 / (1 + EXP(-2 * u));
            dx[i] = dout[i] * (sg + 2 * v * sg * (1 - sg) * du);
        }
        break;
    default:
        SFX(act_backward)(dx, dout, y, act, n);
        break;
    }
}

void SFX(activation_forward)(REAL *out, const REAL *x, int act, double slope, int64_t n)
{
    FASTNN_FOR_CHUNKS(n, SFX(activation_chunk)(out + i0, x + i0, act, (REAL)slope, i1 - i0););
}

void SFX(activation_backward)(REAL *dx, const REAL *dout, const REAL *x, const REAL *y,
                              int act, double slope, int64_t n)
{
    FASTNN_FOR_CHUNKS(n, SFX(activation_backward_chunk)(dx + i0, dout + i0, x ? x + i0 : 0,
                                                        y ? y + i0 : 0, act, (REAL)slope,
                                                        i1 - i0););
}

FASTNN_HOT
static void SFX(softmax_rows)(REAL *out, const REAL *x, int64_t r0, int64_t r1, int64_t K)
{
    for (int64_t r = r0; r < r1; r++) SFX(softmax_row)(out + r * K, x + r * K, K);
}

void SFX(softmax_forward)(REAL *out, const REAL *x, int64_t N, int64_t K)
{
    FASTNN_PARALLEL_BLOCKS(fastnn_team_for_elements, N * K, fastnn_num_blocks(N, 1), N, blk, r0, r1,
                           SFX(softmax_rows)(out, x, r0, r1, K););
}

/* rows [r0, r1): dx = y * (dout - sum(dout * y)) */
FASTNN_HOT
static void SFX(softmax_backward_rows)(REAL *dx, const REAL *dout, const REAL *y, int64_t r0,
                                       int64_t r1, int64_t K)
{
    for (int64_t r = r0; r < r1; r++) {
        const REAL *restrict gr = dout + r * K;
        const REAL *restrict yr = y + r * K;
        REAL *restrict dr = dx + r * K;
        double dot = 0;
        for (int64_t j = 0; j < K; j++) dot += (double)gr[j] * yr[j];
        for (int64_t j = 0; j < K; j++) dr[j] = (REAL)(yr[j] * ((double)gr[j] - dot));
    }
}

void SFX(softmax_backward)(REAL *dx, const REAL *dout, const REAL *y, int64_t N, int64_t K)
{
    FASTNN_PARALLEL_BLOCKS(fastnn_team_for_elements, N * K,
                           fastnn_num_blocks(N, 1), N, blk, r0, r1,
                           SFX(softmax_backward_rows)(dx, dout, y, r0, r1, K););
}

#endif
