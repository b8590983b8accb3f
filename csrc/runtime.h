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
 * the smaller ones, one in FASTNN_TIMED_SAMPLE (and all during a probe): a CPU-clock read
 * costs about 0.6 us, and each thread of a timed region makes two. */
#define FASTNN_TIMED_MIN_WORK (1 << 23)
#define FASTNN_TIMED_MIN_ELEMENTS (1 << 21)
#define FASTNN_TIMED_SAMPLE 16

/* A parallel region the adaptive thread count learns from:
 *     fastnn_team team;
 *     int nthreads = fastnn_team_for(&team, work, blocks);
 *     #pragma omp parallel num_threads(nthreads)        (when nthreads > 1)
 *     {
 *         int64_t clock0 = fastnn_team_clock(&team);
 *         ... this thread's share of the blocks, no barrier after it ...
 *         fastnn_team_done(&team, clock0);
 *     }
 *     fastnn_team_end(&team);
 * A thread may time several shares (clock, share, done) with waits between them untimed. */
typedef struct {
    int size;               /* the threads asked for */
    int timed;
    _Atomic int64_t start_ns; /* CLOCK_MONOTONIC when the region's first share started */
    _Atomic int64_t cpu_ns;   /* the team's CPU time in its shares */
} fastnn_team;

/* Threads for the region of a kernel doing `work` multiply-adds / over n elements, in at
 * most max_threads blocks. */
int fastnn_team_for(fastnn_team *team, double work, int64_t max_threads);
int fastnn_team_for_elements(fastnn_team *team, int64_t n, int64_t max_threads);
int64_t fastnn_team_clock(fastnn_team *team);
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
 * [i0, i1) its range; nblocks fixed by the shape, as fastnn_num_blocks gives), on the team
 * that team_for (fastnn_team_for or fastnn_team_for_elements) sizes for `work`, at most one
 * thread per block. Blocks are taken dynamically, so the others take over the work of a
 * thread the scheduler parks (the region still waits for it at its closing barrier), and the
 * region is timed for the adaptive thread count. On one thread there is no parallel region at
 * all: even a team of one costs libgomp about 0.3 us to build. The statements are compiled
 * twice, for the two cases. */
#define FASTNN_PARALLEL_BLOCKS(team_for, work, nblocks, n, blk, i0, i1, ...)         \
    do {                                                                             \
        const int64_t fastnn_nblocks_ = (nblocks), fastnn_n_ = (n);                  \
        fastnn_team fastnn_team_;                                                    \
        if (team_for(&fastnn_team_, work, fastnn_nblocks_) == 1) {                   \
            FASTNN_BLOCKS_(fastnn_nblocks_, fastnn_n_, blk, i0, i1, __VA_ARGS__)     \
        } else {                                                                     \
            _Pragma("omp parallel num_threads(fastnn_team_.size)")                   \
            {                                                                        \
                int64_t fastnn_clock0_ = fastnn_team_clock(&fastnn_team_);           \
                _Pragma("omp for schedule(dynamic, 1) nowait")                       \
                FASTNN_BLOCKS_(fastnn_nblocks_, fastnn_n_, blk, i0, i1, __VA_ARGS__) \
                fastnn_team_done(&fastnn_team_, fastnn_clock0_);                     \
            }                                                                        \
            fastnn_team_end(&fastnn_team_);                                          \
        }                                                                            \
    } while (0)
#define FASTNN_BLOCKS_(nblocks, n, blk, i0, i1, ...)                                 \
    for (int64_t blk = 0; blk < nblocks; blk++) {                                    \
        int64_t i0, i1;                                                              \
        fastnn_block_range(blk, nblocks, n, &i0, &i1);                               \
        __VA_ARGS__                                                                  \
    }

/* Run BODY over [0, n) split into fixed chunks (at most one per processor, at least
 * FASTNN_PARALLEL_MIN_ELEMENTS elements each), on the team when n is large: inside BODY,
 * `chunk` is the chunk's index and [i0, i1) its range. For elementwise kernels and sums
 * combined per chunk in a fixed order. */
#define FASTNN_FOR_CHUNKS(n, ...)                                                    \
    FASTNN_PARALLEL_BLOCKS(fastnn_team_for_elements, n,                              \
                           fastnn_num_blocks(n, FASTNN_PARALLEL_MIN_ELEMENTS), n,     \
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
