/* BatchNorm1d over x (B, C): statistics per channel over the B rows.
 *
 * Channel-parallel: each block of channels belongs to one thread, and every per-channel sum
 * runs over the rows in the same fixed order, so results do not depend on the thread count.
 * Within a block, channels are handled a segment at a time (per-channel accumulators on the
 * stack) and rows a chunk at a time: the statistics take the chunk's mean, then the squared
 * deviations from it while the chunk is still in cache, and combine chunks exactly (Chan et
 * al.), so the variance never suffers E[x^2] - E[x]^2 cancellation and reads x once.
 *
 * A template: this file includes itself once per element type. Accumulators are double.
 */
#ifndef REAL

#include <math.h>
#include "runtime.h"
#include "fastmath.h"

#define BN_MIN_BLOCK 16 /* channels per block at least */
#define BN_SEG 1024     /* channels per segment: accumulators on the stack, rows long enough to stream */
#define BN_CHUNK 64     /* rows per statistics chunk */

#define REAL float
#define SFX(name) name##_f32
#define TANH fastnn_tanhf
#define EXP fastnn_expf
#include "batchnorm.c"
#undef REAL
#undef SFX
#undef TANH
#undef EXP

#define REAL double
#define SFX(name) name##_f64
#define TANH tanh
#define EXP exp
#include "batchnorm.c"

#else /* template body */

#include "act_template.h"

/* mean[0:n], m2[0:n] <- mean and sum of squared deviations of x[:, c0:c0+n] (B rows).
 * Within a chunk the sums are in REAL (short: at most BN_CHUNK terms, and vectorised at full
 * width) over x minus the channel's first value, so that a large common offset cancels
 * exactly before anything is summed; chunks are combined in double. */
FASTNN_HOT
static void SFX(segment_stats)(double *mean, double *m2, const REAL *x, int64_t B, int64_t C,
                               int64_t c0, int64_t n)
{
    REAL shift[BN_SEG], cmean[BN_SEG], cm2[BN_SEG];
    int64_t count = 0;
    for (int64_t j = 0; j < n; j++) {
        shift[j] = x[c0 + j];
        mean[j] = m2[j] = 0; /* mean of x - shift until the end */
    }
    for (int64_t r0 = 0; r0 < B; r0 += BN_CHUNK) {
        int64_t r1 = r0 + BN_CHUNK < B ? r0 + BN_CHUNK : B;
        REAL rows = (REAL)(r1 - r0);
        for (int64_t j = 0; j < n; j++) cmean[j] = cm2[j] = 0;
        for (int64_t i = r0; i < r1; i++) {
            const REAL *restrict xr = x + i * C + c0;
            for (int64_t j = 0; j < n; j++) cmean[j] += xr[j] - shift[j];
        }
        for (int64_t j = 0; j < n; j++) cmean[j] /= rows;
        for (int64_t i = r0; i < r1; i++) {
            const REAL *restrict xr = x + i * C + c0;
            for (int64_t j = 0; j < n; j++) {
                REAL d = (xr[j] - shift[j]) - cmean[j];
                cm2[j] += d * d;
            }
        }
        /* combine (count, mean, m2) with the chunk's (rows, cmean, cm2) */
        double total = (double)count + rows;
        double w_chunk = rows / total, w_cross = (double)count * rows / total;
        for (int64_t j = 0; j < n; j++) {
            double d = cmean[j] - mean[j];
            mean[j] += d * w_chunk;
            m2[j] += cm2[j] + d * d * w_cross;
        }
        count += r1 - r0;
    }
    for (int64_t j = 0; j < n; j++) mean[j] += shift[j];
}

/* out[:, c0:c0+n] <- act((x - mean) * scale + shift), row by row. Centred first: with
 * x * scale + (shift - mean * scale) a channel far from zero would cancel in float32 (a
 * constant channel of 1e4 came out 0.22 off beta). */
FASTNN_HOT
static void SFX(normalize_segment)(REAL *out, const REAL *x, const REAL *mean,
                                   const REAL *scale, const REAL *shift, int act, int64_t B,
                                   int64_t C, int64_t c0, int64_t n)
{
    for (int64_t i = 0; i < B; i++) {
        const REAL *restrict xr = x + i * C + c0;
        REAL *restrict yr = out + i * C + c0;
        for (int64_t j = 0; j < n; j++) yr[j] = (xr[j] - mean[j]) * scale[j] + shift[j];
        SFX(act_inplace)(yr, act, n);
    }
}

/* Row i, channels [c0, c0 + n) of dz = dout * act'(out): dout itself without an activation,
 * else computed into buf. */
static inline const REAL *SFX(dz_row)(REAL *buf, const REAL *dout, const REAL *out, int act,
                                      int64_t i, int64_t C, int64_t c0, int64_t n)
{
    if (act == FASTNN_ACT_NONE) return dout + i * C + c0;
    SFX(act_backward)(buf, dout + i * C + c0, out + i * C + c0, act, n);
    return buf;
}

