# The Cython binding of csrc/: the runtime's settings, and every kernel through one table
# (KERNELS), one Kernel class that checks a call against it, and one C call site (run_op).
#
# A Kernel checks what would crash or corrupt memory (types, dtypes, shapes, layout,
# overlap, index ranges); fastnn.functional and the layers check first, with messages in a
# user's terms.
cimport numpy as cnp
import numpy as np
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
                                     double momentum, int act, int unbiased, int64_t B,
                                     int64_t C)
    void batchnorm_forward_train_f64(double *out, double *save_mean, double *save_invstd,
                                     double *running_mean, double *running_var,
                                     const double *x, const double *gamma, const double *beta,
                                     double eps, double momentum, int act, int unbiased,
                                     int64_t B, int64_t C)
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
    void dropout_apply_f32(float *out, const float *inp, double p, double scale, uint64_t seed,
                           uint64_t offset, int64_t n)
    void dropout_apply_f64(double *out, const double *inp, double p, double scale, uint64_t seed,
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
                                     const int64_t *target, const float *weight,
                                     int64_t ignore_index, double smoothing, int mean,
                                     int64_t N, int64_t K)
    double cross_entropy_forward_f64(double *probs, double *row_loss, const double *logits,
                                     const int64_t *target, const double *weight,
                                     int64_t ignore_index, double smoothing, int mean,
                                     int64_t N, int64_t K)
    void cross_entropy_backward_f32(float *dlogits, const float *probs, const int64_t *target,
                                    const float *weight, const float *row_dloss,
                                    int64_t ignore_index, double smoothing, double dloss,
                                    int mean, int64_t N, int64_t K)
    void cross_entropy_backward_f64(double *dlogits, const double *probs,
                                    const int64_t *target, const double *weight,
                                    const double *row_dloss, int64_t ignore_index,
                                    double smoothing, double dloss, int mean, int64_t N,
                                    int64_t K)
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
    return overlap(arrays, n_outputs, NULL)


cdef object overlap(tuple arrays, Py_ssize_t n_outputs, const int *flags):
    """first_overlap's loop; with flags, the written arrays are those flagged WRITTEN (any of
    the first n_outputs) instead of all of them."""
    cdef Py_ssize_t i, j
    cdef char *lo
    cdef char *hi
    cdef char *blo
    for i in range(n_outputs):
        if arrays[i] is None or (flags != NULL and not flags[i] & WRITTEN):
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


cdef inline bint is_f32(cnp.ndarray a):
    return cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32


def zero_inplace(cnp.ndarray x not None):
    """x[...] = 0 for a C-contiguous writeable array, on the team when it is large."""
    if not (cnp.PyArray_IS_C_CONTIGUOUS(x) and cnp.PyArray_ISWRITEABLE(x)):
        raise ValueError("x: expected a C-contiguous writeable array")
    cdef void *px = cnp.PyArray_DATA(x)
    cdef int64_t nbytes = cnp.PyArray_NBYTES(x)
    with nogil:
        zero_fill(px, nbytes)


# ---- the kernels: one table, one Kernel class, one C call site ----
#
# KERNELS below is the one list, outside csrc/fastnn.h, of each kernel's arguments: run_op
# passes them on in that order, and tests/test_ops.py holds the NumPy twin's signatures
# (fastnn.ops) to it and runs every kernel on every path. A Kernel is one call, described
# by the kernel's name and its arguments in that order; building it checks them against the
# table and fills an Op, which run_op passes to the C function. fastnn.ops runs Kernels (or, for the reference backend, the NumPy twin on
# their arguments), layers keep the Kernel of each call they make and run it again while its
# arguments stay the same (update), and a Plan (fastnn.fused) runs recorded Kernels in one
# call.

from libc.stdlib cimport realloc, free

cdef enum:
    OP_EMBEDDING_FORWARD
    OP_EMBEDDING_BACKWARD
    OP_LINEAR_FORWARD
    OP_LINEAR_BACKWARD
    OP_BATCHNORM_FORWARD_TRAIN
    OP_BATCHNORM_FORWARD_EVAL
    OP_BATCHNORM_BACKWARD
    OP_ACTIVATION_FORWARD
    OP_ACTIVATION_BACKWARD
    OP_SOFTMAX_FORWARD
    OP_SOFTMAX_BACKWARD
    OP_DROPOUT_APPLY
    OP_CROSS_ENTROPY_FORWARD
    OP_CROSS_ENTROPY_BACKWARD
    OP_SQUARED_ERROR_SUM
    OP_SQUARED_ERROR_BACKWARD
    OP_SGD_STEP
    OP_ADAGRAD_STEP
    OP_RMSPROP_STEP
    OP_ADAM_STEP
    OP_SUM_SQUARES
    OP_SCALE_INPLACE
    OP_CLAMP_INPLACE

