/* Threads and the BLAS fastnn calls. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include "runtime.h"

#ifdef _OPENMP
#include <omp.h>
#endif

sgemm_fn fastnn_sgemm = 0;
dgemm_fn fastnn_dgemm = 0;
static blas_set_threads_fn blas_set_threads = 0;
static blas_get_threads_fn blas_get_threads = 0;
/* Set in the child of a fork: the OpenMP runtime's threads did not come along (libgomp's
 * pool would wait for them forever), so the child's kernels run on the calling thread. */
static int forked_child = 0;

static pthread_mutex_t adapt_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t blas_lock = PTHREAD_MUTEX_INITIALIZER;
static int blas_holds = 0, blas_saved = 1; /* under blas_lock */

/* The child has only the forking thread: a lock, or a BLAS hold, of another thread stays
 * taken there. */
static void on_fork_child(void)
{
    forked_child = 1;
    pthread_mutex_init(&adapt_lock, NULL);
    pthread_mutex_init(&blas_lock, NULL);
    blas_holds = 0;
}

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

/* Read once: libgomp's omp_get_num_procs asks the kernel for the affinity mask on every call
 * (a system call: 0.3-0.4 us of every small kernel here), and the block counts it sets, which
 * fix the results' bits, should not change within a run anyway. */
int fastnn_num_procs(void)
{
#ifdef _OPENMP
    static _Atomic int procs = 0;
    int n = atomic_load_explicit(&procs, memory_order_relaxed);
    if (n == 0) {
        n = omp_get_num_procs();
        atomic_store_explicit(&procs, n, memory_order_relaxed);
    }
    return n;
#else
    return 1;
#endif
}

/* ---- the thread count ----
 * set_num_threads sets a cap. Results do not depend on the thread count, so the runtime is
 * free to use fewer threads whenever that is faster, and it does when the machine is busy
 * (unless the count is pinned): it times parallel regions (the large ones all, one in
 * FASTNN_TIMED_SAMPLE of the rest, all of them during a probe) and compares the team's CPU
 * time in its shares of the work with the region's wall time. That ratio, the parallelism
 * the region got, is 1.6 to 1.9 for two threads on a quiet machine. When another process
 * holds a core the scheduler parks one of the team's threads, the others wait for it at the
 * barrier, and the ratio falls to about 1 or below: one thread fewer would be as fast. Over
 * each window of ADAPT_WINDOW_NS of timed regions at n threads, a ratio below
 * n - 1 + ADAPT_DROP means use n - 1. Below the cap, a window of ADAPT_PROBE_NS is probed at
 * n + 1 threads every so often (the wait doubling while probes fail, from
 * ADAPT_BACKOFF_MIN_NS to ADAPT_BACKOFF_MAX_NS), and a ratio of at least n + ADAPT_RAISE there
 * means use n + 1. */
#define ADAPT_WINDOW_NS 10000000LL
#define ADAPT_PROBE_NS 2000000LL
#define ADAPT_DROP 0.2
#define ADAPT_RAISE 0.4
#define ADAPT_BACKOFF_MIN_NS 50000000LL
#define ADAPT_BACKOFF_MAX_NS 1600000000LL

static _Atomic int cap = 1;      /* set_num_threads */
static _Atomic int pinned = 0;   /* set_num_threads(n, adaptive=False): always cap */
static _Atomic int in_use = 1;   /* the threads kernels use now, 1 <= in_use <= cap */
static _Atomic int probing = 0;  /* 1 while a window runs at in_use + 1 */
static _Atomic int64_t probe_at; /* CLOCK_MONOTONIC ns: the next probe */
static int64_t backoff = ADAPT_BACKOFF_MIN_NS; /* the rest under adapt_lock */
static int64_t window_wall, window_cpu;