/* sum_dz[0:n] <- sum of dz over rows, sum_dz_xc[0:n] <- sum of dz * (x - mean), for the
 * channels [c0, c0 + n); partial sums over a chunk of rows in REAL, chunks added in double */
FASTNN_HOT
static void SFX(segment_grad_sums)(double *sum_dz, double *sum_dz_xc, const REAL *dout,
                                   const REAL *out, const REAL *x, const REAL *mu, int act,
                                   int64_t B, int64_t C, int64_t c0, int64_t n)
{
    REAL part_dz[BN_SEG], part_dz_xc[BN_SEG], buf[BN_SEG];
    for (int64_t j = 0; j < n; j++) sum_dz[j] = sum_dz_xc[j] = 0;
    for (int64_t r0 = 0; r0 < B; r0 += BN_CHUNK) {
        int64_t r1 = r0 + BN_CHUNK < B ? r0 + BN_CHUNK : B;
        for (int64_t j = 0; j < n; j++) part_dz[j] = part_dz_xc[j] = 0;
        for (int64_t i = r0; i < r1; i++) {
            const REAL *restrict xr = x + i * C + c0;
            const REAL *restrict dz = SFX(dz_row)(buf, dout, out, act, i, C, c0, n);
            for (int64_t j = 0; j < n; j++) {
                part_dz[j] += dz[j];
                part_dz_xc[j] += dz[j] * (xr[j] - mu[j]);
            }
        }
        for (int64_t j = 0; j < n; j++) {
            sum_dz[j] += part_dz[j];
            sum_dz_xc[j] += part_dz_xc[j];
        }
    }
}

/* dx[:, c0:c0+n] <- a * dz + b * (x - mean) + d in training; a * dz in evaluation, where x
 * is not read (so a NaN in x stays out of dx, as in PyTorch) */
FASTNN_HOT
static void SFX(segment_dx)(REAL *dx, const REAL *dout, const REAL *out, const REAL *x,
                            const REAL *mu, const REAL *a, const REAL *b, const REAL *d,
                            int act, int train, int64_t B, int64_t C, int64_t c0, int64_t n)
{
    REAL buf[BN_SEG];
    for (int64_t i = 0; i < B; i++) {
        const REAL *restrict xr = x + i * C + c0;
        const REAL *restrict dz = SFX(dz_row)(buf, dout, out, act, i, C, c0, n);
        REAL *restrict dxr = dx + i * C + c0;
        if (train)
            for (int64_t j = 0; j < n; j++)
                dxr[j] = a[j] * dz[j] + b[j] * (xr[j] - mu[j]) + d[j];
        else
            for (int64_t j = 0; j < n; j++) dxr[j] = a[j] * dz[j];
    }
}

/* The forward of both modes. Training (train != 0, B > 1, checked by the caller): batch
 * statistics into save_mean and save_invstd, running statistics updated when given. Evaluation: the running statistics,
 * copied into save_mean and save_invstd for the backward. */
FASTNN_HOT
static void SFX(batchnorm_forward_channels)(REAL *out, REAL *save_mean, REAL *save_invstd,
                                            REAL *running_mean, REAL *running_var,
                                            const REAL *x, const REAL *gamma, const REAL *beta,
                                            double eps, double momentum, int act, int train,
                                            int unbiased, int64_t B, int64_t C, int64_t c0,
                                            int64_t c1)
{
    for (int64_t s0 = c0; s0 < c1; s0 += BN_SEG) {
        int64_t n = c1 - s0 < BN_SEG ? c1 - s0 : BN_SEG;
        double mean[BN_SEG], var[BN_SEG];
        REAL center[BN_SEG], scale[BN_SEG], shift[BN_SEG];
        if (train) {
            SFX(segment_stats)(mean, var, x, B, C, s0, n);
            for (int64_t j = 0; j < n; j++) var[j] /= (double)B; /* biased; B > 1 */
        } else {
            for (int64_t j = 0; j < n; j++) {
                mean[j] = running_mean[s0 + j];
                var[j] = running_var[s0 + j];
            }
        }
        /* one simple loop per quantity, each vectorised (the per-channel work is a tenth
         * of a small batch's forward) */
        double invstd[BN_SEG];
        for (int64_t j = 0; j < n; j++) /* a negative variance gives NaN, as in PyTorch */
            invstd[j] = 1 / sqrt(var[j] + eps);
        for (int64_t j = 0; j < n; j++) {
            center[j] = save_mean[s0 + j] = (REAL)mean[j];
            save_invstd[s0 + j] = (REAL)invstd[j];
        }
        if (gamma)
            for (int64_t j = 0; j < n; j++) scale[j] = (REAL)(gamma[s0 + j] * invstd[j]);
        else
            for (int64_t j = 0; j < n; j++) scale[j] = (REAL)invstd[j];
        for (int64_t j = 0; j < n; j++) shift[j] = beta ? beta[s0 + j] : 0;
        if (train && running_mean) {
            for (int64_t j = 0; j < n; j++) {
                int64_t c = s0 + j;
                running_mean[c] = (REAL)((1 - momentum) * running_mean[c] + momentum * mean[j]);
                /* the unbiased variance, as PyTorch keeps, or the biased one, the textbook's */
                double stored = unbiased ? var[j] * (double)B / (double)(B - 1) : var[j];
                running_var[c] = (REAL)((1 - momentum) * running_var[c] + momentum * stored);
            }
        }
        SFX(normalize_segment)(out, x, center, scale, shift, act, B, C, s0, n);
    }
}