# name: (op, arrays, sizes, scalars), each in the kernel's argument order in fastnn.h.
# An array is name:shape, the shape one letter per dimension (a letter is one size wherever
# it appears in the call), "*" for any shape (the same for every "*" of the call) or "*D"
# (that shape and one more dimension D), then flags: ! the kernel writes it (writeable and
# sharing memory with no other argument); ? it may be None (the kernel gets NULL); ~ it may
# be None when act is FASTNN_ACT_NONE; #L int64 values in [0, L) (indices, classes: checked
# on every call, as a batch buffer may be refilled in place), #L+s: or equal to the integer
# scalar s; % float64 (otherwise the call's float dtype).
# Sizes: letters, or n, R, K: the elements, rows and last dimension of "*". Scalars: name:d
# (double), name:i (integer), name:u (unsigned 64-bit).
KERNELS = {
    "embedding_forward": (OP_EMBEDDING_FORWARD, "out:*D! weight:VD idx:*#V", "n D", ""),
    "embedding_backward": (OP_EMBEDDING_BACKWARD, "dweight:VD! dy:*D idx:*#V", "n D", ""),
    "linear_forward": (OP_LINEAR_FORWARD, "out:BO! x:BC weight:OC bias:O?", "B C O", "act:i"),
    "linear_backward": (OP_LINEAR_BACKWARD,
                        "dx:BC!? dweight:OC!? dbias:O!? work:BO!~ dy:BO x:BC weight:OC y:BO~",
                        "B C O", "act:i"),
    "batchnorm_forward_train": (OP_BATCHNORM_FORWARD_TRAIN,
                                "out:BC! save_mean:C! save_invstd:C! running_mean:C!? "
                                "running_var:C!? x:BC weight:C? bias:C?",
                                "B C", "eps:d momentum:d act:i unbiased:i"),
    "batchnorm_forward_eval": (OP_BATCHNORM_FORWARD_EVAL,
                               "out:BC! save_mean:C! save_invstd:C! running_mean:C "
                               "running_var:C x:BC weight:C? bias:C?", "B C", "eps:d act:i"),
    "batchnorm_backward": (OP_BATCHNORM_BACKWARD,
                           "dx:BC! dweight:C!? dbias:C!? dy:BC x:BC y:BC~ mean:C invstd:C "
                           "weight:C?", "B C", "act:i training:i"),
    "activation_forward": (OP_ACTIVATION_FORWARD, "out:*! x:*", "n", "act:i negative_slope:d"),
    "activation_backward": (OP_ACTIVATION_BACKWARD, "dx:*! dy:* x:* y:*", "n",
                            "act:i negative_slope:d"),
    "softmax_forward": (OP_SOFTMAX_FORWARD, "out:*! x:*", "R K", ""),
    "softmax_backward": (OP_SOFTMAX_BACKWARD, "dx:*! dy:* y:*", "R K", ""),
    "dropout_apply": (OP_DROPOUT_APPLY, "out:*! x:*", "n", "p:d scale:d seed:u offset:u"),
    "cross_entropy_forward": (OP_CROSS_ENTROPY_FORWARD,
                              "probs:NK! row_loss:N%! logits:NK target:N#K+ignore_index "
                              "weight:K?", "N K", "ignore_index:i smoothing:d mean:i"),
    "cross_entropy_backward": (OP_CROSS_ENTROPY_BACKWARD,
                               "dlogits:NK! probs:NK target:N#K+ignore_index weight:K? "
                               "row_dloss:N?", "N K",
                               "ignore_index:i smoothing:d dloss:d mean:i"),
    "squared_error_sum": (OP_SQUARED_ERROR_SUM, "pred:* target:*", "n", ""),
    "squared_error_backward": (OP_SQUARED_ERROR_BACKWARD, "dpred:*! pred:* target:*", "n",
                               "scale:d"),
    "sgd_step": (OP_SGD_STEP, "p:n! buf:n!? grad:n", "n",
                 "lr:d momentum:d dampening:d weight_decay:d l1:d nesterov:i first:i"),
    "adagrad_step": (OP_ADAGRAD_STEP, "p:n! state_sum:n! grad:n", "n",
                     "clr:d weight_decay:d l1:d eps:d"),
    "rmsprop_step": (OP_RMSPROP_STEP,
                     "p:n! square_avg:n! grad_avg:n!? momentum_buf:n!? grad:n", "n",
                     "lr:d alpha:d eps:d weight_decay:d l1:d momentum:d"),
    "adam_step": (OP_ADAM_STEP,
                  "p:n! exp_avg:n! exp_avg_sq:n! max_exp_avg_sq:n!? grad:n", "n",
                  "lr:d beta1:d beta2:d eps:d weight_decay:d l1:d decoupled:i step:i"),
    "sum_squares": (OP_SUM_SQUARES, "x:n", "n", ""),
    "scale_inplace": (OP_SCALE_INPLACE, "x:n!", "n", "s:d"),
    "clamp_inplace": (OP_CLAMP_INPLACE, "x:n!", "n", "lo:d hi:d"),
}

