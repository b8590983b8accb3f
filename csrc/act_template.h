/* Activations on one contiguous segment, shared by the kernels that fuse them (linear.c,
 * batchnorm.c, activation.c), and the softmax of one row (activation.c, loss.c). A template: include it inside a template body, where REAL, SFX,
 * TANH and EXP are defined. The switch sits outside the loops so that each loop vectorises.
 * act' is written in terms of the output y = act(z), so backward needs only the output. */

/* y[0:n] <- act(y[0:n]) */
static inline void SFX(act_inplace)(REAL *restrict y, int act, int64_t n)
{
    switch (act) {
    case FASTNN_ACT_RELU:
        /* written so that NaN passes through, as np.maximum(v, 0) does */
        for (int64_t j = 0; j < n; j++) y[j] = y[j] < 0 ? 0 : y[j];
        break;
    case FASTNN_ACT_TANH:
        for (int64_t j = 0; j < n; j++) y[j] = TANH(y[j]);
        break;
    case FASTNN_ACT_SIGMOID:
        for (int64_t j = 0; j < n; j++) y[j] = 1 / (1 + EXP(-y[j]));
        break;
    default:
        break;
    }
}

/* dz[0:n] <- dout * act'(z), from the output y = act(z) */
static inline void SFX(act_backward)(REAL *restrict dz, const REAL *restrict dout,
                                     const REAL *restrict y, int act, int64_t n)
{
    switch (act) {
    case FASTNN_ACT_RELU:
        for (int64_t i = 0; i < n; i++) {
            REAL g = dout[i]; /* loaded unconditionally, so the select vectorises */
            dz[i] = y[i] > 0 ? g : 0;
        }
        break;
    case FASTNN_ACT_TANH:
        for (int64_t i = 0; i < n; i++) dz[i] = dout[i] * (1 - y[i] * y[i]);
        break;
    case FASTNN_ACT_SIGMOID:
        for (int64_t i = 0; i < n; i++) dz[i] = dout[i] * y[i] * (1 - y[i]);
        break;
    default:
        for (int64_t i = 0; i < n; i++) dz[i] = dout[i];
        break;
    }
}

/* p[0:K] <- softmax(x[0:K]); returns log-sum-exp(x). A row of -inf gives NaN rather than a
 * division by a zero sum going unnoticed. The maximum and the sum run over SOFTMAX_LANES
 * interleaved partial results combined in a fixed order: vectorisable (a single running sum
 * may not be reordered) and the same on every call. */
#ifndef SOFTMAX_LANES
#define SOFTMAX_LANES 16
#endif
static inline double SFX(softmax_row)(REAL *restrict p, const REAL *restrict x, int64_t K)
{
    REAL lane_max[SOFTMAX_LANES];
    REAL lane_sum[SOFTMAX_LANES];
    int64_t head = K - K % SOFTMAX_LANES;
    for (int l = 0; l < SOFTMAX_LANES; l++) lane_max[l] = -INFINITY;
    for (int64_t j = 0; j < head; j += SOFTMAX_LANES)
        for (int l = 0; l < SOFTMAX_LANES; l++)
            lane_max[l] = x[j + l] > lane_max[l] ? x[j + l] : lane_max[l];
    REAL max = -INFINITY;
    for (int l = 0; l < SOFTMAX_LANES; l++) max = lane_max[l] > max ? lane_max[l] : max;
    for (int64_t j = head; j < K; j++) max = x[j] > max ? x[j] : max;
    if (max == -INFINITY) max = 0; /* exp(-inf - 0) = 0: 0/0 = NaN below */
    for (int64_t j = 0; j < K; j++) p[j] = EXP(x[j] - max);
    for (int l = 0; l < SOFTMAX_LANES; l++) lane_sum[l] = 0;
    for (int64_t j = 0; j < head; j += SOFTMAX_LANES)
        for (int l = 0; l < SOFTMAX_LANES; l++) lane_sum[l] += p[j + l];
    double sum = 0;
    for (int l = 0; l < SOFTMAX_LANES; l++) sum += lane_sum[l];
    for (int64_t j = head; j < K; j++) sum += p[j];
    REAL inv = (REAL)(1 / sum);
    for (int64_t j = 0; j < K; j++) p[j] *= inv;
    return log(sum) + max;
}
