/* Fused optimizer updates over flat parameter buffers (n elements): each kernel reads the
 * gradient and its state once and writes the parameter and state once. Semantics are
 * torch.optim's documented update rules; l1 adds l1 * sign(p) to the gradient (an L1
 * penalty), weight_decay adds weight_decay * p (L2, coupled) except in AdamW's decoupled
 * form. Elementwise over fixed chunks, so results never depend on the thread count.
 * A template: this file includes itself once per element type. */
#ifndef REAL

#include <math.h>
#include <string.h>
#include "runtime.h"

void zero_fill(void *x, int64_t nbytes)
{
    FASTNN_FOR_CHUNKS(nbytes, memset((char *)x + i0, 0, (size_t)(i1 - i0)););
}

#define REAL float
#define SFX(name) name##_f32
#define SQRT sqrtf
#include "optim.c"
#undef REAL
#undef SFX
#undef SQRT

#define REAL double
#define SFX(name) name##_f64
#define SQRT sqrt
#include "optim.c"

#else /* template body */

/* Coefficients such as 1 - beta2 are formed in double by the callers and rounded once: in
 * float32, 1 - 0.999f is 0.00099998713, 1.3e-5 away from 0.001f. */

/* the gradient with the L2 and L1 penalties added; selects, not branches, so that loops
 * vectorise; an off penalty adds 0 even for an infinite parameter (no inf * 0 = NaN) */
static inline REAL SFX(penalised)(REAL g, REAL p, REAL wd, REAL l1)
{
    REAL l2_term = wd != 0 ? wd * p : 0;
    REAL l1_term = l1 != 0 ? l1 * (REAL)((p > 0) - (p < 0)) : 0;
    return g + l2_term + l1_term;
}

FASTNN_HOT
static void SFX(sgd_chunk)(REAL *restrict p, REAL *restrict buf, const REAL *restrict grad,
                           REAL lr, REAL mu, REAL one_minus_damp, REAL wd, REAL l1,
                           int nesterov, int first, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        REAL g = SFX(penalised)(grad[i], p[i], wd, l1);
        if (buf) {
            REAL b = first ? g : mu * buf[i] + one_minus_damp * g;
            buf[i] = b;
            g = nesterov ? g + mu * b : b;
        }
        p[i] -= lr * g;
    }
}

void SFX(sgd_step)(REAL *p, REAL *buf, const REAL *grad, double lr, double momentum,
                   double dampening, double weight_decay, double l1, int nesterov, int first,
                   int64_t n)
{
    FASTNN_FOR_CHUNKS(n, SFX(sgd_chunk)(p + i0, buf ? buf + i0 : 0, grad + i0, (REAL)lr,
                                   (REAL)momentum, (REAL)(1 - dampening), (REAL)weight_decay,
                                   (REAL)l1, nesterov, first, i1 - i0););
}

FASTNN_HOT
static void SFX(adagrad_chunk)(REAL *restrict p, REAL *restrict sum, const REAL *restrict grad,
                               REAL clr, REAL wd, REAL l1, REAL eps, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        REAL g = SFX(penalised)(grad[i], p[i], wd, l1);
        REAL s = sum[i] + g * g;
        sum[i] = s;
        p[i] -= clr * g / (SQRT(s) + eps);
    }
}

void SFX(adagrad_step)(REAL *p, REAL *sum, const REAL *grad, double clr, double weight_decay,
                       double l1, double eps, int64_t n)
{
    FASTNN_FOR_CHUNKS(n, SFX(adagrad_chunk)(p + i0, sum + i0, grad + i0, (REAL)clr,
                                       (REAL)weight_decay, (REAL)l1, (REAL)eps, i1 - i0););
}

/* The loop bodies below take their optional features as constant flags and are always
 * inlined, so each caller gets a branch-free, vectorised loop per combination. */
static inline __attribute__((always_inline)) void SFX(rmsprop_body)(
    REAL *restrict p, REAL *restrict sq, REAL *restrict gavg, REAL *restrict buf,
    const REAL *restrict grad, REAL lr, REAL alpha, REAL one_minus_alpha, REAL eps, REAL wd,
    REAL l1, REAL mu, const int centered, const int momentum, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        REAL g = SFX(penalised)(grad[i], p[i], wd, l1);
        REAL s = alpha * sq[i] + one_minus_alpha * g * g;
        sq[i] = s;
        REAL avg;
        if (centered) {
            REAL a = gavg[i] + one_minus_alpha * (g - gavg[i]);
            gavg[i] = a;
            avg = SQRT(s - a * a) + eps;
        } else {
            avg = SQRT(s) + eps;
        }
        if (momentum) {
            REAL b = mu * buf[i] + g / avg;
            buf[i] = b;
            p[i] -= lr * b;
        } else {
            p[i] -= lr * g / avg;
        }
    }
}

FASTNN_HOT
static void SFX(rmsprop_chunk)(REAL *restrict p, REAL *restrict sq, REAL *restrict gavg,
                               REAL *restrict buf, const REAL *restrict grad, REAL lr,
                               REAL alpha, REAL one_minus_alpha, REAL eps, REAL wd, REAL l1,
                               REAL mu, int64_t n)
{
#define RMSPROP(C, M) SFX(rmsprop_body)(p, sq, gavg, buf, grad, lr, alpha, one_minus_alpha, \
                                        eps, wd, l1, mu, C, M, n)
    if (gavg && buf) RMSPROP(1, 1);
    else if (gavg) RMSPROP(1, 0);
    else if (buf) RMSPROP(0, 1);
    else RMSPROP(0, 0);
