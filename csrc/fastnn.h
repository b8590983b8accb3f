/* fastnn C kernels: plain C (C11), no Python API.
 *
 * Conventions:
 *   - outputs first, then const inputs, then explicit sizes;
 *   - every array is C-contiguous, row-major, shapes given in the comment above each kernel;
 *   - backward kernels accumulate parameter gradients (+=); zeroing is the caller's job;
 *   - work is split into blocks that depend on the problem shape and the machine's processor
 *     count only, never on the thread count, so results are bitwise identical for any number
 *     of threads.
 * The argument lists of the layer, loss and optimizer kernels are written once more, in
 * fastnn/_native.pyx's KERNELS table (with each array's shape and whether it is written or
 * may be NULL): change both together.
 */
#ifndef FASTNN_H
#define FASTNN_H

#include <stdint.h>

/* ---- runtime: threads and the BLAS we call (runtime.c) ---- */

/* Fortran-ABI gemm, as exported by scipy.linalg.cython_blas (LP64: 32-bit int). */
typedef void (*sgemm_fn)(char *transa, char *transb, int *m, int *n, int *k, float *alpha,
                         float *a, int *lda, float *b, int *ldb, float *beta, float *c, int *ldc);
typedef void (*dgemm_fn)(char *transa, char *transb, int *m, int *n, int *k, double *alpha,
                         double *a, int *lda, double *b, int *ldb, double *beta, double *c,
                         int *ldc);
typedef void (*blas_set_threads_fn)(int);
typedef int (*blas_get_threads_fn)(void);

void fastnn_register_blas(sgemm_fn sgemm, dgemm_fn dgemm, blas_set_threads_fn set_threads,
                          blas_get_threads_fn get_threads);
const char *fastnn_compile_args(void);
int fastnn_has_openmp(void);
int fastnn_num_procs(void);
/* At most n threads; adaptive: fewer while the machine is busy (runtime.c), else exactly n. */
void fastnn_set_num_threads(int n, int adaptive);
int fastnn_get_num_threads(void);
int fastnn_threads_adaptive(void);
/* The threads kernels use now: the cap, or fewer while adapting to a busy machine. */
int fastnn_threads_in_use(void);
/* 1 in the child of a fork of a process that loaded fastnn: its kernels run on one thread. */
int fastnn_forked_child(void);

/* The matrix-product paths (gemm.c); fastnn_set_isa picks one, the default is the best this
 * CPU runs. AVX512 and AVX2 give the same bits; GENERIC is plain C without FMA; BLAS: Linear
 * calls scipy's BLAS instead of fastnn's core (the default where no FMA micro-kernel fits). */
enum { FASTNN_ISA_BLAS = 0, FASTNN_ISA_GENERIC = 1, FASTNN_ISA_AVX2 = 2, FASTNN_ISA_AVX512 = 3 };

int fastnn_isa_supported(int isa);
int fastnn_best_isa(void);
int fastnn_get_isa(void);
/* Returns 0, or -1 when this CPU cannot run `isa` (nothing changes). */
int fastnn_set_isa(int isa);

/* The FMA peak probe: float32 flops of `iters` rounds of independent FMAs on the current
 * path's widest vectors, on each of nthreads threads (0 on the BLAS and generic paths). */
double fma_peak_f32(int64_t iters, int nthreads);

/* ---- STREAM triad (stream.c): a (n) <- b + s * c, for measuring memory bandwidth ---- */
void stream_triad_f64(double *a, const double *b, const double *c, double s, int64_t n);

/* ---- Linear (linear.c) ----
 * act: one of the FASTNN_ACT_* codes; y = act(x @ w.T + b).
 */
/* Activations. The first four can be fused into linear/batchnorm (their derivative is a
 * function of the output); the others are standalone (activation.c). */