cdef enum:
    MAX_ARRAYS = 9
    MAX_SIZES = 3
    MAX_REALS = 6
    MAX_INTS = 2
    MAX_WORDS = 2
    # array flags
    WRITTEN = 1
    OPTIONAL = 2
    OPTIONAL_WITHOUT_ACT = 4
    # array element types
    CALL_FLOAT = 0
    INT64 = 1
    FLOAT64 = 2


cdef struct Op:
    int kind
    bint f32  # the call's float arrays are float32 (else float64)
    void *p[MAX_ARRAYS]  # the arrays; NULL for None
    int64_t n[MAX_SIZES]  # the sizes
    double d[MAX_REALS]  # the double scalars
    int64_t i[MAX_INTS]  # the integer scalars
    uint64_t u[MAX_WORDS]  # the unsigned 64-bit scalars


cdef class Spec:
    """One row of KERNELS, parsed."""
    cdef readonly str name
    cdef readonly int kind, n_arrays
    cdef readonly tuple array_names, shapes, sizes, scalar_names, scalar_types
    cdef int flags[MAX_ARRAYS]
    cdef int types[MAX_ARRAYS]
    cdef readonly tuple bounds  # per array: the letter bounding its int64 values, or None
    cdef int skip[MAX_ARRAYS]  # per array: the Op's integer scalar also allowed, or -1
    cdef readonly tuple skip_names  # per array: that scalar's name, or ""
    cdef readonly int act_index  # the position of act among the arguments, or -1

    def __init__(self, str name, int kind, str arrays, str sizes, str scalars):
        self.name, self.kind = name, kind
        names, shapes, bounds, skips = [], [], [], []
        for j, item in enumerate(arrays.split()):
            array_name, shape = item.split(":")
            shape, _, bound = shape.partition("#")
            bound, _, skip = bound.partition("+")
            skips.append(skip)
            bounds.append(bound or None)
            shape += "#" if bound else ""
            self.flags[j] = ((WRITTEN if "!" in shape else 0) | (OPTIONAL if "?" in shape else 0)
                             | (OPTIONAL_WITHOUT_ACT if "~" in shape else 0))
            self.types[j] = INT64 if "#" in shape else FLOAT64 if "%" in shape else CALL_FLOAT
            names.append(array_name)
            shapes.append(shape.rstrip("!?~#%"))
        self.n_arrays = len(names)
        self.array_names, self.shapes, self.bounds = tuple(names), tuple(shapes), tuple(bounds)
        self.sizes = tuple(sizes.split())
        pairs = [item.split(":") for item in scalars.split()]
        self.scalar_names = tuple(p[0] for p in pairs)
        self.scalar_types = tuple(p[1] for p in pairs)
        ints = [p[0] for p in pairs if p[1] == "i"]
        for j, skip in enumerate(skips):
            self.skip[j] = ints.index(skip) if skip else -1
        self.skip_names = tuple(skips)
        self.act_index = (self.n_arrays + self.scalar_names.index("act")
                          if "act" in self.scalar_names else -1)
        if (self.n_arrays > MAX_ARRAYS or len(self.sizes) > MAX_SIZES
                or self.scalar_types.count("d") > MAX_REALS
                or self.scalar_types.count("i") > MAX_INTS
                or self.scalar_types.count("u") > MAX_WORDS):
            raise ValueError(f"{name}: more arguments than an Op holds")

    @property
    def arguments(self):
        """The argument names, in order: arrays, then scalars."""
        return self.array_names + self.scalar_names


SPECS = {name: Spec(name, *row) for name, row in KERNELS.items()}


cdef inline bint native_c_array(cnp.ndarray a):
    return cnp.PyArray_IS_C_CONTIGUOUS(a) and is_native_layout(a)


cdef inline bint same_shape(cnp.ndarray a, cnp.ndarray b):
    cdef int j, ndim = cnp.PyArray_NDIM(a)
    if ndim != cnp.PyArray_NDIM(b):
        return False
    for j in range(ndim):
        if cnp.PyArray_DIM(a, j) != cnp.PyArray_DIM(b, j):
            return False
    return True


