# The Cython binding of csrc/: array pointers in, GIL released, C kernel called.
#
# It trusts its caller: fastnn.functional validates shapes, dtypes and contiguity once, for
# both backends, before anything reaches here. Do not call these functions directly.
cimport numpy as cnp
from libc.stdint cimport int64_t, uint64_t
from scipy.linalg.cython_blas cimport sgemm, dgemm

cnp.import_array()

cdef extern from "fastnn.h" nogil:
    ctypedef void (*sgemm_fn)(char *, char *, int *, int *, int *, float *, float *, int *,
                              float *, int *, float *, float *, int *)
    ctypedef void (*dgemm_fn)(char *, char *, int *, int *, int *, double *, double *, int *,
                              double *, int *, double *, double *, int *)
    ctypedef void (*blas_set_threads_fn)(int)
    ctypedef int (*blas_get_threads_fn)()
    void fastnn_register_blas(sgemm_fn, dgemm_fn, blas_set_threads_fn, blas_get_threads_fn)
    const char *fastnn_compile_args()
    int fastnn_has_openmp()
    int fastnn_num_procs()
    void fastnn_set_num_threads(int n, int adaptive)
    int fastnn_get_num_threads()
    int fastnn_threads_adaptive()
    int fastnn_threads_in_use()
    int fastnn_forked_child()
    int fastnn_isa_supported(int isa)
    int fastnn_get_isa()
    int fastnn_set_isa(int isa)

    enum:
        FASTNN_ISA_BLAS, FASTNN_ISA_GENERIC, FASTNN_ISA_AVX2, FASTNN_ISA_AVX512
        FASTNN_ACT_NONE, FASTNN_ACT_RELU, FASTNN_ACT_TANH, FASTNN_ACT_SIGMOID
        FASTNN_ACT_LEAKY_RELU, FASTNN_ACT_GELU, FASTNN_ACT_GELU_TANH

# Names for fastnn.h's codes, the values taken from the header. ACTIVATIONS: those linear
# and batchnorm fuse; ELEMENTWISE: all the elementwise ones.
ACTIVATIONS = {"none": FASTNN_ACT_NONE, "relu": FASTNN_ACT_RELU, "tanh": FASTNN_ACT_TANH,
               "sigmoid": FASTNN_ACT_SIGMOID}
ELEMENTWISE = {**ACTIVATIONS, "leaky_relu": FASTNN_ACT_LEAKY_RELU, "gelu": FASTNN_ACT_GELU,
               "gelu_tanh": FASTNN_ACT_GELU_TANH}
_ISA_CODES = {"blas": FASTNN_ISA_BLAS, "generic": FASTNN_ISA_GENERIC,
              "avx2": FASTNN_ISA_AVX2, "avx512": FASTNN_ISA_AVX512}
_ISA_NAMES = {code: name for name, code in _ISA_CODES.items()}
ISAS = tuple(_ISA_CODES)  # the matrix-product paths, slowest first

cdef extern from "runtime.h" nogil:
    void fastnn_adapt_observe(int team, int64_t wall_ns, int64_t cpu_ns)
    void fastnn_adapt_probe_now()
    void fastnn_blas_hold()
    void fastnn_blas_release()