static void SFX(batchnorm_forward)(REAL *out, REAL *save_mean, REAL *save_invstd,
                                   REAL *running_mean, REAL *running_var, const REAL *x,
                                   const REAL *gamma, const REAL *beta, double eps,
                                   double momentum, int act, int train, int unbiased,
                                   int64_t B, int64_t C)
{
    FASTNN_PARALLEL_BLOCKS(fastnn_team_for_elements, B * C,
                           fastnn_num_blocks(C, BN_MIN_BLOCK), C, blk, c0, c1,
                           SFX(batchnorm_forward_channels)(out, save_mean, save_invstd,
                                                           running_mean, running_var, x, gamma,
                                                           beta, eps, momentum, act, train,
                                                           unbiased, B, C, c0, c1););
}

void SFX(batchnorm_forward_train)(REAL *out, REAL *save_mean, REAL *save_invstd,
                                  REAL *running_mean, REAL *running_var, const REAL *x,
                                  const REAL *gamma, const REAL *beta, double eps,
                                  double momentum, int act, int unbiased, int64_t B,
                                  int64_t C)
{
    SFX(batchnorm_forward)(out, save_mean, save_invstd, running_mean, running_var, x, gamma,
                           beta, eps, momentum, act, 1, unbiased, B, C);
}

void SFX(batchnorm_forward_eval)(REAL *out, REAL *save_mean, REAL *save_invstd,
                                 const REAL *running_mean, const REAL *running_var,
                                 const REAL *x, const REAL *gamma, const REAL *beta, double eps,
                                 int act, int64_t B, int64_t C)
{
    /* the running statistics are only read in evaluation mode */
    SFX(batchnorm_forward)(out, save_mean, save_invstd, (REAL *)running_mean,
                           (REAL *)running_var, x, gamma, beta, eps, 0, act, 0, 0, B, C);
}

FASTNN_HOT
static void SFX(batchnorm_backward_channels)(REAL *dx, REAL *dgamma, REAL *dbeta,
                                             const REAL *dout, const REAL *x, const REAL *out,
                                             const REAL *mean, const REAL *invstd,
                                             const REAL *gamma, int act, int train, int64_t B,
                                             int64_t C, int64_t c0, int64_t c1)
{
    for (int64_t s0 = c0; s0 < c1; s0 += BN_SEG) {
        int64_t n = c1 - s0 < BN_SEG ? c1 - s0 : BN_SEG;
        double sum_dz[BN_SEG], sum_dz_xc[BN_SEG];
        REAL a[BN_SEG], b[BN_SEG], d[BN_SEG];
        SFX(segment_grad_sums)(sum_dz, sum_dz_xc, dout, out, x, mean + s0, act, B, C, s0, n);
        /* dx = k * (dz - mean(dz) - xhat * mean(dz * xhat)) with k = gamma * invstd,
         * xhat = (x - mean) * invstd; in evaluation mode the statistics are constants:
         * dx = k * dz. Written as dx = a * dz + b * (x - mean) + d. */
        int batch = train && B > 0;
        for (int64_t j = 0; j < n; j++) {
            int64_t c = s0 + j;
            double is = invstd[c], k = (gamma ? gamma[c] : 1) * is;
            double dg = sum_dz_xc[j] * is; /* sum(dz * xhat) */
            a[j] = (REAL)k;
            b[j] = batch ? (REAL)(-k * is * dg / (double)B) : 0;
            d[j] = batch ? (REAL)(-k * sum_dz[j] / (double)B) : 0;
        }
        if (dgamma)
            for (int64_t j = 0; j < n; j++) dgamma[s0 + j] += (REAL)(sum_dz_xc[j] * invstd[s0 + j]);
        if (dbeta)
            for (int64_t j = 0; j < n; j++) dbeta[s0 + j] += (REAL)sum_dz[j];
        if (dx)
            SFX(segment_dx)(dx, dout, out, x, mean + s0, a, b, d, act, train, B, C, s0, n);
    }
}

void SFX(batchnorm_backward)(REAL *dx, REAL *dgamma, REAL *dbeta, const REAL *dout,
                             const REAL *x, const REAL *out, const REAL *mean,
                             const REAL *invstd, const REAL *gamma, int act, int train,
                             int64_t B, int64_t C)
{
    FASTNN_PARALLEL_BLOCKS(fastnn_team_for_elements, B * C,
                           fastnn_num_blocks(C, BN_MIN_BLOCK), C, blk, c0, c1,
                           SFX(batchnorm_backward_channels)(dx, dgamma, dbeta, dout, x, out,
                                                            mean, invstd, gamma, act, train, B,
                                                            C, c0, c1););
}

#endif