cdef class Kernel:
    """One kernel call: `name` (a key of KERNELS) and `args`, its arguments in the table's
    order (arrays, None where the table allows it, then scalars). Building one checks every
    array against the table (type, dtype, shape, layout, writeable, no output overlapping
    another argument) and raises TypeError or ValueError naming the argument. run() makes
    the call without the GIL."""
    cdef Op op
    cdef readonly Spec spec
    cdef readonly tuple args
    cdef int64_t bound[MAX_ARRAYS]  # the bound of each int64 array's values, or -1

    def __init__(self, str name, tuple args):
        spec = SPECS.get(name)
        if spec is None:
            raise ValueError(f"name: expected a kernel of fastnn.h, one of {sorted(SPECS)}, "
                             f"got {name!r}")
        self.spec = spec
        cdef Spec s = spec
        if len(args) != len(s.arguments):
            raise TypeError(f"{name}: expected {len(s.arguments)} arguments "
                            f"({', '.join(s.arguments)}), got {len(args)}")
        self.op.kind = s.kind
        self.fill_scalars(args)
        act_none = s.act_index < 0 or args[s.act_index] == FASTNN_ACT_NONE
        dims, star = {}, None
        cdef int float_type = -1, j, typenum
        cdef cnp.ndarray a
        for j in range(s.n_arrays):
            arg_name, shape, value = s.array_names[j], s.shapes[j], args[j]
            if value is None:
                if not (s.flags[j] & OPTIONAL or (s.flags[j] & OPTIONAL_WITHOUT_ACT and act_none)):
                    raise TypeError(f"{name}: {arg_name} is required, got None")
                self.op.p[j] = NULL
                continue
            if not isinstance(value, cnp.ndarray):
                raise TypeError(f"{name}: {arg_name}: expected a numpy.ndarray, got "
                                f"{type(value).__name__}")
            a = <cnp.ndarray>value
            typenum = cnp.PyArray_TYPE(a)
            if s.types[j] == INT64 and typenum != cnp.NPY_INT64:
                raise TypeError(f"{name}: {arg_name}: expected dtype int64, got {a.dtype}")
            if s.types[j] == FLOAT64 and typenum != cnp.NPY_FLOAT64:
                raise TypeError(f"{name}: {arg_name}: expected dtype float64, got {a.dtype}")
            if s.types[j] == CALL_FLOAT:
                if float_type < 0 and typenum in (cnp.NPY_FLOAT32, cnp.NPY_FLOAT64):
                    float_type = typenum
                if typenum != float_type:
                    expected = "float32 or float64" if float_type < 0 else \
                        str(cnp.PyArray_DescrFromType(float_type))
                    raise TypeError(f"{name}: {arg_name}: expected dtype {expected}, got "
                                    f"{a.dtype}")
            if not native_c_array(a):
                raise ValueError(f"{name}: {arg_name}: expected a C-contiguous, aligned array "
                                 "in native byte order")
            if s.flags[j] & WRITTEN and not cnp.PyArray_ISWRITEABLE(a):
                raise ValueError(f"{name}: {arg_name}: expected a writeable array")
            got = value.shape  # a tuple (a.shape is the C array)
            if shape.startswith("*"):
                k = len(got) - (len(shape) - 1)
                if k < 0 or (star is not None and got[:k] != star):
                    raise ValueError(f"{name}: {arg_name}: expected shape "
                                     f"{'(any)' if star is None else star} + {len(shape) - 1} "
                                     f"dimension(s), got {got}")
                star, letters, got = got[:k], shape[1:], got[k:]
            else:
                letters = shape
                if len(got) != len(shape):
                    raise ValueError(f"{name}: {arg_name}: expected a {len(shape)}-d array "
                                     f"({shape}), got shape {got}")
            for letter, size in zip(letters, got):
                if dims.setdefault(letter, size) != size:
                    raise ValueError(f"{name}: {arg_name}: dimension {letter} is {size}, "
                                     f"expected {dims[letter]} (as the arguments before)")
            self.op.p[j] = cnp.PyArray_DATA(a)
        if float_type < 0:
            raise TypeError(f"{name}: expected at least one float32 or float64 array")
        self.op.f32 = float_type == cnp.NPY_FLOAT32
        for j in range(s.n_arrays):
            letter = s.bounds[j]
            self.bound[j] = dims[letter] if letter is not None and args[j] is not None else -1
            if self.bound[j] >= 0 and not self.values_in_range(j, <cnp.ndarray>args[j]):
                values = np.asarray(args[j]).reshape(-1)
                bad = (values < 0) | (values >= self.bound[j])
                also = ""
                if s.skip[j] >= 0:
                    bad &= values != self.op.i[s.skip[j]]
                    also = f" and not {s.skip_names[j]} ({self.op.i[s.skip[j]]})"
                raise IndexError(f"{name}: {s.array_names[j]}: {values[bad][0]} is out of range "
                                 f"[0, {self.bound[j]}){also}")
        hit = overlap(args[:s.n_arrays], s.n_arrays, s.flags)
        if hit is not None:
            raise ValueError(f"{name}: {s.array_names[hit[0]]}: must not share memory with "
                             f"{s.array_names[hit[1]]}")
        for j, size in enumerate(s.sizes):
            if size in dims:
                self.op.n[j] = dims[size]
            elif star is None:
                raise ValueError(f"{name}: size {size} needs a '*' array")
            elif size == "n":
                self.op.n[j] = _product(star)
            elif len(star) == 0:
                raise ValueError(f"{name}: {s.array_names[0]}: expected at least a 1-d array")
            elif size == "K":
                self.op.n[j] = star[len(star) - 1]
            else:  # R
                self.op.n[j] = _product(star[:len(star) - 1]) if star[len(star) - 1] else 0
        self.args = args

    cdef int fill_scalars(self, tuple args) except -1:
        """Copy the scalars of args into the Op; -1 with ValueError for an unknown act."""
        cdef Spec s = self.spec
        if s.act_index >= 0 and not is_act(args[s.act_index]):
            raise ValueError(f"{s.name}: act: expected one of fastnn.h's activation codes "
                             f"{sorted(ELEMENTWISE.values())}, got {args[s.act_index]!r}")
        cdef int nd = 0, ni = 0, nu = 0, j = s.n_arrays
        try:
            for t in s.scalar_types:
                if t == "d":
                    self.op.d[nd] = args[j]
                    nd += 1
                elif t == "i":
                    self.op.i[ni] = args[j]
                    ni += 1
                else:
                    self.op.u[nu] = args[j]
                    nu += 1
                j += 1
        except (OverflowError, TypeError):
            kind = {"d": "a number", "i": "a 64-bit integer", "u": "an unsigned 64-bit integer"}
            raise ValueError(f"{s.name}: {s.scalar_names[j - s.n_arrays]}: expected "
                             f"{kind[s.scalar_types[j - s.n_arrays]]}, got {args[j]!r}") from None
        return 0

    @property
    def name(self):
        return self.spec.name

    def update(self, tuple args):
        """Point the call at `args` (this kernel's arguments again) when every array that
        differs from the current one has the same dtype, shape and layout and none of the
        outputs overlaps another argument: then True, and run() makes the new call. False
        otherwise, unchanged: build a new Kernel, whose checks say what is wrong. The
        common case, the same arrays again, costs one identity test per array."""
        cdef Spec s = self.spec
        if len(args) != len(self.args) or (s.act_index >= 0 and not is_act(args[s.act_index])):
            return False
        cdef int j
        cdef bint changed = False
        cdef cnp.ndarray a, old
        for j in range(s.n_arrays):
            new, previous = args[j], self.args[j]
            if new is previous:
                continue
            if new is None or previous is None or type(new) is not cnp.ndarray:
                return False
            a, old = <cnp.ndarray>new, <cnp.ndarray>previous
            if (cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(old) or not native_c_array(a)
                    or (s.flags[j] & WRITTEN and not cnp.PyArray_ISWRITEABLE(a))
                    or not same_shape(a, old)):
                return False
            changed = True
        if changed and overlap(args[:s.n_arrays], s.n_arrays, s.flags) is not None:
            return False
        cdef Op before = self.op
        try:
            self.fill_scalars(args)
        except ValueError:
            self.op = before  # a bad scalar: nothing changes
            return False
        for j in range(s.n_arrays):  # after the scalars: a bound may allow one of them
            if self.bound[j] >= 0 and not self.values_in_range(j, <cnp.ndarray>args[j]):
                self.op = before
                return False
        if changed:
            for j in range(s.n_arrays):
                self.op.p[j] = NULL if args[j] is None else cnp.PyArray_DATA(<cnp.ndarray>args[j])
        self.args = args  # after the pointers: it keeps their arrays alive
        return True

    cdef bint values_in_range(self, int j, cnp.ndarray a):
        """Whether array j's values are in range (and its scalar, if the table allows one)."""
        cdef int k = self.spec.skip[j]
        return in_range(a, self.bound[j], k >= 0, self.op.i[k] if k >= 0 else 0)

    def run(self):
        """Make the call; returns what the kernel returns (a loss or a sum), else 0."""
        cdef double result
        with nogil:
            result = run_op(&self.op)
        return result

    def __reduce__(self):  # pickle and copy: built again from the (copied) arguments
        return Kernel, (self.spec.name, self.args)

    def __repr__(self):
        return f"Kernel({self.spec.name!r}, {len(self.args)} arguments)"