#undef RMSPROP
}

void SFX(rmsprop_step)(REAL *p, REAL *square_avg, REAL *grad_avg, REAL *momentum_buf,
                       const REAL *grad, double lr, double alpha, double eps,
                       double weight_decay, double l1, double momentum, int64_t n)
{
    FASTNN_FOR_CHUNKS(n, SFX(rmsprop_chunk)(p + i0, square_avg + i0, grad_avg ? grad_avg + i0 : 0,
                                       momentum_buf ? momentum_buf + i0 : 0, grad + i0,
                                       (REAL)lr, (REAL)alpha, (REAL)(1 - alpha), (REAL)eps,
                                       (REAL)weight_decay,
                                       (REAL)l1, (REAL)momentum, i1 - i0););
}

static inline __attribute__((always_inline)) void SFX(adam_body)(
    REAL *restrict p, REAL *restrict m, REAL *restrict v, REAL *restrict vmax,
    const REAL *restrict grad, REAL decay, REAL one_minus_b1, REAL b2, REAL one_minus_b2,
    REAL eps, REAL wd, REAL l1, REAL step_size, REAL bc2_sqrt, const int amsgrad, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        REAL pi = p[i] * decay; /* decay = 1 - lr * weight_decay for AdamW, else 1 */
        REAL g = SFX(penalised)(grad[i], pi, wd, l1);
        REAL mi = m[i] + one_minus_b1 * (g - m[i]);
        REAL vi = b2 * v[i] + one_minus_b2 * g * g;
        m[i] = mi;
        v[i] = vi;
        if (amsgrad) {
            /* torch.maximum: a NaN on either side is the result */
            vi = vmax[i] > vi || vmax[i] != vmax[i] ? vmax[i] : vi;
            vmax[i] = vi;
        }
        p[i] = pi - step_size * mi / (SQRT(vi) / bc2_sqrt + eps);
    }
}

FASTNN_HOT
static void SFX(adam_chunk)(REAL *restrict p, REAL *restrict m, REAL *restrict v,
                            REAL *restrict vmax, const REAL *restrict grad, REAL decay,
                            REAL one_minus_b1, REAL b2, REAL one_minus_b2, REAL eps, REAL wd,
                            REAL l1, REAL step_size, REAL bc2_sqrt, int64_t n)
{
    if (vmax)
        SFX(adam_body)(p, m, v, vmax, grad, decay, one_minus_b1, b2, one_minus_b2, eps, wd, l1,
                       step_size, bc2_sqrt, 1, n);
    else
        SFX(adam_body)(p, m, v, vmax, grad, decay, one_minus_b1, b2, one_minus_b2, eps, wd, l1,
                       step_size, bc2_sqrt, 0, n);
}

void SFX(adam_step)(REAL *p, REAL *exp_avg, REAL *exp_avg_sq, REAL *max_exp_avg_sq,
                    const REAL *grad, double lr, double beta1, double beta2, double eps,
                    double weight_decay, double l1, int decoupled, int64_t step, int64_t n)
{
    double step_size = lr / (1 - pow(beta1, (double)step));
    double bc2_sqrt = sqrt(1 - pow(beta2, (double)step));
    /* AdamW shrinks p; Adam adds weight_decay * p to the gradient */
    double decay = decoupled ? 1 - lr * weight_decay : 1;
    double coupled_wd = decoupled ? 0 : weight_decay;
    FASTNN_FOR_CHUNKS(n, SFX(adam_chunk)(p + i0, exp_avg + i0, exp_avg_sq + i0,
                                    max_exp_avg_sq ? max_exp_avg_sq + i0 : 0, grad + i0,
                                    (REAL)decay, (REAL)(1 - beta1), (REAL)beta2,
                                    (REAL)(1 - beta2), (REAL)eps, (REAL)coupled_wd, (REAL)l1,
                                    (REAL)step_size, (REAL)bc2_sqrt, i1 - i0););
}

FASTNN_HOT
static double SFX(sum_squares_chunk)(const REAL *restrict x, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

double SFX(sum_squares)(const REAL *x, int64_t n)
{
    int64_t nchunks = fastnn_num_blocks(n, FASTNN_PARALLEL_MIN_ELEMENTS);
    double partial[nchunks]; /* at most one chunk per processor; added in order below */
    FASTNN_FOR_CHUNKS(n, partial[chunk] = SFX(sum_squares_chunk)(x + i0, i1 - i0););
    double total = 0;
    for (int64_t c = 0; c < nchunks; c++) total += partial[c];
    return total;
}

void SFX(scale_inplace)(REAL *x, double s, int64_t n)
{
    REAL f = (REAL)s;
    FASTNN_FOR_CHUNKS(n, for (int64_t i = i0; i < i1; i++) x[i] *= f;);
}

void SFX(clamp_inplace)(REAL *x, double lo, double hi, int64_t n)
{
    REAL l = (REAL)lo, h = (REAL)hi;
    /* max then min, as numpy.clip and torch.clamp: hi wins when lo > hi; NaN stays */
    FASTNN_FOR_CHUNKS(n, for (int64_t i = i0; i < i1; i++) {
        REAL c = x[i] < l ? l : x[i];
        x[i] = c > h ? h : c;
    });
}

#endif
