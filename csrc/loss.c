/* Losses: softmax cross-entropy (fused, log-sum-exp) and mean squared error.
 * Row-parallel; per-row losses are written out and summed in row order, so the mean is the
 * same for any thread count. A template: includes itself once per element type. */
#ifndef REAL

#include <math.h>
#include "runtime.h"
#include "fastmath.h"

#define REAL float
#define SFX(name) name##_f32
#define EXP fastnn_expf
#define TANH fastnn_tanhf
#include "loss.c"
#undef REAL
#undef SFX
#undef EXP
#undef TANH

#define REAL double
#define SFX(name) name##_f64
#define EXP exp
#define TANH tanh
#include "loss.c"

#else /* template body */

#include "act_template.h"

/* rows [r0, r1): probs <- softmax(logits), row_loss <- log-sum-exp - logits[target] */
FASTNN_HOT
static void SFX(cross_entropy_rows)(REAL *probs, double *row_loss, const REAL *logits,
                                    const int64_t *target, int64_t r0, int64_t r1, int64_t K)
{
    for (int64_t r = r0; r < r1; r++) {
        /* finite for any finite logits */
        double lse = SFX(softmax_row)(probs + r * K, logits + r * K, K);
        row_loss[r] = lse - (double)logits[r * K + target[r]];
    }
}

/* Returns mean over rows of -log softmax(logits)[r, target[r]]; probs (N, K) <- softmax;
 * row_loss (N) is scratch. Targets are checked by the caller (0 <= t < K). */
double SFX(cross_entropy_forward)(REAL *probs, double *row_loss, const REAL *logits,
                                  const int64_t *target, int64_t N, int64_t K)
{
    FASTNN_PARALLEL_BLOCKS(fastnn_team_for_elements, N * K, fastnn_num_blocks(N, 1), N, blk, r0, r1,
                           SFX(cross_entropy_rows)(probs, row_loss, logits, target, r0, r1, K););
    double total = 0;
    for (int64_t r = 0; r < N; r++) total += row_loss[r];
    return N > 0 ? total / (double)N : NAN;
}

/* dlogits (N, K) <- (probs - onehot(target)) * scale; scale = dloss / N for the mean */
void SFX(cross_entropy_backward)(REAL *dlogits, const REAL *probs, const int64_t *target,
                                 double scale, int64_t N, int64_t K)
{
    REAL s = (REAL)scale;
    FASTNN_PARALLEL_BLOCKS(fastnn_team_for_elements, N * K,
                           fastnn_num_blocks(N, 1), N, blk, r0, r1, {
        for (int64_t r = r0; r < r1; r++) {
            const REAL *restrict p = probs + r * K;
            REAL *restrict d = dlogits + r * K;
            for (int64_t j = 0; j < K; j++) d[j] = p[j] * s;
            d[target[r]] = (p[target[r]] - 1) * s;
        }
    });
}

/* Returns sum((pred - target)^2) over n elements, summed in fixed chunks, in order. */
double SFX(squared_error_sum)(const REAL *pred, const REAL *target, int64_t n)
{
    int64_t nchunks = fastnn_num_blocks(n, FASTNN_PARALLEL_MIN_ELEMENTS);
    double chunk_sum[nchunks]; /* at most one chunk per processor; added in order below */
    FASTNN_FOR_CHUNKS(n, {
        double s = 0;
        for (int64_t i = i0; i < i1; i++) {
            double d = (double)pred[i] - (double)target[i];
            s += d * d;
        }
        chunk_sum[chunk] = s;
    });
    double total = 0;
    for (int64_t c = 0; c < nchunks; c++) total += chunk_sum[c];
    return total;
}

/* dpred (n) <- scale * (pred - target); scale = 2 * dloss / n for the mean */
void SFX(squared_error_backward)(REAL *dpred, const REAL *pred, const REAL *target,
                                 double scale, int64_t n)
{
    REAL s = (REAL)scale;
    FASTNN_FOR_CHUNKS(n, for (int64_t i = i0; i < i1; i++) dpred[i] = s * (pred[i] - target[i]););
}

#endif
