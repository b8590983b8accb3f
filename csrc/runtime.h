/* Internal helpers shared by the kernel files (not part of the public C API). */
#ifndef FASTNN_RUNTIME_H
#define FASTNN_RUNTIME_H

#include "fastnn.h"

/* Below this many multiply-adds a kernel runs on one thread: waking the team costs more. */
#define FASTNN_PARALLEL_MIN_WORK (1 << 18)

extern sgemm_fn fastnn_sgemm;
extern dgemm_fn fastnn_dgemm;

/* Threads to use for a kernel doing `work` multiply-adds. */
int fastnn_threads_for(double work);

/* How many blocks to split n items into: at least min_per_block items each, at most one
 * block per processor. Depends on n and the machine only, never on the thread count. */
int64_t fastnn_num_blocks(int64_t n, int64_t min_per_block);

/* Force the BLAS to one thread around an OpenMP region; returns what to restore. */
int fastnn_blas_serial_begin(void);
void fastnn_blas_serial_end(int saved);

#endif
