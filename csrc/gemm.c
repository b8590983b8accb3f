/* fastnn's matrix-product core: micro-kernels per ISA, the transposing pack, and the blocked
 * driver (see gemm.h for the contract, gemm_kernel.h for the kernels).
 *
 * The design is BLIS's, cut to what Linear needs. The output is split into blocks of up to
 * GEMM_MB_MAX rows and GEMM_NB_PANELS column panels; inside a block, for each chunk of at most
 * GEMM_KC(REAL) of the K dimension, each panel of nr columns of b (packed when b is a
 * transposed matrix, else read in place) is swept by every mr-row tile of a. The panel of b
 * (kc x nr) stays in L1/L2 across those tiles; a is read in place, since the kernels
 * broadcast it element by element from rows or columns. Between K chunks a tile is stored and
 * reloaded in full precision, so the blocking never changes a result.
 *
 * This file is a template: it includes itself once per element type.
 */
#ifndef REAL

#include <stdlib.h>
#include "gemm.h"
#include "runtime.h"
#include "fastmath.h"

#if defined(__GNUC__) && defined(__x86_64__)
#define GEMM_X86 1
#include <immintrin.h>
#endif

/* Rows per block: up to GEMM_MB_MAX, so that a packed panel of b serves many tiles of a,
 * but halved (down to GEMM_MB_MIN) while the output has fewer than GEMM_MIN_BLOCKS blocks, so
 * that the threads have blocks to share. Column panels per block at most. The K chunk: 2 KB
 * of one row of a tile of a (512 floats, 256 doubles), so that a tile's rows of a (16 KB)
 * stay in L1 and a kc x nr panel of b (96 KB at most) in L2. */
#define GEMM_MB_MAX 256
#define GEMM_MB_MIN 64
#define GEMM_MIN_BLOCKS 8
#define GEMM_NB_PANELS 4
#define GEMM_KC(REAL) ((int64_t)(2048 / sizeof(REAL)))

/* Read and written with atomic builtins: set_isa may run while another thread's kernel reads
 * it (each product reads it once, when it is planned). */
static int current_isa = -1;

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Split `panels` into equal blocks of at most max_panels; returns panels per block. */
static int64_t panels_per_block(int64_t panels, int64_t max_panels)
{
    return ceil_div(panels, ceil_div(panels, max_panels));
}

/* What a kernel call does (flags): start from 0, or continue the partial sum of the earlier
 * K chunks; store the sum, or add it to c. */
enum { GEMM_C_CONTINUE = 1, GEMM_C_ACCUMULATE = 2 };

int fastnn_isa_supported(int isa)
{
#ifdef GEMM_X86
    __builtin_cpu_init();
#endif
    switch (isa) {
    case FASTNN_ISA_BLAS:
    case FASTNN_ISA_GENERIC:
        return 1;
#ifdef GEMM_X86
    case FASTNN_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case FASTNN_ISA_AVX512:
        return fastnn_isa_supported(FASTNN_ISA_AVX2) && __builtin_cpu_supports("avx512f");
#endif
    default:
        return 0;
    }
}

int fastnn_best_isa(void)
{
    if (fastnn_isa_supported(FASTNN_ISA_AVX512)) return FASTNN_ISA_AVX512;
    if (fastnn_isa_supported(FASTNN_ISA_AVX2)) return FASTNN_ISA_AVX2;
    return FASTNN_ISA_BLAS; /* no FMA micro-kernel here: the BLAS is faster than generic C */
}

int fastnn_get_isa(void)
{
    int isa = __atomic_load_n(&current_isa, __ATOMIC_RELAXED);
    if (isa < 0) {
        isa = fastnn_best_isa();
        __atomic_store_n(&current_isa, isa, __ATOMIC_RELAXED);
    }
    return isa;
}

int fastnn_set_isa(int isa)
{
    if (!fastnn_isa_supported(isa)) return -1;
    __atomic_store_n(&current_isa, isa, __ATOMIC_RELAXED);
    return 0;
}

/* ---- micro-kernels ---- */

