/* Internal helpers shared by the kernel files (not part of the public C API). */
#ifndef FASTNN_RUNTIME_H
#define FASTNN_RUNTIME_H

#include <stddef.h>
#include "fastnn.h"

/* FASTNN_HOT marks a memory-bound loop kernel: on x86-64 Linux with GCC it is compiled three
 * times, for the portable baseline, x86-64-v3 (AVX2, FMA) and x86-64-v4 (AVX-512), and the
 * loader picks the one the CPU runs (an ifunc). A build tuned with -march=native needs no
 * clones. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(__AVX2__)
#define FASTNN_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTNN_HOT
#endif

/* Below this many multiply-adds a kernel runs on one thread: waking the team costs more. */
#define FASTNN_PARALLEL_MIN_WORK (1 << 18)

extern sgemm_fn fastnn_sgemm;
extern dgemm_fn fastnn_dgemm;

/* Below this many elements a memory-bound kernel runs on one thread. */
#define FASTNN_PARALLEL_MIN_ELEMENTS (1 << 16)

/* Threads to use for a kernel doing `work` multiply-adds. */
int fastnn_threads_for(double work);

/* Threads to use for a memory-bound kernel over n elements. */
int fastnn_threads_for_elements(int64_t n);

/* How many blocks to split n items into: at least min_per_block items each, at most one
 * block per processor. Depends on n and the machine only, never on the thread count. */
int64_t fastnn_num_blocks(int64_t n, int64_t min_per_block);

/* Block blk of nblocks equal blocks of [0, n): [*i0, *i1) (possibly empty). */
void fastnn_block_range(int64_t blk, int64_t nblocks, int64_t n, int64_t *i0, int64_t *i1);

/* Run BODY over [0, n) split into fixed chunks (at most one per processor, at least
 * FASTNN_PARALLEL_MIN_ELEMENTS elements each), on the team when n is large: inside BODY,
 * `chunk` is the chunk's index and [i0, i1) its range. For elementwise kernels and sums
 * combined per chunk in a fixed order. */
#define FASTNN_FOR_CHUNKS(n, BODY)                                                   \
    do {                                                                             \
        int64_t nchunks_ = fastnn_num_blocks(n, FASTNN_PARALLEL_MIN_ELEMENTS);       \
        int nthreads_ = fastnn_threads_for_elements(n);                              \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads_) if (nthreads_ > 1)") \
        for (int64_t chunk = 0; chunk < nchunks_; chunk++) {                         \
            int64_t i0, i1;                                                          \
            fastnn_block_range(chunk, nchunks_, n, &i0, &i1);                        \
            BODY                                                                     \
        }                                                                            \
    } while (0)

/* The calling thread's index in the current parallel region (0 outside one). */
int fastnn_thread_num(void);

/* At least `bytes` of 64-byte aligned scratch owned by the calling thread, kept for its next
 * call (steady state allocates nothing); NULL when it cannot be had. */
void *fastnn_scratch(size_t bytes);

/* Force the BLAS to one thread around an OpenMP region; returns what to restore. */
int fastnn_blas_serial_begin(void);
void fastnn_blas_serial_end(int saved);

#endif