cdef inline bint is_act(object code):
    return type(code) is int and FASTNN_ACT_NONE <= code <= FASTNN_ACT_GELU_TANH


cdef int64_t _product(tuple shape):
    cdef int64_t total = 1
    for size in shape:
        total *= <int64_t>size
    return total


def call(str name, *args):
    """Build the Kernel `name` on args and run it (the native backend's every kernel)."""
    return Kernel(name, args).run()


cdef double run_op(Op *op) noexcept nogil:
    """Call one kernel: the arrays, sizes and scalars in fastnn.h's order (KERNELS)."""
    cdef void **p = op.p
    cdef int64_t *n = op.n
    cdef double *d = op.d
    cdef int64_t *i = op.i
    cdef uint64_t *u = op.u
    cdef int k = op.kind
    if k == OP_EMBEDDING_FORWARD:
        if op.f32: embedding_forward_f32(<float *>p[0], <float *>p[1], <int64_t *>p[2], n[0], n[1])
        else: embedding_forward_f64(<double *>p[0], <double *>p[1], <int64_t *>p[2], n[0], n[1])
    elif k == OP_EMBEDDING_BACKWARD:
        if op.f32: embedding_backward_f32(<float *>p[0], <float *>p[1], <int64_t *>p[2], n[0], n[1])
        else: embedding_backward_f64(<double *>p[0], <double *>p[1], <int64_t *>p[2], n[0], n[1])
    elif k == OP_LINEAR_FORWARD:
        if op.f32:
            linear_forward_f32(<float *>p[0], <float *>p[1], <float *>p[2], <float *>p[3],
                               i[0], n[0], n[1], n[2])
        else:
            linear_forward_f64(<double *>p[0], <double *>p[1], <double *>p[2], <double *>p[3],
                               i[0], n[0], n[1], n[2])
    elif k == OP_LINEAR_BACKWARD:
        if op.f32:
            linear_backward_f32(<float *>p[0], <float *>p[1], <float *>p[2], <float *>p[3],
                                <float *>p[4], <float *>p[5], <float *>p[6], <float *>p[7],
                                i[0], n[0], n[1], n[2])
        else:
            linear_backward_f64(<double *>p[0], <double *>p[1], <double *>p[2], <double *>p[3],
                                <double *>p[4], <double *>p[5], <double *>p[6],
                                <double *>p[7], i[0], n[0], n[1], n[2])
    elif k == OP_BATCHNORM_FORWARD_TRAIN:
        if op.f32:
            batchnorm_forward_train_f32(<float *>p[0], <float *>p[1], <float *>p[2],
                                        <float *>p[3], <float *>p[4], <float *>p[5],
                                        <float *>p[6], <float *>p[7], d[0], d[1], i[0],
                                        i[1], n[0], n[1])
        else:
            batchnorm_forward_train_f64(<double *>p[0], <double *>p[1], <double *>p[2],
                                        <double *>p[3], <double *>p[4], <double *>p[5],
                                        <double *>p[6], <double *>p[7], d[0], d[1], i[0],
                                        i[1], n[0], n[1])
    elif k == OP_BATCHNORM_FORWARD_EVAL:
        if op.f32:
            batchnorm_forward_eval_f32(<float *>p[0], <float *>p[1], <float *>p[2],
                                       <float *>p[3], <float *>p[4], <float *>p[5],
                                       <float *>p[6], <float *>p[7], d[0], i[0], n[0], n[1])
        else:
            batchnorm_forward_eval_f64(<double *>p[0], <double *>p[1], <double *>p[2],
                                       <double *>p[3], <double *>p[4], <double *>p[5],
                                       <double *>p[6], <double *>p[7], d[0], i[0], n[0], n[1])
    elif k == OP_BATCHNORM_BACKWARD:
        if op.f32:
            batchnorm_backward_f32(<float *>p[0], <float *>p[1], <float *>p[2], <float *>p[3],
                                   <float *>p[4], <float *>p[5], <float *>p[6], <float *>p[7],
                                   <float *>p[8], i[0], i[1], n[0], n[1])
        else:
            batchnorm_backward_f64(<double *>p[0], <double *>p[1], <double *>p[2],
                                   <double *>p[3], <double *>p[4], <double *>p[5],
                                   <double *>p[6], <double *>p[7], <double *>p[8], i[0], i[1],
                                   n[0], n[1])
    elif k == OP_ACTIVATION_FORWARD:
        if op.f32: activation_forward_f32(<float *>p[0], <float *>p[1], i[0], d[0], n[0])
        else: activation_forward_f64(<double *>p[0], <double *>p[1], i[0], d[0], n[0])
    elif k == OP_ACTIVATION_BACKWARD:
        if op.f32:
            activation_backward_f32(<float *>p[0], <float *>p[1], <float *>p[2], <float *>p[3],
                                    i[0], d[0], n[0])
        else:
            activation_backward_f64(<double *>p[0], <double *>p[1], <double *>p[2],
                                    <double *>p[3], i[0], d[0], n[0])
    elif k == OP_SOFTMAX_FORWARD:
        if op.f32: softmax_forward_f32(<float *>p[0], <float *>p[1], n[0], n[1])
        else: softmax_forward_f64(<double *>p[0], <double *>p[1], n[0], n[1])
    elif k == OP_SOFTMAX_BACKWARD:
        if op.f32: softmax_backward_f32(<float *>p[0], <float *>p[1], <float *>p[2], n[0], n[1])
        else: softmax_backward_f64(<double *>p[0], <double *>p[1], <double *>p[2], n[0], n[1])
    elif k == OP_DROPOUT_APPLY:
        if op.f32: dropout_apply_f32(<float *>p[0], <float *>p[1], d[0], d[1], u[0], u[1], n[0])
        else: dropout_apply_f64(<double *>p[0], <double *>p[1], d[0], d[1], u[0], u[1], n[0])
    elif k == OP_CROSS_ENTROPY_FORWARD:
        if op.f32:
            return cross_entropy_forward_f32(<float *>p[0], <double *>p[1], <float *>p[2],
                                             <int64_t *>p[3], <float *>p[4], i[0], d[0],
                                             <int>i[1], n[0], n[1])
        return cross_entropy_forward_f64(<double *>p[0], <double *>p[1], <double *>p[2],
                                         <int64_t *>p[3], <double *>p[4], i[0], d[0],
                                         <int>i[1], n[0], n[1])
    elif k == OP_CROSS_ENTROPY_BACKWARD:
        if op.f32:
            cross_entropy_backward_f32(<float *>p[0], <float *>p[1], <int64_t *>p[2],
                                       <float *>p[3], <float *>p[4], i[0], d[0], d[1],
                                       <int>i[1], n[0], n[1])
        else:
            cross_entropy_backward_f64(<double *>p[0], <double *>p[1], <int64_t *>p[2],
                                       <double *>p[3], <double *>p[4], i[0], d[0], d[1],
                                       <int>i[1], n[0], n[1])
    elif k == OP_SQUARED_ERROR_SUM:
        if op.f32: return squared_error_sum_f32(<float *>p[0], <float *>p[1], n[0])
        return squared_error_sum_f64(<double *>p[0], <double *>p[1], n[0])
    elif k == OP_SQUARED_ERROR_BACKWARD:
        if op.f32:
            squared_error_backward_f32(<float *>p[0], <float *>p[1], <float *>p[2], d[0], n[0])
        else:
            squared_error_backward_f64(<double *>p[0], <double *>p[1], <double *>p[2], d[0],
                                       n[0])
    elif k == OP_SGD_STEP:
        if op.f32:
            sgd_step_f32(<float *>p[0], <float *>p[1], <float *>p[2], d[0], d[1], d[2], d[3],
                         d[4], i[0], i[1], n[0])
        else:
            sgd_step_f64(<double *>p[0], <double *>p[1], <double *>p[2], d[0], d[1], d[2],
                         d[3], d[4], i[0], i[1], n[0])
    elif k == OP_ADAGRAD_STEP:
        if op.f32:
            adagrad_step_f32(<float *>p[0], <float *>p[1], <float *>p[2], d[0], d[1], d[2],
                             d[3], n[0])
        else:
            adagrad_step_f64(<double *>p[0], <double *>p[1], <double *>p[2], d[0], d[1], d[2],
                             d[3], n[0])
    elif k == OP_RMSPROP_STEP:
        if op.f32:
            rmsprop_step_f32(<float *>p[0], <float *>p[1], <float *>p[2], <float *>p[3],
                             <float *>p[4], d[0], d[1], d[2], d[3], d[4], d[5], n[0])
        else:
            rmsprop_step_f64(<double *>p[0], <double *>p[1], <double *>p[2], <double *>p[3],
                             <double *>p[4], d[0], d[1], d[2], d[3], d[4], d[5], n[0])
    elif k == OP_ADAM_STEP:
        if op.f32:
            adam_step_f32(<float *>p[0], <float *>p[1], <float *>p[2], <float *>p[3],
                          <float *>p[4], d[0], d[1], d[2], d[3], d[4], d[5], i[0], i[1], n[0])
        else:
            adam_step_f64(<double *>p[0], <double *>p[1], <double *>p[2], <double *>p[3],
                          <double *>p[4], d[0], d[1], d[2], d[3], d[4], d[5], i[0], i[1], n[0])
    elif k == OP_SUM_SQUARES:
        if op.f32: return sum_squares_f32(<float *>p[0], n[0])
        return sum_squares_f64(<double *>p[0], n[0])
    elif k == OP_SCALE_INPLACE:
        if op.f32: scale_inplace_f32(<float *>p[0], d[0], n[0])
        else: scale_inplace_f64(<double *>p[0], d[0], n[0])
    elif k == OP_CLAMP_INPLACE:
        if op.f32: clamp_inplace_f32(<float *>p[0], d[0], d[1], n[0])
        else: clamp_inplace_f64(<double *>p[0], d[0], d[1], n[0])
    return 0