cdef extern from "fastnn.h" nogil:
    double fma_peak_f32(int64_t iters, int nthreads)

    void linear_forward_f32(float *out, const float *x, const float *w, const float *b,
                            int act, int64_t B, int64_t C, int64_t OC)
    void linear_forward_f64(double *out, const double *x, const double *w, const double *b,
                            int act, int64_t B, int64_t C, int64_t OC)
    void linear_backward_f32(float *dx, float *dw, float *db, float *work, const float *dout,
                             const float *x, const float *w, const float *out, int act,
                             int64_t B, int64_t C, int64_t OC)
    void linear_backward_f64(double *dx, double *dw, double *db, double *work,
                             const double *dout, const double *x, const double *w,
                             const double *out, int act, int64_t B, int64_t C, int64_t OC)

    void batchnorm_forward_train_f32(float *out, float *save_mean, float *save_invstd,
                                     float *running_mean, float *running_var, const float *x,
                                     const float *gamma, const float *beta, double eps,
                                     double momentum, int act, int64_t B, int64_t C)
    void batchnorm_forward_train_f64(double *out, double *save_mean, double *save_invstd,
                                     double *running_mean, double *running_var,
                                     const double *x, const double *gamma, const double *beta,
                                     double eps, double momentum, int act, int64_t B, int64_t C)
    void batchnorm_forward_eval_f32(float *out, float *save_mean, float *save_invstd,
                                    const float *running_mean, const float *running_var,
                                    const float *x, const float *gamma, const float *beta,
                                    double eps, int act, int64_t B, int64_t C)
    void batchnorm_forward_eval_f64(double *out, double *save_mean, double *save_invstd,
                                    const double *running_mean, const double *running_var,
                                    const double *x, const double *gamma, const double *beta,
                                    double eps, int act, int64_t B, int64_t C)
    void batchnorm_backward_f32(float *dx, float *dgamma, float *dbeta, const float *dout,
                                const float *x, const float *out, const float *mean,
                                const float *invstd, const float *gamma, int act, int train,
                                int64_t B, int64_t C)
    void batchnorm_backward_f64(double *dx, double *dgamma, double *dbeta, const double *dout,
                                const double *x, const double *out, const double *mean,
                                const double *invstd, const double *gamma, int act, int train,
                                int64_t B, int64_t C)

    void activation_forward_f32(float *out, const float *x, int act, double slope, int64_t n)
    void activation_forward_f64(double *out, const double *x, int act, double slope, int64_t n)
    void activation_backward_f32(float *dx, const float *dout, const float *x, const float *y,
                                 int act, double slope, int64_t n)
    void activation_backward_f64(double *dx, const double *dout, const double *x,
                                 const double *y, int act, double slope, int64_t n)
    void softmax_forward_f32(float *out, const float *x, int64_t N, int64_t K)
    void softmax_forward_f64(double *out, const double *x, int64_t N, int64_t K)
    void softmax_backward_f32(float *dx, const float *dout, const float *y, int64_t N, int64_t K)
    void softmax_backward_f64(double *dx, const double *dout, const double *y, int64_t N,
                              int64_t K)
    void dropout_apply_f32(float *out, const float *inp, double p, uint64_t seed,
                           uint64_t offset, int64_t n)
    void dropout_apply_f64(double *out, const double *inp, double p, uint64_t seed,
                           uint64_t offset, int64_t n)
    void embedding_forward_f32(float *out, const float *weight, const int64_t *idx, int64_t N,
                               int64_t D)
    void embedding_forward_f64(double *out, const double *weight, const int64_t *idx,
                               int64_t N, int64_t D)
    void embedding_backward_f32(float *dweight, const float *dout, const int64_t *idx,
                                int64_t N, int64_t D)
    void embedding_backward_f64(double *dweight, const double *dout, const int64_t *idx,
                                int64_t N, int64_t D)
    double cross_entropy_forward_f32(float *probs, double *row_loss, const float *logits,
                                     const int64_t *target, int64_t N, int64_t K)
    double cross_entropy_forward_f64(double *probs, double *row_loss, const double *logits,
                                     const int64_t *target, int64_t N, int64_t K)
    void cross_entropy_backward_f32(float *dlogits, const float *probs, const int64_t *target,
                                    double scale, int64_t N, int64_t K)
    void cross_entropy_backward_f64(double *dlogits, const double *probs,
                                    const int64_t *target, double scale, int64_t N, int64_t K)
    double squared_error_sum_f32(const float *pred, const float *target, int64_t n)
    double squared_error_sum_f64(const double *pred, const double *target, int64_t n)
    void squared_error_backward_f32(float *dpred, const float *pred, const float *target,
                                    double scale, int64_t n)
    void squared_error_backward_f64(double *dpred, const double *pred, const double *target,
                                    double scale, int64_t n)
    void sgd_step_f32(float *p, float *buf, const float *grad, double lr, double momentum,
                      double dampening, double weight_decay, double l1, int nesterov,
                      int first, int64_t n)
    void sgd_step_f64(double *p, double *buf, const double *grad, double lr, double momentum,
                      double dampening, double weight_decay, double l1, int nesterov,
                      int first, int64_t n)
    void adagrad_step_f32(float *p, float *sum, const float *grad, double clr,
                          double weight_decay, double l1, double eps, int64_t n)
    void adagrad_step_f64(double *p, double *sum, const double *grad, double clr,
                          double weight_decay, double l1, double eps, int64_t n)
    void rmsprop_step_f32(float *p, float *square_avg, float *grad_avg, float *momentum_buf,
                          const float *grad, double lr, double alpha, double eps,
                          double weight_decay, double l1, double momentum, int64_t n)
    void rmsprop_step_f64(double *p, double *square_avg, double *grad_avg,
                          double *momentum_buf, const double *grad, double lr, double alpha,
                          double eps, double weight_decay, double l1, double momentum, int64_t n)
    void adam_step_f32(float *p, float *exp_avg, float *exp_avg_sq, float *max_exp_avg_sq,
                       const float *grad, double lr, double beta1, double beta2, double eps,
                       double weight_decay, double l1, int decoupled, int64_t step, int64_t n)
    void adam_step_f64(double *p, double *exp_avg, double *exp_avg_sq, double *max_exp_avg_sq,
                       const double *grad, double lr, double beta1, double beta2, double eps,
                       double weight_decay, double l1, int decoupled, int64_t step, int64_t n)
    double sum_squares_f32(const float *x, int64_t n)
    double sum_squares_f64(const double *x, int64_t n)
    void scale_inplace_f32(float *x, double s, int64_t n)
    void scale_inplace_f64(double *x, double s, int64_t n)
    void clamp_inplace_f32(float *x, double lo, double hi, int64_t n)
    void clamp_inplace_f64(double *x, double lo, double hi, int64_t n)
    void zero_fill(void *x, int64_t nbytes)
    void stream_triad_f64(double *a, const double *b, const double *c, double s, int64_t n)


