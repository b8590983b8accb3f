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

/* The weight of row r in the loss: 0 when its target is ignore_index, else its class's
 * weight (1 without class weights). */
static inline double SFX(row_weight)(const int64_t *target, const REAL *weight,
                                     int64_t ignore_index, int64_t r)
{
    if (target[r] == ignore_index) return 0;
    return weight ? (double)weight[target[r]] : 1;
}

/* The mean's denominator, as torch: the rows' weights added in row order. */
static double SFX(weight_total)(const int64_t *target, const REAL *weight, int64_t ignore_index,
                                int64_t N)
{
    double total = 0;
    for (int64_t r = 0; r < N; r++) total += SFX(row_weight)(target, weight, ignore_index, r);
    return total;
}

/* rows [r0, r1): probs <- softmax(logits); row_loss <- the row's loss, torch's
 * (1 - smoothing) * w[t] * (lse - z[t]) + smoothing / K * sum_k w[k] * (lse - z[k]),
 * 0 for an ignored row */
FASTNN_HOT
static void SFX(cross_entropy_rows)(REAL *probs, double *row_loss, const REAL *logits,
                                    const int64_t *target, const REAL *weight,
                                    int64_t ignore_index, double smoothing, int64_t r0,
                                    int64_t r1, int64_t K)
{
    for (int64_t r = r0; r < r1; r++) {
        const REAL *z = logits + r * K;
        /* finite for any finite logits */
        double lse = SFX(softmax_row)(probs + r * K, z, K);
        int64_t t = target[r];
        if (t == ignore_index) { /* before t is used as an index: it may be -100 */
            row_loss[r] = 0;
            continue;
        }
        double loss = lse - (double)z[t];
        if (weight) loss *= (double)weight[t];
        if (smoothing != 0) {
            double spread = 0; /* -sum_k w[k] log softmax(z)[k]: terms of one sign */
            for (int64_t k = 0; k < K; k++)
                spread += (weight ? (double)weight[k] : 1) * (lse - (double)z[k]);
            loss = (1 - smoothing) * loss + smoothing / (double)K * spread;
        }
        row_loss[r] = loss;
    }
}

/* Cross-entropy of logits (N, K) against classes target (N,), as torch.nn.CrossEntropyLoss.
 * probs (N, K) <- softmax(logits); row_loss (N) <- each row's loss. Returns the rows' sum,
 * or with mean the sum over the rows' weights (NaN when that is 0). weight (K) may be NULL.
 * Targets are checked by the caller (in [0, K) or ignore_index). */
double SFX(cross_entropy_forward)(REAL *probs, double *row_loss, const REAL *logits,
                                  const int64_t *target, const REAL *weight,
                                  int64_t ignore_index, double smoothing, int mean, int64_t N,
                                  int64_t K)
{
    FASTNN_PARALLEL_BLOCKS(fastnn_team_for_elements, N * K, fastnn_num_blocks(N, 1), N, blk, r0, r1,
                           SFX(cross_entropy_rows)(probs, row_loss, logits, target, weight,
                                                   ignore_index, smoothing, r0, r1, K););
    double total = 0;
    for (int64_t r = 0; r < N; r++) total += row_loss[r];
    return mean ? total / SFX(weight_total)(target, weight, ignore_index, N) : total;
}

/* rows [r0, r1) of cross_entropy_backward: row r is
 * g * (a * p - (1 - smoothing) * w[t] * onehot(t) - smoothing / K * w), g its factor,
 * a = (1 - smoothing) * w[t] + smoothing / K * sum(w); 0 for an ignored row */
FASTNN_HOT
static void SFX(cross_entropy_grad_rows)(REAL *dlogits, const REAL *probs,
                                         const int64_t *target, const REAL *weight,
                                         const REAL *row_dloss, int64_t ignore_index,
                                         double smoothing, double scale, double weight_sum,
                                         int64_t r0, int64_t r1, int64_t K)
{
    double spread = smoothing / (double)K;
    for (int64_t r = r0; r < r1; r++) {
        const REAL *restrict p = probs + r * K;
        REAL *restrict d = dlogits + r * K;
        int64_t t = target[r];
        if (t == ignore_index) {
            for (int64_t j = 0; j < K; j++) d[j] = 0;
            continue;
        }
        double g = row_dloss ? (double)row_dloss[r] * scale : scale;
        if (!weight && smoothing == 0) { /* the plain loss, in the call's precision */
            REAL s = (REAL)g;
            for (int64_t j = 0; j < K; j++) d[j] = p[j] * s;
            d[t] = (p[t] - 1) * s;
            continue;
        }
        double wt = weight ? (double)weight[t] : 1;
        double a = (1 - smoothing) * wt + spread * weight_sum;
        for (int64_t j = 0; j < K; j++)
            d[j] = (REAL)(g * (a * (double)p[j] - spread * (weight ? (double)weight[j] : 1)));
        d[t] = (REAL)(g * (a * (double)p[t] - spread * wt - (1 - smoothing) * wt));
    }
}

/* dlogits (N, K) <- the gradient of the forward's result times dloss, each row also times
 * row_dloss[r] when given (the gradient of reduction="none"). */
void SFX(cross_entropy_backward)(REAL *dlogits, const REAL *probs, const int64_t *target,
                                 const REAL *weight, const REAL *row_dloss,
                                 int64_t ignore_index, double smoothing, double dloss, int mean,
                                 int64_t N, int64_t K)
{
    double scale = mean ? dloss / SFX(weight_total)(target, weight, ignore_index, N) : dloss;
    double weight_sum = (double)K;
    if (weight) {
        weight_sum = 0;
        for (int64_t k = 0; k < K; k++) weight_sum += (double)weight[k];
    }
    FASTNN_PARALLEL_BLOCKS(fastnn_team_for_elements, N * K,
                           fastnn_num_blocks(N, 1), N, blk, r0, r1,
                           SFX(cross_entropy_grad_rows)(dlogits, probs, target, weight,
                                                        row_dloss, ignore_index, smoothing,
                                                        scale, weight_sum, r0, r1, K););
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