static int64_t clock_ns(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static int threads_ok(void) { return fastnn_has_openmp() && !forked_child; }

void fastnn_set_num_threads(int n, int adaptive)
{
    pthread_mutex_lock(&adapt_lock);
    probing = 0;
    cap = n < 1 ? 1 : n;
    pinned = !adaptive;
    in_use = cap;
    backoff = ADAPT_BACKOFF_MIN_NS;
    window_wall = window_cpu = 0;
    pthread_mutex_unlock(&adapt_lock);
}

int fastnn_get_num_threads(void) { return threads_ok() ? cap : 1; }

int fastnn_threads_adaptive(void) { return !pinned; }

int fastnn_threads_in_use(void)
{
    if (!threads_ok()) return 1;
    int n = in_use + probing, most = cap; /* read unlocked: clamp a mix of old and new */
    return pinned || n > most ? most : n;
}

/* One window of timed regions run by teams of `team` threads: act on its parallelism. */
static void adapt_decide(int team, double parallelism, int64_t now)
{
    if (probing) {
        probing = 0;
        if (parallelism >= team - 1 + ADAPT_RAISE)
            in_use = team;
        else if (backoff < ADAPT_BACKOFF_MAX_NS)
            backoff *= 2;
        probe_at = now + backoff;
    } else if (parallelism < team - 1 + ADAPT_DROP) {
        in_use = team - 1;
        probe_at = now + backoff;
    } else {
        backoff = ADAPT_BACKOFF_MIN_NS;
    }
}

void fastnn_adapt_observe(int team, int64_t wall_ns, int64_t cpu_ns)
{
    pthread_mutex_lock(&adapt_lock);
    /* a region of another team size than the count in use (started before the last
     * decision or a cap change) tells nothing about it */
    if (!pinned && team > 1 && team == in_use + probing) {
        window_wall += wall_ns;
        window_cpu += cpu_ns;
        if (window_wall >= (probing ? ADAPT_PROBE_NS : ADAPT_WINDOW_NS)) {
            adapt_decide(team, (double)window_cpu / (double)window_wall,
                         clock_ns(CLOCK_MONOTONIC));
            window_wall = window_cpu = 0;
        }
    }
    pthread_mutex_unlock(&adapt_lock);
}

/* Under adapt_lock: the next window runs at in_use + 1. */
static void start_probe(void)
{
    probing = 1;
    window_wall = window_cpu = 0;
}

void fastnn_adapt_probe_now(void)
{
    pthread_mutex_lock(&adapt_lock);
    if (!pinned && in_use < cap) start_probe();
    pthread_mutex_unlock(&adapt_lock);
}

/* The threads for the next region: in_use, or in_use + 1 while a probe runs (starting one
 * when it is due). */
static int team_threads(void)
{
    if (!threads_ok() || pinned) return fastnn_threads_in_use();
    if (!probing && in_use < cap && clock_ns(CLOCK_MONOTONIC) >= probe_at) {
        pthread_mutex_lock(&adapt_lock);
        if (!probing && in_use < cap && clock_ns(CLOCK_MONOTONIC) >= probe_at) start_probe();
        pthread_mutex_unlock(&adapt_lock);
    }
    return fastnn_threads_in_use();
}

static int team_start(fastnn_team *t, int parallel, int large, int64_t max_threads)
{
    static _Atomic unsigned sampled = 0;
    int n = parallel ? team_threads() : 1;
    t->size = n > max_threads ? (max_threads < 1 ? 1 : (int)max_threads) : n;
    /* A team cut to its blocks has threads idle whatever the load: not timed. A probe times
     * every region, to decide before it has cost much. */
    t->timed = t->size > 1 && t->size == n && !pinned
            && (large || probing || atomic_fetch_add_explicit(&sampled, 1, memory_order_relaxed)
                                    % FASTNN_TIMED_SAMPLE == 0);
    atomic_init(&t->start_ns, 0);
    atomic_init(&t->cpu_ns, 0);
    return t->size;
}

int fastnn_team_for(fastnn_team *t, double work, int64_t max_threads)
{
    return team_start(t, work >= FASTNN_PARALLEL_MIN_WORK, work >= FASTNN_TIMED_MIN_WORK,
                      max_threads);
}

int fastnn_team_for_elements(fastnn_team *t, int64_t n, int64_t max_threads)
{
    return team_start(t, n >= FASTNN_PARALLEL_MIN_ELEMENTS, n >= FASTNN_TIMED_MIN_ELEMENTS,
                      max_threads);
}

int64_t fastnn_team_clock(fastnn_team *t)
{
    if (!t->timed) return 0;
    int64_t none = 0; /* the region's wall clock starts with its first share, not before */
    atomic_compare_exchange_strong(&t->start_ns, &none, clock_ns(CLOCK_MONOTONIC));
    return clock_ns(CLOCK_THREAD_CPUTIME_ID);
}

void fastnn_team_done(fastnn_team *t, int64_t clock0)
{
    if (t->timed) atomic_fetch_add(&t->cpu_ns, clock_ns(CLOCK_THREAD_CPUTIME_ID) - clock0);
}

void fastnn_team_end(fastnn_team *t)
{
    if (t->timed)
        fastnn_adapt_observe(t->size, clock_ns(CLOCK_MONOTONIC) - t->start_ns, t->cpu_ns);
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

/* The BLAS's own threads are held at one while fastnn's team calls it (the BLAS path only).
 * Holds are counted: the first saves the count and the last restores it, so kernels running
 * at once in several Python threads neither restore it early nor leave it at one; and the
 * count is restored only if it is still the one fastnn set, so a limit someone else set in
 * the meantime (threadpoolctl, to anything but one) stays. */
void fastnn_blas_hold(void)
{
    if (!blas_get_threads || !blas_set_threads) return;
    pthread_mutex_lock(&blas_lock);
    if (blas_holds++ == 0) {
        blas_saved = blas_get_threads();
        if (blas_saved != 1) blas_set_threads(1);
    }
    pthread_mutex_unlock(&blas_lock);
}

void fastnn_blas_release(void)
{
    if (!blas_get_threads || !blas_set_threads) return;
    pthread_mutex_lock(&blas_lock);
    if (blas_holds > 0 && --blas_holds == 0 && blas_saved != 1 && blas_get_threads() == 1)
        blas_set_threads(blas_saved);
    pthread_mutex_unlock(&blas_lock);
}
