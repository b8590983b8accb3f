/* Fused activations on one contiguous segment, shared by the kernels that fuse them
 * (linear.c, batchnorm.c). A template: include it inside a template body, where REAL, SFX,
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