#ifdef GEMM_X86
/* 8x8 float and 4x4 double transposes: dst[j][p] = src[p][j] */
__attribute__((target("avx2"))) static inline void transpose8_f32(float *dst, int64_t ldd,
                                                                  const float *src, int64_t lds)
{
    __m256 r[8], t[8], s[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * lds);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        s[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        s[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        s[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        s[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(s[i], s[i + 4], 0x20));
        _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(s[i], s[i + 4], 0x31));
    }
}

__attribute__((target("avx2"))) static inline void transpose4_f64(double *dst, int64_t ldd,
                                                                  const double *src,
                                                                  int64_t lds)
{
    __m256d r0 = _mm256_loadu_pd(src), r1 = _mm256_loadu_pd(src + lds);
    __m256d r2 = _mm256_loadu_pd(src + 2 * lds), r3 = _mm256_loadu_pd(src + 3 * lds);
    __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
    __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
    _mm256_storeu_pd(dst, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(dst + ldd, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(dst + 2 * ldd, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(dst + 3 * ldd, _mm256_permute2f128_pd(t1, t3, 0x31));
}

/* AVX-512: 8 rows x up to 3 vectors (48 floats, 24 doubles): 24 accumulators of 32. */
#define TARGET __attribute__((target("avx512f,avx2,fma")))
#define MR 8
#define NV 3
#define MASK_ALL ((MASK)-1)
#define MASK_FIRST(n) ((MASK)((1u << (n)) - 1))
#define MLOADU(mask, p) MASKZ_LOADU(mask, p)

#define REAL float
#define VEC __m512
#define W 16
#define MASK __mmask16
#define LOADU _mm512_loadu_ps
#define MASKZ_LOADU _mm512_maskz_loadu_ps
#define STOREU _mm512_storeu_ps
#define MSTOREU _mm512_mask_storeu_ps
#define FMADD _mm512_fmadd_ps
#define SET1 _mm512_set1_ps
#define ADD _mm512_add_ps
#define MAX _mm512_max_ps
#define ZERO _mm512_setzero_ps()
#define TB 8
#define TRANSPOSE_BLOCK transpose8_f32
#define UK_TILE tile_avx512_f32
#define UK_ROWS rows_avx512_f32
#define UK ukernel_avx512_f32
#define PACK pack_bt_avx512_f32
#include "gemm_kernel.h"
#undef MASK
#undef MASKZ_LOADU

#define REAL double
#define VEC __m512d
#define W 8
#define MASK __mmask8
#define LOADU _mm512_loadu_pd
#define MASKZ_LOADU _mm512_maskz_loadu_pd
#define STOREU _mm512_storeu_pd
#define MSTOREU _mm512_mask_storeu_pd
#define FMADD _mm512_fmadd_pd
#define SET1 _mm512_set1_pd
#define ADD _mm512_add_pd
#define MAX _mm512_max_pd
#define ZERO _mm512_setzero_pd()
#define TB 4
#define TRANSPOSE_BLOCK transpose4_f64
#define UK_TILE tile_avx512_f64
#define UK_ROWS rows_avx512_f64
#define UK ukernel_avx512_f64
#define PACK pack_bt_avx512_f64
#include "gemm_kernel.h"
#undef MASK
#undef MASKZ_LOADU
#undef TARGET
#undef MR
#undef NV
#undef MASK_ALL
#undef MASK_FIRST
#undef MLOADU

/* AVX2: 6 rows x 2 vectors (16 floats, 8 doubles): 12 accumulators of 16. A mask is a
 * vector whose lanes below n have the sign bit set. */
#define TARGET __attribute__((target("avx2,fma")))
#define MR 6
#define NV 2
#define MASK __m256i
#define MASK_ALL _mm256_set1_epi32(-1)
#define TB_LANES _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)

#define REAL float
#define VEC __m256
#define W 8
#define MASK_FIRST(n) _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n)), TB_LANES)
#define LOADU _mm256_loadu_ps
#define MLOADU(mask, p) _mm256_maskload_ps(p, mask)
#define STOREU _mm256_storeu_ps
#define MSTOREU _mm256_maskstore_ps
#define FMADD _mm256_fmadd_ps
#define SET1 _mm256_set1_ps
#define ADD _mm256_add_ps
#define MAX _mm256_max_ps
#define ZERO _mm256_setzero_ps()
#define TB 8
#define TRANSPOSE_BLOCK transpose8_f32
#define UK_TILE tile_avx2_f32
#define UK_ROWS rows_avx2_f32
#define UK ukernel_avx2_f32
#define PACK pack_bt_avx2_f32
#include "gemm_kernel.h"
#undef MASK_FIRST
#undef MLOADU

/* a double lane is two int32 lanes: lane l of the mask is set when 2l+1 < 2n */
#define REAL double
#define VEC __m256d
#define W 4
#define MASK_FIRST(n) _mm256_cmpgt_epi32(_mm256_set1_epi32(2 * (int)(n)), TB_LANES)
#define LOADU _mm256_loadu_pd
#define MLOADU(mask, p) _mm256_maskload_pd(p, mask)
#define STOREU _mm256_storeu_pd
#define MSTOREU _mm256_maskstore_pd
#define FMADD _mm256_fmadd_pd
#define SET1 _mm256_set1_pd
#define ADD _mm256_add_pd
#define MAX _mm256_max_pd
#define ZERO _mm256_setzero_pd()
#define TB 4
#define TRANSPOSE_BLOCK transpose4_f64
#define UK_TILE tile_avx2_f64
#define UK_ROWS rows_avx2_f64
#define UK ukernel_avx2_f64
#define PACK pack_bt_avx2_f64
#include "gemm_kernel.h"
#undef MASK_FIRST
#undef MLOADU
#undef TARGET
#undef MR
#undef NV
#undef MASK
#undef MASK_ALL
#undef TB_LANES
#endif /* GEMM_X86 */

/* ---- FMA peak probe ---- */

/* Independent chains of FMAs on the widest vectors the path has, as many accumulators as
 * its micro-kernel keeps (24 zmm, 12 ymm: in registers, more than latency x throughput);
 * `iters` rounds on each thread. Returns the float32 flops done (2 per lane per FMA). A
 * machine limit for the benchmarks, not a kernel. */
#define PEAK_CHAINS_AVX512 24
#define PEAK_CHAINS_AVX2 12
#define PEAK_LOOP(VEC, CHAINS, SET1, FMADD, ADD, STORE_SUM)                             \
    VEC acc[CHAINS], x = SET1(1.0f - 1e-7f), y = SET1(1e-7f);                           \
    _Pragma("GCC unroll 24") for (int c = 0; c < CHAINS; c++) acc[c] = SET1((float)c);  \
    for (int64_t it = 0; it < iters; it++)                                              \
        _Pragma("GCC unroll 24") for (int c = 0; c < CHAINS; c++)                       \
            acc[c] = FMADD(acc[c], x, y);                                               \
    _Pragma("GCC unroll 24") for (int c = 1; c < CHAINS; c++)                           \
        acc[0] = ADD(acc[0], acc[c]);                                                   \
    STORE_SUM;

#ifdef GEMM_X86
__attribute__((target("avx512f"))) static float fma_peak_avx512(int64_t iters)
{
    float out[16];
    PEAK_LOOP(__m512, PEAK_CHAINS_AVX512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps,
              _mm512_storeu_ps(out, acc[0]))
    return out[0];
}

__attribute__((target("avx2,fma"))) static float fma_peak_avx2(int64_t iters)
{
    float out[8];
    PEAK_LOOP(__m256, PEAK_CHAINS_AVX2, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps,
              _mm256_storeu_ps(out, acc[0]))
    return out[0];
}
#endif

double fma_peak_f32(int64_t iters, int nthreads)
{
    int isa = fastnn_get_isa();
    volatile float sink = 0; /* keeps the loops from being optimised away */
    double flops = 0;        /* of the threads that ran, which may be fewer than asked */
    if (nthreads < 1 || fastnn_forked_child()) nthreads = 1;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        float sum = 0;
        double done = 0;
#ifdef GEMM_X86
        if (isa == FASTNN_ISA_AVX512) {
            sum = fma_peak_avx512(iters);
            done = 2.0 * 16 * PEAK_CHAINS_AVX512 * (double)iters;
        } else if (isa == FASTNN_ISA_AVX2) {
            sum = fma_peak_avx2(iters);
            done = 2.0 * 8 * PEAK_CHAINS_AVX2 * (double)iters;
        }
#endif
        #pragma omp critical
        {
            sink += sum;
            flops += done;
        }
    }
    (void)isa;
    return flops;
}

#define REAL float
#define SFX(name) name##_f32
#define TANH fastnn_tanhf
#define EXP fastnn_expf
#include "gemm.c"
#undef REAL
#undef SFX
#undef TANH
#undef EXP

#define REAL double
#define SFX(name) name##_f64
#define TANH tanh
#define EXP exp
#include "gemm.c"

#else /* template body, instantiated above */

#include "act_template.h"

/* The generic kernel: plain C, 4 x 16 tiles, c + a * b in two roundings (the compiler
 * contracts it to an FMA only in a build for an FMA target, e.g. FASTNN_NATIVE=1). Same
 * contract as the ISA kernels otherwise. */
#define GENERIC_MR 4
#define GENERIC_NR 16
static void SFX(ukernel_generic)(int64_t m, int64_t n, int64_t k, const REAL *a, int64_t rsa,
                                 int64_t csa, const REAL *b, int64_t ldb, REAL *c, int64_t ldc,
                                 const REAL *cin, int64_t ldcin, int c_mode, const REAL *bias,
                                 int relu)
{
    REAL acc[GENERIC_MR][GENERIC_NR];
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++)
            acc[i][j] = c_mode & GEMM_C_CONTINUE ? cin[i * ldcin + j] : 0;
    for (int64_t p = 0; p < k; p++)
        for (int64_t i = 0; i < m; i++) {
            REAL ai = a[i * rsa + p * csa];
            for (int64_t j = 0; j < n; j++) acc[i][j] += ai * b[p * ldb + j];
        }
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            REAL v = c_mode & GEMM_C_ACCUMULATE ? c[i * ldc + j] + acc[i][j] : acc[i][j];
            v = bias ? v + bias[j] : v;
            c[i * ldc + j] = relu && v < 0 ? 0 : v;
        }
}

static void SFX(pack_bt_generic)(REAL *restrict dst, const REAL *restrict src, int64_t ld,
                                 int64_t n, int64_t k)
{
    for (int64_t j = 0; j < n; j++)
        for (int64_t p = 0; p < k; p++) dst[p * GENERIC_NR + j] = src[j * ld + p];
}

typedef void (*SFX(ukernel_fn))(int64_t m, int64_t n, int64_t k, const REAL *a, int64_t rsa,
                                int64_t csa, const REAL *b, int64_t ldb, REAL *c, int64_t ldc,
                                const REAL *cin, int64_t ldcin, int c_mode, const REAL *bias,
                                int relu);
typedef void (*SFX(pack_fn))(REAL *dst, const REAL *src, int64_t ld, int64_t n, int64_t k);

typedef struct {
    int64_t mr, nr;
    SFX(ukernel_fn) kernel;
    SFX(pack_fn) pack;
} SFX(ukernel_info);

static SFX(ukernel_info) SFX(ukernel_for)(int isa)
{
#ifdef GEMM_X86
    /* the tiles of gemm_kernel.h's instances above: 8 x 3 zmm, 6 x 2 ymm */
    const int64_t zmm = 64 / sizeof(REAL), ymm = 32 / sizeof(REAL);
    if (isa == FASTNN_ISA_AVX512)
        return (SFX(ukernel_info)){8, 3 * zmm, SFX(ukernel_avx512), SFX(pack_bt_avx512)};
    if (isa == FASTNN_ISA_AVX2)
        return (SFX(ukernel_info)){6, 2 * ymm, SFX(ukernel_avx2), SFX(pack_bt_avx2)};
#endif
    (void)isa;
    return (SFX(ukernel_info)){GENERIC_MR, GENERIC_NR, SFX(ukernel_generic),
                               SFX(pack_bt_generic)};
}

int64_t SFX(gemm_plan)(SFX(gemm_job) *job)
{
    SFX(ukernel_info) uk = SFX(ukernel_for)(job->isa);
    int64_t mpanels = ceil_div(job->M, uk.mr), npanels = ceil_div(job->N, uk.nr);
    job->nb = uk.nr * (npanels ? panels_per_block(npanels, GEMM_NB_PANELS) : 1);
    job->nblocks = ceil_div(job->N, job->nb);
    int64_t mpp = mpanels ? panels_per_block(mpanels, GEMM_MB_MAX / uk.mr) : 1;
    while (mpp > GEMM_MB_MIN / uk.mr && ceil_div(mpanels, mpp) * job->nblocks < GEMM_MIN_BLOCKS)
        mpp = panels_per_block(mpanels, ceil_div(mpp, 2));
    job->mb = uk.mr * mpp;
    job->kc = job->K ? ceil_div(job->K, ceil_div(job->K, GEMM_KC(REAL))) : 0;
    return ceil_div(job->M, job->mb) * job->nblocks;
}

/* A product accumulated into c over several K chunks keeps its partial sums in a block of
 * scratch until the last chunk adds them to c. */
static int SFX(needs_partial)(const SFX(gemm_job) *job)
{
    return job->accumulate && job->K > job->kc;
}

int64_t SFX(gemm_scratch_size)(const SFX(gemm_job) *job)
{
    int64_t pack = job->csb == 1 ? 0 : job->kc * SFX(ukernel_for)(job->isa).nr;
    return pack + (SFX(needs_partial)(job) ? job->mb * job->nb : 0);
}

/* act applied to the tile c (m, n), row stride ldc: vectorised for the CPU (tanh and
 * sigmoid are a rational function and an exp per element) */
FASTNN_HOT
static void SFX(activate_tile)(REAL *c, int64_t ldc, int64_t m, int64_t n, int act)
{
    for (int64_t r = 0; r < m; r++) SFX(act_inplace)(c + r * ldc, act, n);
}

void SFX(gemm_run_block)(const SFX(gemm_job) *job, int64_t blk, REAL *scratch)
{
    SFX(ukernel_info) uk = SFX(ukernel_for)(job->isa);
    int64_t i0 = blk / job->nblocks * job->mb, j0 = blk % job->nblocks * job->nb;
    int64_t i1 = i0 + job->mb < job->M ? i0 + job->mb : job->M;
    int64_t j1 = j0 + job->nb < job->N ? j0 + job->nb : job->N;
    int packed = job->csb != 1;
    REAL *pack = scratch;
    REAL *partial = SFX(needs_partial)(job) ? scratch + (packed ? job->kc * uk.nr : 0) : NULL;
    int relu = job->act == FASTNN_ACT_RELU;
    int after = job->act == FASTNN_ACT_TANH || job->act == FASTNN_ACT_SIGMOID;
    int64_t pc = 0;
    do { /* at least once: K == 0 still writes c (0 or c, plus bias, activated) */
        int64_t kc = job->K - pc < job->kc ? job->K - pc : job->kc;
        int last = pc + kc == job->K;
        int c_mode = (pc > 0 ? GEMM_C_CONTINUE : 0)
                   | (last && job->accumulate ? GEMM_C_ACCUMULATE : 0);
        for (int64_t j = j0; j < j1; j += uk.nr) {
            int64_t n = j1 - j < uk.nr ? j1 - j : uk.nr;
            const REAL *bp = job->b + pc * job->rsb + j * job->csb;
            int64_t ldb = job->rsb;
            if (packed) {
                uk.pack(pack, bp, job->csb, n, kc);
                bp = pack;
                ldb = uk.nr;
            }
            const REAL *bias = last && job->bias ? job->bias + j : NULL;
            for (int64_t i = i0; i < i1; i += uk.mr) {
                int64_t m = i1 - i < uk.mr ? i1 - i : uk.mr;
                /* partial sums (of c, or of the scratch block) in, the tile out */
                REAL *c = job->c + i * job->ldc + j, *out = c;
                const REAL *cin = c;
                int64_t ldc = job->ldc, ldcin = job->ldc;
                if (partial) {
                    REAL *part = partial + (i - i0) * job->nb + (j - j0);
                    cin = part;
                    ldcin = job->nb;
                    if (!last) {
                        out = part;
                        ldc = job->nb;
                    }
                }
                uk.kernel(m, n, kc, job->a + i * job->rsa + pc * job->csa, job->rsa, job->csa,
                          bp, ldb, out, ldc, cin, ldcin, c_mode, bias, last && relu);
                if (last && after) SFX(activate_tile)(c, job->ldc, m, n, job->act);
            }
        }
        pc += kc;
    } while (pc < job->K);
}

#endif
