/* Threads and the BLAS fastnn calls. */
#include <pthread.h>
#include <stdlib.h>
#include "runtime.h"

#ifdef _OPENMP
#include <omp.h>
#endif

sgemm_fn fastnn_sgemm = 0;
dgemm_fn fastnn_dgemm = 0;
static blas_set_threads_fn blas_set_threads = 0;
static blas_get_threads_fn blas_get_threads = 0;
static int num_threads = 1;
/* Set in the child of a fork: the OpenMP runtime's threads did not come along (libgomp's
 * pool would wait for them forever), so the child's kernels run on the calling thread. */
static int forked_child = 0;

static void on_fork_child(void) { forked_child = 1; }

int fastnn_forked_child(void) { return forked_child; }

void fastnn_register_blas(sgemm_fn sgemm, dgemm_fn dgemm, blas_set_threads_fn set_threads,
                          blas_get_threads_fn get_threads)
{
    static int fork_handler = 0; /* called once, at import */
    if (!fork_handler) fork_handler = pthread_atfork(NULL, NULL, on_fork_child) == 0;
    fastnn_sgemm = sgemm;
    fastnn_dgemm = dgemm;
    blas_set_threads = set_threads;
    blas_get_threads = get_threads;
}

#ifndef FASTNN_COMPILE_ARGS
#define FASTNN_COMPILE_ARGS "unknown"
#endif

const char *fastnn_compile_args(void) { return FASTNN_COMPILE_ARGS; }

int fastnn_has_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int fastnn_num_procs(void)
{
#ifdef _OPENMP
    return omp_get_num_procs();
#else
    return 1;
#endif
}

void fastnn_set_num_threads(int n) { num_threads = n < 1 ? 1 : n; }

int fastnn_get_num_threads(void)
{
    return fastnn_has_openmp() && !forked_child ? num_threads : 1;
}

int fastnn_threads_for(double work)
{
    return work < FASTNN_PARALLEL_MIN_WORK ? 1 : fastnn_get_num_threads();
}

int fastnn_threads_for_elements(int64_t n)
{
    return n < FASTNN_PARALLEL_MIN_ELEMENTS ? 1 : fastnn_get_num_threads();
}

int64_t fastnn_num_blocks(int64_t n, int64_t min_per_block)
{
    int64_t by_size = (n + min_per_block - 1) / min_per_block;
    int64_t procs = fastnn_num_procs();
    int64_t blocks = by_size < procs ? by_size : procs;
    return blocks < 1 ? 1 : blocks;
}

void fastnn_block_range(int64_t blk, int64_t nblocks, int64_t n, int64_t *i0, int64_t *i1)
{
    int64_t size = (n + nblocks - 1) / nblocks;
    *i0 = blk * size < n ? blk * size : n;
    *i1 = *i0 + size < n ? *i0 + size : n;
}

int fastnn_thread_num(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

void *fastnn_scratch(size_t bytes)
{
    static _Thread_local void *buf = NULL;
    static _Thread_local size_t capacity = 0;
    if (bytes <= capacity) return buf;
    free(buf);
    capacity = (bytes + 4095) / 4096 * 4096;
    buf = aligned_alloc(64, capacity);
    if (!buf) capacity = 0;
    return buf;
}

int fastnn_blas_serial_begin(void)
{
    /* Our OpenMP team owns the cores: the BLAS runs on the calling thread only. */
    if (!blas_get_threads || !blas_set_threads) return 1;
    int saved = blas_get_threads();
    if (saved != 1) blas_set_threads(1);
    return saved;
}

void fastnn_blas_serial_end(int saved)
{
    if (saved != 1 && blas_set_threads) blas_set_threads(saved);
}
