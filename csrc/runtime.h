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

/* Regions at least this large are all timed for the adaptive thread count (runtime.c); of
 * the smaller ones, one in FASTNN_TIMED_SAMPLE: a CPU-clock read costs about 0.5 us, and
 * each thread of a timed region makes two. */
#define FASTNN_TIMED_MIN_WORK (1 << 23)
#define FASTNN_TIMED_MIN_ELEMENTS (1 << 21)
#define FASTNN_TIMED_SAMPLE 16

/* A parallel region the adaptive thread count learns from:
 *     fastnn_team team;
 *     int nthreads = fastnn_team_for(&team, work);
 *     #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
 *     {
 *         int64_t clock0 = fastnn_team_clock(&team);
 *         ... this thread's share, no barrier after it ...
 *         fastnn_team_done(&team, clock0);
 *     }
 *     fastnn_team_end(&team);
 */
typedef struct {
    int nthreads, timed, size; /* asked for; whether timed; the team the region got */
    int64_t start_ns;
    _Atomic int64_t cpu_ns;    /* the team's CPU time in its shares */
} fastnn_team;

/* Threads for the region of a kernel doing `work` multiply-adds / over n elements. */
int fastnn_team_for(fastnn_team *team, double work);
int fastnn_team_for_elements(fastnn_team *team, int64_t n);
int64_t fastnn_team_clock(const fastnn_team *team);
void fastnn_team_done(fastnn_team *team, int64_t clock0);
void fastnn_team_end(fastnn_team *team);

/* For tests: what a window of timed regions would report; a probe window started now. */
void fastnn_adapt_observe(int team, int64_t wall_ns, int64_t cpu_ns);
void fastnn_adapt_probe_now(void);

/* How many blocks to split n items into: at least min_per_block items each, at most one
 * block per processor. Depends on n and the machine only, never on the thread count. */
int64_t fastnn_num_blocks(int64_t n, int64_t min_per_block);

/* Block blk of nblocks equal blocks of [0, n): [*i0, *i1) (possibly empty). */
void fastnn_block_range(int64_t blk, int64_t nblocks, int64_t n, int64_t *i0, int64_t *i1);

/* Run the statements after i1 for each of nblocks blocks of [0, n) (blk the block's index,
 * [i0, i1) its range; nblocks fixed by the shape, as fastnn_num_blocks gives), on a team sized
 * for `elements` elements of memory-bound work: the blocks are taken dynamically, so a thread
 * the scheduler parks holds the others up by one block at most, and the region is timed for
 * the adaptive thread count (unless it has fewer blocks than threads: then a thread idles
 * whatever the load, and the region says nothing about it). On one thread there is no
 * parallel region at all: even a team of one costs libgomp about 0.3 us to build. */
#define FASTNN_PARALLEL_BLOCKS(nblocks, n, elements, blk, i0, i1, ...)               \
    do {                                                                             \
        int64_t nblocks_ = (nblocks), n_ = (n);                                      \
        fastnn_team team_;                                                           \
        int nthreads_ = fastnn_team_for_elements(&team_, elements);                  \
        if (nthreads_ > nblocks_) nthreads_ = nblocks_ < 1 ? 1 : (int)nblocks_;      \
        if (nthreads_ == 1) {                                                        \
            FASTNN_BLOCKS_(blk, i0, i1, __VA_ARGS__)                                 \
        } else {                                                                     \
            _Pragma("omp parallel num_threads(nthreads_)")                           \
            {                                                                        \
                int64_t clock0_ = fastnn_team_clock(&team_);                         \
                _Pragma("omp for schedule(dynamic, 1) nowait")                       \
                FASTNN_BLOCKS_(blk, i0, i1, __VA_ARGS__)                             \
                fastnn_team_done(&team_, clock0_);                                   \
            }                                                                        \
            fastnn_team_end(&team_);                                                 \
        }                                                                            \
    } while (0)
#define FASTNN_BLOCKS_(blk, i0, i1, ...)                                             \
    for (int64_t blk = 0; blk < nblocks_; blk++) {                                   \
        int64_t i0, i1;                                                              \
        fastnn_block_range(blk, nblocks_, n_, &i0, &i1);                             \
        __VA_ARGS__                                                                  \
    }

/* Run BODY over [0, n) split into fixed chunks (at most one per processor, at least
 * FASTNN_PARALLEL_MIN_ELEMENTS elements each), on the team when n is large: inside BODY,
 * `chunk` is the chunk's index and [i0, i1) its range. For elementwise kernels and sums
 * combined per chunk in a fixed order. */
#define FASTNN_FOR_CHUNKS(n, ...)                                                    \
    FASTNN_PARALLEL_BLOCKS(fastnn_num_blocks(n, FASTNN_PARALLEL_MIN_ELEMENTS), n, n,  \
                           chunk, i0, i1, __VA_ARGS__)

/* The calling thread's index in the current parallel region (0 outside one). */
int fastnn_thread_num(void);

/* At least `bytes` of 64-byte aligned scratch owned by the calling thread, kept for its next
 * call (steady state allocates nothing); NULL when it cannot be had. */
void *fastnn_scratch(size_t bytes);

/* Hold the BLAS at one thread around an OpenMP region that calls it (counted holds). */
void fastnn_blas_hold(void);
void fastnn_blas_release(void);

#endif