# ---- a recorded step (fastnn.fused) ----

cdef class Plan:
    """Kernels run in order in one call without the GIL. fastnn.fused records one from a
    training step the layers took. Two arrays change from call to call, the batch and the
    targets: add() marks where a kernel's arguments are them, and run() points those at the
    arrays it is given."""
    cdef Op *ops
    cdef int n_ops
    cdef list arguments  # each op's arguments as added: the arrays it points into, kept alive
    cdef list slots  # (op index, argument index, 0 for the input or 1 for the target)

    def __cinit__(self):
        self.ops = NULL
        self.n_ops = 0
        self.arguments = []
        self.slots = []

    def __dealloc__(self):
        free(self.ops)

    def add(self, Kernel kernel not None, object x, object target):
        """Append `kernel`; the arguments that are `x` or `target` themselves become the
        input and target slots of run()."""
        cdef Op *ops = <Op *>realloc(self.ops, (self.n_ops + 1) * sizeof(Op))
        if ops == NULL:
            raise MemoryError()
        self.ops = ops
        self.ops[self.n_ops] = kernel.op
        for j, arg in enumerate(kernel.args[:kernel.spec.n_arrays]):
            if arg is not None and (arg is x or arg is target):
                self.slots.append((self.n_ops, j, 0 if arg is x else 1))
        self.arguments.append(kernel.args)
        self.n_ops += 1

    def run(self, cnp.ndarray x not None, cnp.ndarray target not None):
        """Run every op, with `x` and `target` in their slots; returns the cross-entropy
        forward's loss (the last one's, 0 without one)."""
        cdef int i
        for i, j, which in self.slots:
            self.ops[i].p[j] = cnp.PyArray_DATA(target if which else x)
        cdef double loss = 0, value
        with nogil:
            for i in range(self.n_ops):
                value = run_op(&self.ops[i])
                if self.ops[i].kind == OP_CROSS_ENTROPY_FORWARD:
                    loss = value
        return loss