enum {
    FASTNN_ACT_NONE = 0,
    FASTNN_ACT_RELU = 1,
    FASTNN_ACT_TANH = 2,
    FASTNN_ACT_SIGMOID = 3,
    FASTNN_ACT_LEAKY_RELU = 4,
    FASTNN_ACT_GELU = 5,      /* exact: x * Phi(x) */
    FASTNN_ACT_GELU_TANH = 6, /* the tanh approximation */
};

/* out (B, OC) <- act(x (B, C) @ w (OC, C).T + b (OC,)); b may be NULL. */
void linear_forward_f32(float *out, const float *x, const float *w, const float *b, int act,
                        int64_t B, int64_t C, int64_t OC);
void linear_forward_f64(double *out, const double *x, const double *w, const double *b, int act,
                        int64_t B, int64_t C, int64_t OC);

/* Backward of linear_forward, given dout (B, OC), the forward input x (B, C) and output
 * out (B, OC) (read only when act != NONE):
 *   dz = dout * act'(out)            into work (B, OC); work may be NULL when act == NONE
 *   dx (B, C)   = dz @ w             (overwritten; skipped when dx is NULL)
 *   dw (OC, C) += dz.T @ x           (skipped when dw is NULL)
 *   db (OC,)   += sum over rows of dz (skipped when db is NULL)
 */
void linear_backward_f32(float *dx, float *dw, float *db, float *work, const float *dout,
                         const float *x, const float *w, const float *out, int act,
                         int64_t B, int64_t C, int64_t OC);
void linear_backward_f64(double *dx, double *dw, double *db, double *work, const double *dout,
                         const double *x, const double *w, const double *out, int act,
                         int64_t B, int64_t C, int64_t OC);

/* ---- BatchNorm1d (batchnorm.c) ----
 * x, out (B, C); gamma, beta (C) or NULL (no affine); act is fused after the affine map.
 * Training: out = act(gamma * (x - mean) / sqrt(var + eps) + beta) with the batch mean and
 * biased variance; save_mean, save_invstd (C) receive mean and 1/sqrt(var + eps); when
 * running_mean/running_var (C) are given they become (1 - momentum) * old + momentum * new,
 * with the unbiased variance when unbiased (PyTorch's; B > 1), else the biased one (the
 * textbook's). Evaluation: the running statistics normalise, and are
 * copied into save_mean/save_invstd for the backward.
 */
void batchnorm_forward_train_f32(float *out, float *save_mean, float *save_invstd,
                                 float *running_mean, float *running_var, const float *x,
                                 const float *gamma, const float *beta, double eps,
                                 double momentum, int act, int unbiased, int64_t B, int64_t C);
void batchnorm_forward_train_f64(double *out, double *save_mean, double *save_invstd,
                                 double *running_mean, double *running_var, const double *x,
                                 const double *gamma, const double *beta, double eps,
                                 double momentum, int act, int unbiased, int64_t B, int64_t C);
void batchnorm_forward_eval_f32(float *out, float *save_mean, float *save_invstd,
                                const float *running_mean, const float *running_var,
                                const float *x, const float *gamma, const float *beta,
                                double eps, int act, int64_t B, int64_t C);
void batchnorm_forward_eval_f64(double *out, double *save_mean, double *save_invstd,
                                const double *running_mean, const double *running_var,
                                const double *x, const double *gamma, const double *beta,
                                double eps, int act, int64_t B, int64_t C);
/* Backward given dout, x, out (B, C) and the saved mean, invstd (C): dx (B, C) overwritten
 * (skipped when NULL); dgamma, dbeta (C) accumulate (skipped when NULL). train selects the
 * training-mode gradient (through the batch statistics) or the evaluation one. */
void batchnorm_backward_f32(float *dx, float *dgamma, float *dbeta, const float *dout,
                            const float *x, const float *out, const float *mean,
                            const float *invstd, const float *gamma, int act, int train,
                            int64_t B, int64_t C);
void batchnorm_backward_f64(double *dx, double *dgamma, double *dbeta, const double *dout,
                            const double *x, const double *out, const double *mean,
                            const double *invstd, const double *gamma, int act, int train,
                            int64_t B, int64_t C);

