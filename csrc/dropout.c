/* Dropout with a counter-based mask: element i of a call is kept when the hash of
 * (seed, offset + i) lands at or above p. The mask is a pure function of (seed, offset, i),
 * so it is the same for any thread count, and the backward recomputes it instead of storing
 * it. A template: this file includes itself once per element type. */
#ifndef REAL

#include "runtime.h"

/* splitmix64's finaliser: a bijective mix whose outputs pass BigCrush for counter inputs. */
static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* uniform in [0, 1) with 53 random bits for element `counter` of stream `seed` */
static inline double dropout_uniform(uint64_t seed, uint64_t counter)
{
    uint64_t h = mix64(mix64(seed) + counter * 0x9e3779b97f4a7c15ULL);
    return (double)(h >> 11) * 0x1.0p-53;
}

#define REAL float
#define SFX(name) name##_f32
#include "dropout.c"
#undef REAL
#undef SFX

#define REAL double
#define SFX(name) name##_f64
#include "dropout.c"

#else /* template body */

/* elements [i0, i1) of dropout_apply */
FASTNN_HOT
static void SFX(dropout_chunk)(REAL *out, const REAL *in, double p, REAL s, uint64_t seed,
                               uint64_t offset, int64_t i0, int64_t i1)
{
    for (int64_t i = i0; i < i1; i++) {
        REAL v = in[i] * s;
        out[i] = dropout_uniform(seed, offset + (uint64_t)i) >= p ? v : 0;
    }
}

void SFX(dropout_apply)(REAL *out, const REAL *in, double p, double scale, uint64_t seed,
                        uint64_t offset, int64_t n)
{
    REAL s = (REAL)scale;
    FASTNN_FOR_CHUNKS(n, SFX(dropout_chunk)(out, in, p, s, seed, offset, i0, i1););
}

#endif
