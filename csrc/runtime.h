/* Internal helpers shared by the kernel files (not part of the public C API). */
#ifndef FASTNN_RUNTIME_H
#define FASTNN_RUNTIME_H

#include "fastnn.h"

/* Below this many multiply-adds a kernel runs on one thread: waking the team costs more. */
#define FASTNN_PARALLEL_MIN_WORK (1 << 18)

extern sgemm_fn fastnn_sgemm;
extern dgemm_fn fastnn_dgemm;

/* Below this many elements a memory-bound kernel runs on one thread. */
#define FASTNN_PARALLEL_MIN_ELEMENTS (1 << 15)

/* Threads to use for a kernel doing `work` multiply-adds. */
int fastnn_threads_for(double work);

/* Threads to use for a memory-bound kernel over n elements. */
int fastnn_threads_for_elements(int64_t n);

/* How many blocks to split n items into: at least min_per_block items each, at most one
 * block per processor. Depends on n and the machine only, never on the thread count. */
int64_t fastnn_num_blocks(int64_t n, int64_t min_per_block);

/* Block blk of nblocks equal blocks of [0, n): [*i0, *i1) (possibly empty). */
void fastnn_block_range(int64_t blk, int64_t nblocks, int64_t n, int64_t *i0, int64_t *i1);

/* Force the BLAS to one thread around an OpenMP region; returns what to restore. */
int fastnn_blas_serial_begin(void);
void fastnn_blas_serial_end(int saved);

#endif