def register_blas(size_t set_threads_addr, size_t get_threads_addr):
    """Hand the C kernels scipy's gemm and, when known, the BLAS thread-count functions
    (addresses of `openblas_set_num_threads` / `openblas_get_num_threads`, or 0)."""
    fastnn_register_blas(<sgemm_fn>sgemm, <dgemm_fn>dgemm,
                         <blas_set_threads_fn>set_threads_addr,
                         <blas_get_threads_fn>get_threads_addr)


def compile_args():
    return fastnn_compile_args().decode().split()


def has_openmp():
    return bool(fastnn_has_openmp())


def num_procs():
    return fastnn_num_procs()


def set_num_threads(int n, bint adaptive):
    fastnn_set_num_threads(n, adaptive)


def threads_adaptive():
    return bool(fastnn_threads_adaptive())


def threads_in_use():
    return fastnn_threads_in_use()


def adapt_observe(int team, int64_t wall_ns, int64_t cpu_ns):
    """For tests: feed the adaptive thread count one timed region."""
    fastnn_adapt_observe(team, wall_ns, cpu_ns)


def adapt_probe_now():
    """For tests: start a probe window (one thread more, below the cap) now."""
    fastnn_adapt_probe_now()


def blas_hold():
    """For tests: what a kernel on the BLAS path does before its parallel region..."""
    fastnn_blas_hold()


def blas_release():
    """... and after it."""
    fastnn_blas_release()


def isa_supported(str name):
    return bool(fastnn_isa_supported(_ISA_CODES[name]))


def set_isa(str name):
    """Select a matrix-product path by name; False when this CPU cannot run it."""
    return fastnn_set_isa(_ISA_CODES[name]) == 0


def get_isa():
    return _ISA_NAMES[fastnn_get_isa()]


def fma_peak(int64_t iters, int nthreads):
    """float32 flops of the FMA peak probe (csrc/gemm.c): time the call to get the rate."""
    with nogil:
        flops = fma_peak_f32(iters, nthreads)
    return flops


def get_num_threads():
    return fastnn_get_num_threads()


def forked_child():
    return bool(fastnn_forked_child())


cdef inline bint is_native_layout(cnp.ndarray a):
    """Native byte order and aligned: what the kernels read as C arrays of their type (the
    type number alone does not tell big-endian data apart)."""
    return cnp.PyArray_ISNOTSWAPPED(a) and cnp.PyArray_ISALIGNED(a)


def is_c_array(object a, int ndim, int typenum, int64_t max_dim):
    """True if `a` is a C-contiguous numpy array of `ndim` dimensions, each at most max_dim,
    with dtype number `typenum`: the layers' per-call checks in one C call, the error message
    left to the Python caller."""
    if not cnp.PyArray_Check(a):
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if (cnp.PyArray_TYPE(arr) != typenum or cnp.PyArray_NDIM(arr) != ndim
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not is_native_layout(arr)):
        return False
    cdef int i
    for i in range(ndim):
        if cnp.PyArray_DIM(arr, i) > max_dim:
            return False
    return True


def is_owned_array(object a, tuple shape, int typenum, bint writeable):
    """True if `a` is exactly a numpy.ndarray (no subclass) of this shape and dtype number,
    C-contiguous, and writeable when asked."""
    if type(a) is not cnp.ndarray:
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef int i, ndim = len(shape)
    if (cnp.PyArray_TYPE(arr) != typenum or cnp.PyArray_NDIM(arr) != ndim
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not is_native_layout(arr)
            or (writeable and not cnp.PyArray_ISWRITEABLE(arr))):
        return False
    for i in range(ndim):
        if cnp.PyArray_DIM(arr, i) != <cnp.npy_intp>shape[i]:
            return False
    return True


def first_overlap(tuple arrays, Py_ssize_t n_outputs):
    """(i, j) for the first arrays[i], i < n_outputs, whose memory overlaps arrays[j], j != i;
    None if there is none. Entries are C-contiguous arrays (so [data, data + nbytes) is
    exact) or None (skipped)."""
    cdef Py_ssize_t i, j
    cdef char *lo
    cdef char *hi
    cdef char *blo
    for i in range(n_outputs):
        if arrays[i] is None:
            continue
        lo = <char *>cnp.PyArray_DATA(<cnp.ndarray>arrays[i])
        hi = lo + cnp.PyArray_NBYTES(<cnp.ndarray>arrays[i])
        for j in range(len(arrays)):
            if j == i or arrays[j] is None:
                continue
            blo = <char *>cnp.PyArray_DATA(<cnp.ndarray>arrays[j])
            if lo < blo + cnp.PyArray_NBYTES(<cnp.ndarray>arrays[j]) and blo < hi:
                return i, j
    return None


def stream_triad(cnp.ndarray a, cnp.ndarray b, cnp.ndarray c, double s):
    """a <- b + s * c over float64 C-contiguous arrays of one size (the caller checks)."""
    cdef void *pa = cnp.PyArray_DATA(a)
    cdef void *pb = cnp.PyArray_DATA(b)
    cdef void *pc = cnp.PyArray_DATA(c)
    cdef int64_t n = a.size
    with nogil:
        stream_triad_f64(<double *>pa, <double *>pb, <double *>pc, s, n)