/* ---- Activations and softmax (activation.c) ----
 * Elementwise over n: out = act(x); dx = dout * act'(x), given the input x (read by leaky
 * relu and gelu) and the output y (read by relu, tanh, sigmoid). slope: leaky relu's
 * negative slope. Softmax along the last axis of (N, K); backward from its output y. */
void activation_forward_f32(float *out, const float *x, int act, double slope, int64_t n);
void activation_forward_f64(double *out, const double *x, int act, double slope, int64_t n);
void activation_backward_f32(float *dx, const float *dout, const float *x, const float *y,
                             int act, double slope, int64_t n);
void activation_backward_f64(double *dx, const double *dout, const double *x, const double *y,
                             int act, double slope, int64_t n);
void softmax_forward_f32(float *out, const float *x, int64_t N, int64_t K);
void softmax_forward_f64(double *out, const double *x, int64_t N, int64_t K);
void softmax_backward_f32(float *dx, const float *dout, const float *y, int64_t N, int64_t K);
void softmax_backward_f64(double *dx, const double *dout, const double *y, int64_t N,
                          int64_t K);

/* ---- Dropout (dropout.c) ----
 * out (n) <- in * scale * mask, mask[i] = (uniform(seed, offset + i) >= p): the same call
 * with the same (seed, offset) is the forward and the backward. 0 <= p < 1; scale is
 * 1 / (1 - p) for inverted dropout, 1 for the textbook's. */
void dropout_apply_f32(float *out, const float *in, double p, double scale, uint64_t seed,
                       uint64_t offset, int64_t n);
void dropout_apply_f64(double *out, const double *in, double p, double scale, uint64_t seed,
                       uint64_t offset, int64_t n);

/* ---- Embedding (embedding.c) ----
 * out (N, D) <- weight (V, D)[idx (N,)]; backward: dweight[idx[i]] += dout[i], in order.
 * Indices must be in [0, V) (checked by the caller). */
void embedding_forward_f32(float *out, const float *weight, const int64_t *idx, int64_t N,
                           int64_t D);
void embedding_forward_f64(double *out, const double *weight, const int64_t *idx, int64_t N,
                           int64_t D);
void embedding_backward_f32(float *dweight, const float *dout, const int64_t *idx, int64_t N,
                            int64_t D);
void embedding_backward_f64(double *dweight, const double *dout, const int64_t *idx,
                            int64_t N, int64_t D);

/* ---- Losses (loss.c) ----
 * Cross-entropy of logits (N, K) against classes target (N,) in [0, K) or ignore_index, as
 * torch.nn.CrossEntropyLoss with class weights weight (K, or NULL) and label smoothing:
 * writes the softmax into probs (N, K) and each row's loss into row_loss (N); returns their
 * sum, or with mean their weighted mean. Backward: dlogits, the gradient of that result
 * times dloss (and times row_dloss (N) per row when not NULL). Squared error over n
 * elements: the sum, and dpred = scale * (pred - target). */
double cross_entropy_forward_f32(float *probs, double *row_loss, const float *logits,
                                 const int64_t *target, const float *weight,
                                 int64_t ignore_index, double smoothing, int mean, int64_t N,
                                 int64_t K);
double cross_entropy_forward_f64(double *probs, double *row_loss, const double *logits,
                                 const int64_t *target, const double *weight,
                                 int64_t ignore_index, double smoothing, int mean, int64_t N,
                                 int64_t K);
void cross_entropy_backward_f32(float *dlogits, const float *probs, const int64_t *target,
                                const float *weight, const float *row_dloss,
                                int64_t ignore_index, double smoothing, double dloss, int mean,
                                int64_t N, int64_t K);
void cross_entropy_backward_f64(double *dlogits, const double *probs, const int64_t *target,
                                const double *weight, const double *row_dloss,
                                int64_t ignore_index, double smoothing, double dloss, int mean,
                                int64_t N, int64_t K);
