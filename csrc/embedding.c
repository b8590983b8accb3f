/* Embedding: gather rows of a table by index, and scatter-add gradients back.
 * Indices are checked by the caller (0 <= idx < V). The backward is parallel over the
 * embedding dimension, so each output element is summed by one thread in index order:
 * deterministic when indices repeat. A template: includes itself once per element type. */
#ifndef REAL

#include <string.h>
#include "runtime.h"

#define EMB_MIN_COLS 16 /* embedding columns per backward block at least */

#define REAL float
#define SFX(name) name##_f32
#include "embedding.c"
#undef REAL
#undef SFX

#define REAL double
#define SFX(name) name##_f64
#include "embedding.c"

#else /* template body */

/* out (N, D) <- weight (V, D)[idx (N,)] */
void SFX(embedding_forward)(REAL *out, const REAL *weight, const int64_t *idx, int64_t N,
                            int64_t D)
{
    FASTNN_PARALLEL_BLOCKS(fastnn_team_for_elements, N * D,
                           fastnn_num_blocks(N, 1), N, blk, i0, i1, {
        for (int64_t i = i0; i < i1; i++)
            memcpy(out + i * D, weight + idx[i] * D, (size_t)D * sizeof(REAL));
    });
}

/* columns [c0, c1) of dweight (V, D)[idx[i]] += dout (N, D)[i], for i in order */
FASTNN_HOT
static void SFX(embedding_add_rows)(REAL *dweight, const REAL *dout, const int64_t *idx,
                                    int64_t N, int64_t D, int64_t c0, int64_t c1)
{
    for (int64_t i = 0; i < N; i++) {
        REAL *restrict row = dweight + idx[i] * D;
        const REAL *restrict g = dout + i * D;
        for (int64_t j = c0; j < c1; j++) row[j] += g[j];
    }
}

/* dweight (V, D)[idx[i]] += dout (N, D)[i], for i in order */
void SFX(embedding_backward)(REAL *dweight, const REAL *dout, const int64_t *idx, int64_t N,
                             int64_t D)
{
    FASTNN_PARALLEL_BLOCKS(fastnn_team_for_elements, N * D,
                           fastnn_num_blocks(D, EMB_MIN_COLS), D, blk, c0, c1,
                           SFX(embedding_add_rows)(dweight, dout, idx, N, D, c0, c1););
}

#endif