def attributes_are(list objects, list names, list values, bint equal):
    """Whether getattr(objects[i], names[i]) is values[i] for every i (equal: or == it)."""
    cdef Py_ssize_t i
    for i in range(len(objects)):
        value = getattr(objects[i], names[i])
        if value is not values[i] and not (equal and value == values[i]):
            return False
    return True


def items_are(list a, list b):
    """Whether a[i] is b[i] for every i, the lists of one length."""
    cdef Py_ssize_t i
    if len(a) != len(b):
        return False
    for i in range(len(a)):
        if a[i] is not b[i]:
            return False
    return True


cdef bint in_range(cnp.ndarray a, int64_t bound, bint also, int64_t value):
    """Whether every value of the int64 array `a` lies in [0, bound), or (when `also`)
    equals `value`."""
    cdef const int64_t *p = <const int64_t *>cnp.PyArray_DATA(a)
    cdef int64_t i, n = cnp.PyArray_SIZE(a)
    cdef bint ok = True
    with nogil:
        for i in range(n):
            ok &= ((p[i] >= 0) & (p[i] < bound)) | (also & (p[i] == value))
    return ok


def index_in_range(cnp.ndarray a not None, int64_t bound, also=None):
    """True if `a` is a C-contiguous native int64 array whose every value lies in
    [0, bound) (or equals `also`, when given); False for any other array."""
    return (cnp.PyArray_TYPE(a) == cnp.NPY_INT64 and native_c_array(a)
            and in_range(a, bound, also is not None, 0 if also is None else also))