cdef inline void *data_or_null(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline bint is_f32(cnp.ndarray a):
    return cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32


# ---- the layer kernels: each binding fills one Op and runs it; a Plan (fastnn.fused) runs a
# recorded list of them in one call. run_op is the one place that picks float or double.

from libc.stdlib cimport realloc, free

cdef enum:
    OP_EMBEDDING_FORWARD
    OP_LINEAR_FORWARD
    OP_BATCHNORM_FORWARD
    OP_ACTIVATION_FORWARD
    OP_CROSS_ENTROPY_FORWARD
    OP_CROSS_ENTROPY_BACKWARD
    OP_LINEAR_BACKWARD
    OP_BATCHNORM_BACKWARD
    OP_ACTIVATION_BACKWARD
    OP_EMBEDDING_BACKWARD

OPS = {"embedding_forward": OP_EMBEDDING_FORWARD, "linear_forward": OP_LINEAR_FORWARD,
       "batchnorm_forward": OP_BATCHNORM_FORWARD,
       "activation_forward": OP_ACTIVATION_FORWARD,
       "cross_entropy_forward": OP_CROSS_ENTROPY_FORWARD,
       "cross_entropy_backward": OP_CROSS_ENTROPY_BACKWARD,
       "linear_backward": OP_LINEAR_BACKWARD, "batchnorm_backward": OP_BATCHNORM_BACKWARD,
       "activation_backward": OP_ACTIVATION_BACKWARD,
       "embedding_backward": OP_EMBEDDING_BACKWARD}

cdef enum:
    MAX_ARRAYS = 9

cdef struct Op:
    int kind
    bint f32
    int act
    bint train
    double a, b  # batchnorm: eps, momentum; activation: slope; cross-entropy backward: scale
    int64_t n0, n1, n2  # the kernel's sizes, in its argument order
    void *p[MAX_ARRAYS]  # the kernel's arrays, in its argument order; NULL for None


cdef double run_op(Op *op) noexcept nogil:
    """Call one kernel; returns the loss for a cross-entropy forward, else 0."""
    cdef void **p = op.p
    cdef int k = op.kind
    if k == OP_EMBEDDING_FORWARD:
        if op.f32: embedding_forward_f32(<float *>p[0], <float *>p[1], <int64_t *>p[2], op.n0, op.n1)
        else: embedding_forward_f64(<double *>p[0], <double *>p[1], <int64_t *>p[2], op.n0, op.n1)
    elif k == OP_LINEAR_FORWARD:
        if op.f32:
            linear_forward_f32(<float *>p[0], <float *>p[1], <float *>p[2], <float *>p[3],
                               op.act, op.n0, op.n1, op.n2)
        else:
            linear_forward_f64(<double *>p[0], <double *>p[1], <double *>p[2], <double *>p[3],
                               op.act, op.n0, op.n1, op.n2)
    elif k == OP_BATCHNORM_FORWARD and op.train:
        if op.f32:
            batchnorm_forward_train_f32(<float *>p[0], <float *>p[1], <float *>p[2],
                                        <float *>p[3], <float *>p[4], <float *>p[5],
                                        <float *>p[6], <float *>p[7], op.a, op.b, op.act,
                                        op.n0, op.n1)
        else:
            batchnorm_forward_train_f64(<double *>p[0], <double *>p[1], <double *>p[2],
                                        <double *>p[3], <double *>p[4], <double *>p[5],
                                        <double *>p[6], <double *>p[7], op.a, op.b, op.act,
                                        op.n0, op.n1)
    elif k == OP_BATCHNORM_FORWARD:
        if op.f32:
            batchnorm_forward_eval_f32(<float *>p[0], <float *>p[1], <float *>p[2],
                                       <float *>p[3], <float *>p[4], <float *>p[5],
                                       <float *>p[6], <float *>p[7], op.a, op.act, op.n0, op.n1)
        else:
            batchnorm_forward_eval_f64(<double *>p[0], <double *>p[1], <double *>p[2],
                                       <double *>p[3], <double *>p[4], <double *>p[5],
                                       <double *>p[6], <double *>p[7], op.a, op.act, op.n0,
                                       op.n1)
    elif k == OP_ACTIVATION_FORWARD:
        if op.f32: activation_forward_f32(<float *>p[0], <float *>p[1], op.act, op.a, op.n0)
        else: activation_forward_f64(<double *>p[0], <double *>p[1], op.act, op.a, op.n0)
    elif k == OP_CROSS_ENTROPY_FORWARD:
        if op.f32:
            return cross_entropy_forward_f32(<float *>p[0], <double *>p[1], <float *>p[2],
                                             <int64_t *>p[3], op.n0, op.n1)
        return cross_entropy_forward_f64(<double *>p[0], <double *>p[1], <double *>p[2],
                                         <int64_t *>p[3], op.n0, op.n1)
    elif k == OP_CROSS_ENTROPY_BACKWARD:
        if op.f32:
            cross_entropy_backward_f32(<float *>p[0], <float *>p[1], <int64_t *>p[2], op.a,
                                       op.n0, op.n1)
        else:
            cross_entropy_backward_f64(<double *>p[0], <double *>p[1], <int64_t *>p[2], op.a,
                                       op.n0, op.n1)
    elif k == OP_LINEAR_BACKWARD:
        if op.f32:
            linear_backward_f32(<float *>p[0], <float *>p[1], <float *>p[2], <float *>p[3],
                                <float *>p[4], <float *>p[5], <float *>p[6], <float *>p[7],
                                op.act, op.n0, op.n1, op.n2)
        else:
            linear_backward_f64(<double *>p[0], <double *>p[1], <double *>p[2], <double *>p[3],
                                <double *>p[4], <double *>p[5], <double *>p[6],
                                <double *>p[7], op.act, op.n0, op.n1, op.n2)
    elif k == OP_BATCHNORM_BACKWARD:
        if op.f32:
            batchnorm_backward_f32(<float *>p[0], <float *>p[1], <float *>p[2], <float *>p[3],
                                   <float *>p[4], <float *>p[5], <float *>p[6], <float *>p[7],
                                   <float *>p[8], op.act, op.train, op.n0, op.n1)
        else:
            batchnorm_backward_f64(<double *>p[0], <double *>p[1], <double *>p[2],
                                   <double *>p[3], <double *>p[4], <double *>p[5],
                                   <double *>p[6], <double *>p[7], <double *>p[8], op.act,
                                   op.train, op.n0, op.n1)
    elif k == OP_ACTIVATION_BACKWARD:
        if op.f32:
            activation_backward_f32(<float *>p[0], <float *>p[1], <float *>p[2], <float *>p[3],
                                    op.act, op.a, op.n0)
        else:
            activation_backward_f64(<double *>p[0], <double *>p[1], <double *>p[2],
                                    <double *>p[3], op.act, op.a, op.n0)
    elif k == OP_EMBEDDING_BACKWARD:
        if op.f32:
            embedding_backward_f32(<float *>p[0], <float *>p[1], <int64_t *>p[2], op.n0, op.n1)
        else:
            embedding_backward_f64(<double *>p[0], <double *>p[1], <int64_t *>p[2], op.n0,
                                   op.n1)
    return 0


cdef int fill_op(Op *op, int kind, bint f32, tuple arrays, tuple sizes, int act, bint train,
                 double a, double b) except -1:
    """op <- the kernel `kind` with its arrays (None: NULL) and sizes in argument order."""
    if len(arrays) > MAX_ARRAYS or len(sizes) > 3:
        raise ValueError("too many kernel arguments")
    op.kind, op.f32, op.act, op.train, op.a, op.b = kind, f32, act, train, a, b
    op.n0 = sizes[0] if len(sizes) > 0 else 0
    op.n1 = sizes[1] if len(sizes) > 1 else 0
    op.n2 = sizes[2] if len(sizes) > 2 else 0
    cdef int i
    for i in range(MAX_ARRAYS):
        op.p[i] = NULL
    for i, arr in enumerate(arrays):
        if arr is not None:
            op.p[i] = cnp.PyArray_DATA(<cnp.ndarray?>arr)
    return 0


cdef double call(int kind, bint f32, tuple arrays, tuple sizes, int act=0, bint train=False,
                 double a=0, double b=0) except? -1:
    # (a Cython cdef function takes its optional arguments by position only)
    """Run one kernel without the GIL; returns what run_op returns."""
    cdef Op op
    fill_op(&op, kind, f32, arrays, sizes, act, train, a, b)
    cdef double result
    with nogil:
        result = run_op(&op)
    return result


def linear_forward(cnp.ndarray out, cnp.ndarray x, cnp.ndarray w, object b, int act):
    """out (B, OC) <- act(x (B, C) @ w (OC, C).T + b (OC,) or 0)."""
    call(OP_LINEAR_FORWARD, is_f32(x), (out, x, w, b), (x.shape[0], x.shape[1], w.shape[0]),
         act)


def linear_backward(object dx, object dw, object db, object work, cnp.ndarray dout,
                    cnp.ndarray x, cnp.ndarray w, object out, int act):
    """dx = dz @ w; dw += dz.T @ x; db += dz.sum(0), with dz = dout * act'(out) in work."""
    call(OP_LINEAR_BACKWARD, is_f32(x), (dx, dw, db, work, dout, x, w, out),
         (x.shape[0], x.shape[1], w.shape[0]), act)


def batchnorm_forward(cnp.ndarray out, cnp.ndarray save_mean, cnp.ndarray save_invstd,
                      object running_mean, object running_var, cnp.ndarray x, object gamma,
                      object beta, double eps, double momentum, int act, bint train):
    """out (B, C) <- act(batch norm of x); the mean and 1/std used into save_mean/save_invstd."""
    call(OP_BATCHNORM_FORWARD, is_f32(x),
         (out, save_mean, save_invstd, running_mean, running_var, x, gamma, beta),
         (x.shape[0], x.shape[1]), act, train, eps, momentum)


def batchnorm_backward(object dx, object dgamma, object dbeta, cnp.ndarray dout,
                       cnp.ndarray x, object out, cnp.ndarray mean, cnp.ndarray invstd,
                       object gamma, int act, bint train):
    """dx (B, C) <- gradient of the loss w.r.t. x; dgamma, dbeta (C) += their gradients."""
    call(OP_BATCHNORM_BACKWARD, is_f32(x), (dx, dgamma, dbeta, dout, x, out, mean, invstd, gamma),
         (x.shape[0], x.shape[1]), act, train)


def activation_forward(cnp.ndarray out, cnp.ndarray x, int act, double slope):
    """out <- act(x), elementwise over all elements."""
    call(OP_ACTIVATION_FORWARD, is_f32(x), (out, x), (cnp.PyArray_SIZE(x),), act, False, slope)


def activation_backward(cnp.ndarray dx, cnp.ndarray dout, object x, object y, int act,
                        double slope):
    """dx <- dout * act'(x), from the input x and/or the output y (whichever act reads)."""
    call(OP_ACTIVATION_BACKWARD, is_f32(dout), (dx, dout, x, y), (cnp.PyArray_SIZE(dout),),
         act, False, slope)


def embedding_forward(cnp.ndarray out, cnp.ndarray weight, cnp.ndarray idx):
    """out (N, D) <- weight[idx]; idx: int64, in range (checked by the caller)."""
    call(OP_EMBEDDING_FORWARD, is_f32(weight), (out, weight, idx),
         (cnp.PyArray_SIZE(idx), weight.shape[1]))


def embedding_backward(cnp.ndarray dweight, cnp.ndarray dout, cnp.ndarray idx):
    """dweight[idx[i]] += dout[i], in order."""
    call(OP_EMBEDDING_BACKWARD, is_f32(dweight), (dweight, dout, idx),
         (cnp.PyArray_SIZE(idx), dweight.shape[1]))


def cross_entropy_forward(cnp.ndarray probs, cnp.ndarray row_loss, cnp.ndarray logits,
                          cnp.ndarray target):
    """Mean cross-entropy of logits (N, K) against target (N,) int64; probs <- softmax."""
    return call(OP_CROSS_ENTROPY_FORWARD, is_f32(logits), (probs, row_loss, logits, target),
                (logits.shape[0], logits.shape[1]))


def cross_entropy_backward(cnp.ndarray dlogits, cnp.ndarray probs, cnp.ndarray target,
                           double scale):
    """dlogits <- (probs - onehot(target)) * scale."""
    call(OP_CROSS_ENTROPY_BACKWARD, is_f32(probs), (dlogits, probs, target),
         (probs.shape[0], probs.shape[1]), 0, False, scale)


def softmax_forward(cnp.ndarray out, cnp.ndarray x):
    """out <- softmax of x along its last axis."""
    cdef void *po = cnp.PyArray_DATA(out)
    cdef void *px = cnp.PyArray_DATA(x)
    cdef int64_t K = x.shape[x.ndim - 1]
    cdef int64_t N = cnp.PyArray_SIZE(x) // K if K > 0 else 0
    cdef bint f32 = is_f32(x)
    with nogil:
        if f32:
            softmax_forward_f32(<float *>po, <float *>px, N, K)
        else:
            softmax_forward_f64(<double *>po, <double *>px, N, K)


def softmax_backward(cnp.ndarray dx, cnp.ndarray dout, cnp.ndarray y):
    """dx <- y * (dout - sum(dout * y)) along the last axis."""
    cdef void *pdx = cnp.PyArray_DATA(dx)
    cdef void *pd = cnp.PyArray_DATA(dout)
    cdef void *py = cnp.PyArray_DATA(y)
    cdef int64_t K = y.shape[y.ndim - 1]
    cdef int64_t N = cnp.PyArray_SIZE(y) // K if K > 0 else 0
    cdef bint f32 = is_f32(y)
    with nogil:
        if f32:
            softmax_backward_f32(<float *>pdx, <float *>pd, <float *>py, N, K)
        else:
            softmax_backward_f64(<double *>pdx, <double *>pd, <double *>py, N, K)


def dropout_apply(cnp.ndarray out, cnp.ndarray inp, double p, uint64_t seed, uint64_t offset):
    """out <- inp * mask / (1 - p), the mask a function of (seed, offset + element index)."""
    cdef void *po = cnp.PyArray_DATA(out)
    cdef void *pi = cnp.PyArray_DATA(inp)
    cdef int64_t n = cnp.PyArray_SIZE(inp)
    cdef bint f32 = is_f32(inp)
    with nogil:
        if f32:
            dropout_apply_f32(<float *>po, <float *>pi, p, seed, offset, n)
        else:
            dropout_apply_f64(<double *>po, <double *>pi, p, seed, offset, n)


def squared_error_sum(cnp.ndarray pred, cnp.ndarray target):
    """sum((pred - target) ** 2), in a fixed order."""
    cdef void *pp = cnp.PyArray_DATA(pred)
    cdef void *pt = cnp.PyArray_DATA(target)
    cdef int64_t n = cnp.PyArray_SIZE(pred)
    cdef double total
    cdef bint f32 = is_f32(pred)
    with nogil:
        if f32:
            total = squared_error_sum_f32(<float *>pp, <float *>pt, n)
        else:
            total = squared_error_sum_f64(<double *>pp, <double *>pt, n)
    return total


def squared_error_backward(cnp.ndarray dpred, cnp.ndarray pred, cnp.ndarray target,
                           double scale):
    """dpred <- scale * (pred - target)."""
    cdef void *pd = cnp.PyArray_DATA(dpred)
    cdef void *pp = cnp.PyArray_DATA(pred)
    cdef void *pt = cnp.PyArray_DATA(target)
    cdef int64_t n = cnp.PyArray_SIZE(pred)
    cdef bint f32 = is_f32(pred)
    with nogil:
        if f32:
            squared_error_backward_f32(<float *>pd, <float *>pp, <float *>pt, scale, n)
        else:
            squared_error_backward_f64(<double *>pd, <double *>pp, <double *>pt, scale, n)


def sgd_step(cnp.ndarray p, object buf, cnp.ndarray grad, double lr, double momentum,
             double dampening, double weight_decay, double l1, bint nesterov, bint first):
    """One SGD update of the flat buffer p (buf: momentum state or None)."""
    cdef void *pp = cnp.PyArray_DATA(p)
    cdef void *pb = data_or_null(buf)
    cdef void *pg = cnp.PyArray_DATA(grad)
    cdef int64_t n = cnp.PyArray_SIZE(p)
    cdef bint f32 = is_f32(p)
    with nogil:
        if f32:
            sgd_step_f32(<float *>pp, <float *>pb, <float *>pg, lr, momentum, dampening,
                         weight_decay, l1, nesterov, first, n)
        else:
            sgd_step_f64(<double *>pp, <double *>pb, <double *>pg, lr, momentum, dampening,
                         weight_decay, l1, nesterov, first, n)


def adagrad_step(cnp.ndarray p, cnp.ndarray state_sum, cnp.ndarray grad, double clr,
                 double weight_decay, double l1, double eps):
    """One Adagrad update of the flat buffer p."""
    cdef void *pp = cnp.PyArray_DATA(p)
    cdef void *ps = cnp.PyArray_DATA(state_sum)
    cdef void *pg = cnp.PyArray_DATA(grad)
    cdef int64_t n = cnp.PyArray_SIZE(p)
    cdef bint f32 = is_f32(p)
    with nogil:
        if f32:
            adagrad_step_f32(<float *>pp, <float *>ps, <float *>pg, clr, weight_decay, l1,
                             eps, n)
        else:
            adagrad_step_f64(<double *>pp, <double *>ps, <double *>pg, clr, weight_decay, l1,
                             eps, n)


def rmsprop_step(cnp.ndarray p, cnp.ndarray square_avg, object grad_avg, object momentum_buf,
                 cnp.ndarray grad, double lr, double alpha, double eps, double weight_decay,
                 double l1, double momentum):
    """One RMSprop update of the flat buffer p (grad_avg: centered, momentum_buf: momentum)."""
    cdef void *pp = cnp.PyArray_DATA(p)
    cdef void *ps = cnp.PyArray_DATA(square_avg)
    cdef void *pa = data_or_null(grad_avg)
    cdef void *pb = data_or_null(momentum_buf)
    cdef void *pg = cnp.PyArray_DATA(grad)
    cdef int64_t n = cnp.PyArray_SIZE(p)
    cdef bint f32 = is_f32(p)
    with nogil:
        if f32:
            rmsprop_step_f32(<float *>pp, <float *>ps, <float *>pa, <float *>pb, <float *>pg,
                             lr, alpha, eps, weight_decay, l1, momentum, n)
        else:
            rmsprop_step_f64(<double *>pp, <double *>ps, <double *>pa, <double *>pb,
                             <double *>pg, lr, alpha, eps, weight_decay, l1, momentum, n)


def adam_step(cnp.ndarray p, cnp.ndarray exp_avg, cnp.ndarray exp_avg_sq,
              object max_exp_avg_sq, cnp.ndarray grad, double lr, double beta1, double beta2,
              double eps, double weight_decay, double l1, bint decoupled, int64_t step):
    """One Adam (decoupled: AdamW) update of the flat buffer p; step counts from 1."""
    cdef void *pp = cnp.PyArray_DATA(p)
    cdef void *pm = cnp.PyArray_DATA(exp_avg)
    cdef void *pv = cnp.PyArray_DATA(exp_avg_sq)
    cdef void *px = data_or_null(max_exp_avg_sq)
    cdef void *pg = cnp.PyArray_DATA(grad)
    cdef int64_t n = cnp.PyArray_SIZE(p)
    cdef bint f32 = is_f32(p)
    with nogil:
        if f32:
            adam_step_f32(<float *>pp, <float *>pm, <float *>pv, <float *>px, <float *>pg, lr,
                          beta1, beta2, eps, weight_decay, l1, decoupled, step, n)
        else:
            adam_step_f64(<double *>pp, <double *>pm, <double *>pv, <double *>px,
                          <double *>pg, lr, beta1, beta2, eps, weight_decay, l1, decoupled,
                          step, n)


def sum_squares(cnp.ndarray x):
    """sum(x ** 2) in float64, in an order fixed by the size and the machine."""
    cdef void *px = cnp.PyArray_DATA(x)
    cdef int64_t n = cnp.PyArray_SIZE(x)
    cdef bint f32 = is_f32(x)
    cdef double total
    with nogil:
        total = sum_squares_f32(<float *>px, n) if f32 else sum_squares_f64(<double *>px, n)
    return total


def scale_inplace(cnp.ndarray x, double s):
    """x *= s."""
    cdef void *px = cnp.PyArray_DATA(x)
    cdef int64_t n = cnp.PyArray_SIZE(x)
    cdef bint f32 = is_f32(x)
    with nogil:
        if f32:
            scale_inplace_f32(<float *>px, s, n)
        else:
            scale_inplace_f64(<double *>px, s, n)


def zero_inplace(cnp.ndarray x not None):
    """x[...] = 0 for a C-contiguous writeable array, on the team when it is large."""
    if not (cnp.PyArray_IS_C_CONTIGUOUS(x) and cnp.PyArray_ISWRITEABLE(x)):
        raise ValueError("x: expected a C-contiguous writeable array")
    cdef void *px = cnp.PyArray_DATA(x)
    cdef int64_t nbytes = cnp.PyArray_NBYTES(x)
    with nogil:
        zero_fill(px, nbytes)


def clamp_inplace(cnp.ndarray x, double lo, double hi):
    """x = min(max(x, lo), hi)."""
    cdef void *px = cnp.PyArray_DATA(x)
    cdef int64_t n = cnp.PyArray_SIZE(x)
    cdef bint f32 = is_f32(x)
    with nogil:
        if f32:
            clamp_inplace_f32(<float *>px, lo, hi, n)
        else:
            clamp_inplace_f64(<double *>px, lo, hi, n)


# ---- a recorded step (fastnn.fused) ----

cdef class Plan:
    """A fixed list of kernel calls over fixed arrays, run in order in one call without the
    GIL. fastnn.fused records one from a training step the layers took (whose checks it
    relies on: add() checks nothing but that the arrays are numpy arrays). Two arrays change
    from call to call, the batch and the targets: add() takes the strings "input" and
    "target" in their place and run() fills in the arrays it is given."""
    cdef Op *ops
    cdef int n_ops
    cdef list arrays  # every array an op points into, kept alive
    cdef list slots  # (op index, argument index, "input" or "target")

    def __cinit__(self):
        self.ops = NULL
        self.n_ops = 0
        self.arrays = []
        self.slots = []

    def __dealloc__(self):
        free(self.ops)

    def add(self, str kind, bint f32, tuple arrays, tuple sizes=(), int act=0,
            bint train=False, double a=0, double b=0):
        """Append the kernel `kind` (a key of OPS) with its arrays and sizes in its
        argument order (None for a NULL pointer)."""
        slots = []
        for i, arr in enumerate(arrays):
            if isinstance(arr, str):
                if arr not in ("input", "target"):
                    raise ValueError(f"{kind}: argument {i} is {arr!r}")
                slots.append((self.n_ops, i, arr))
        cdef Op *ops = <Op *>realloc(self.ops, (self.n_ops + 1) * sizeof(Op))
        if ops == NULL:
            raise MemoryError()
        self.ops = ops
        fill_op(&self.ops[self.n_ops], OPS[kind], f32,
                tuple(None if isinstance(arr, str) else arr for arr in arrays), sizes, act,
                train, a, b)
        self.slots += slots
        self.arrays += [arr for arr in arrays if isinstance(arr, cnp.ndarray)]
        self.n_ops += 1

    def run(self, cnp.ndarray x not None, cnp.ndarray target not None):
        """Run every op, with `x` and `target` where "input" and "target" were given; returns
        the cross-entropy forward's loss (the last one's, 0 without one)."""
        cdef int i
        for i, j, name in self.slots:
            self.ops[i].p[j] = cnp.PyArray_DATA(x if name == "input" else target)
        cdef double loss = 0, value
        with nogil:
            for i in range(self.n_ops):
                value = run_op(&self.ops[i])
                if self.ops[i].kind == OP_CROSS_ENTROPY_FORWARD:
                    loss = value
        return loss


def index_in_range(cnp.ndarray a not None, int64_t bound):
    """True if `a` is a C-contiguous native int64 array whose every value lies in
    [0, bound); False for any other array."""
    if not (cnp.PyArray_TYPE(a) == cnp.NPY_INT64 and cnp.PyArray_IS_C_CONTIGUOUS(a)
            and is_native_layout(a)):
        return False
    cdef const int64_t *p = <const int64_t *>cnp.PyArray_DATA(a)
    cdef int64_t i, n = cnp.PyArray_SIZE(a)
    cdef bint ok = True
    with nogil:
        for i in range(n):
            ok &= (p[i] >= 0) & (p[i] < bound)
    return ok