double squared_error_sum_f32(const float *pred, const float *target, int64_t n);
double squared_error_sum_f64(const double *pred, const double *target, int64_t n);
void squared_error_backward_f32(float *dpred, const float *pred, const float *target,
                                double scale, int64_t n);
void squared_error_backward_f64(double *dpred, const double *pred, const double *target,
                                double scale, int64_t n);

/* ---- Optimizers (optim.c) ----
 * In place over flat buffers of n elements: parameters p, gradients grad, optimizer state.
 * Rules as torch.optim documents them, with grad += weight_decay * p (coupled L2; AdamW
 * instead scales p by 1 - lr * weight_decay) and grad += l1 * sign(p). A NULL state buffer
 * turns its feature off (SGD momentum, RMSprop centering/momentum, Adam amsgrad).
 *   sgd:     buf = first ? g : momentum * buf + (1 - dampening) * g;
 *            g = nesterov ? g + momentum * buf : buf;  p -= lr * g
 *   adagrad: sum += g * g;  p -= clr * g / (sqrt(sum) + eps)  (clr: lr after lr_decay)
 *   rmsprop: sq = alpha sq + (1 - alpha) g^2;  centered: ga += (1 - alpha)(g - ga),
 *            avg = sqrt(sq - ga^2) + eps, else sqrt(sq) + eps;
 *            momentum: buf = momentum buf + g / avg, p -= lr buf; else p -= lr g / avg
 *   adam:    m += (1 - b1)(g - m);  v = b2 v + (1 - b2) g^2;  amsgrad: vmax = max(vmax, v);
 *            p -= lr / (1 - b1^step) * m / (sqrt(v or vmax) / sqrt(1 - b2^step) + eps)
 * sum_squares returns sum(x^2) in double, in a fixed order; scale_inplace and clamp_inplace
 * serve gradient clipping; zero_fill(x, nbytes) zeroes memory on the team (zero_grad). */
void sgd_step_f32(float *p, float *buf, const float *grad, double lr, double momentum,
                  double dampening, double weight_decay, double l1, int nesterov, int first,
                  int64_t n);
void sgd_step_f64(double *p, double *buf, const double *grad, double lr, double momentum,
                  double dampening, double weight_decay, double l1, int nesterov, int first,
                  int64_t n);
void adagrad_step_f32(float *p, float *sum, const float *grad, double clr, double weight_decay,
                      double l1, double eps, int64_t n);
void adagrad_step_f64(double *p, double *sum, const double *grad, double clr,
                      double weight_decay, double l1, double eps, int64_t n);
void rmsprop_step_f32(float *p, float *square_avg, float *grad_avg, float *momentum_buf,
                      const float *grad, double lr, double alpha, double eps,
                      double weight_decay, double l1, double momentum, int64_t n);
void rmsprop_step_f64(double *p, double *square_avg, double *grad_avg, double *momentum_buf,
                      const double *grad, double lr, double alpha, double eps,
                      double weight_decay, double l1, double momentum, int64_t n);
void adam_step_f32(float *p, float *exp_avg, float *exp_avg_sq, float *max_exp_avg_sq,
                   const float *grad, double lr, double beta1, double beta2, double eps,
                   double weight_decay, double l1, int decoupled, int64_t step, int64_t n);
void adam_step_f64(double *p, double *exp_avg, double *exp_avg_sq, double *max_exp_avg_sq,
                   const double *grad, double lr, double beta1, double beta2, double eps,
                   double weight_decay, double l1, int decoupled, int64_t step, int64_t n);
double sum_squares_f32(const float *x, int64_t n);
double sum_squares_f64(const double *x, int64_t n);
void scale_inplace_f32(float *x, double s, int64_t n);
void scale_inplace_f64(double *x, double s, int64_t n);
void clamp_inplace_f32(float *x, double lo, double hi, int64_t n);
void clamp_inplace_f64(double *x, double lo, double hi, int64_t n);
void zero_fill(void *x, int64_t nbytes);

#endif
