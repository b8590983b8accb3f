/* fastnn's matrix-product core (gemm.c): internal to the kernels, not part of the C API.
 *
 * c (M, N) = [c +] a (M, K) @ b (K, N) [+ bias (N)], then ReLU, tanh or sigmoid, with
 * element (i, p) of a at a[i * rsa + p * csa] and (p, j) of b at b[p * rsb + j * csb]:
 *   - a needs rsa == 1 or csa == 1 (rows or columns contiguous); it is read in place;
 *   - b with csb == 1 is read in place, b with rsb == 1 (a transposed matrix) is packed;
 *   - c is row-major with row stride ldc.
 * The work is split into blocks of rows and columns fixed by the shape; a block is run by one
 * thread, any thread, in any order, and gives the same bits (see gemm_kernel.h), so callers
 * hand blocks out dynamically. Register-blocked micro-kernels for AVX-512 and AVX2+FMA are
 * picked at run time (FASTNN_ISA_*); the generic C kernel (no FMA) differs from them in the
 * last bits, never across thread counts.
 */
#ifndef FASTNN_GEMM_H
#define FASTNN_GEMM_H

#include <stdint.h>
#include "fastnn.h"

#define GEMM_JOB(REAL, SFX)                                                                \
    typedef struct {                                                                       \
        REAL *c;                                                                           \
        const REAL *a, *b, *bias;                                                          \
        int64_t ldc, rsa, csa, rsb, csb, M, N, K;                                          \
        int accumulate; /* c += a @ b (the product summed, then added); else c = a @ b */    \
        int act;        /* FASTNN_ACT_NONE, _RELU, _TANH or _SIGMOID */                     \
        int isa; /* the path (FASTNN_ISA_*, not BLAS): read once by the caller */           \
        int64_t mb, nb, kc, nblocks; /* the blocking, set by gemm_plan */                   \
    } gemm_job_##SFX;                                                                      \
    /* Fill the blocking of a job whose other fields are set; returns the number of blocks \
     * (0 for an empty output). */                                      \
    int64_t gemm_plan_##SFX(gemm_job_##SFX *job);                                          \
    /* Elements of scratch a block needs: to pack b, and for the partial sums of a product \
     * accumulated over several K chunks (0 when neither). */                              \
    int64_t gemm_scratch_size_##SFX(const gemm_job_##SFX *job);                            \
    /* Compute block blk of the job on the calling thread; scratch: gemm_scratch_size      \
     * elements of this thread's own. */                                                   \
    void gemm_run_block_##SFX(const gemm_job_##SFX *job, int64_t blk, REAL *scratch);

GEMM_JOB(float, f32)
GEMM_JOB(double, f64)
#undef GEMM_JOB

#endif
