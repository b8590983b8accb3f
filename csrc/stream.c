/* STREAM triad, for measuring the machine's memory bandwidth with the same compiler flags and
 * thread team as the kernels (bench/ reports kernels as a fraction of it). */
#include "runtime.h"

/* a (n) <- b + s * c: 24 bytes of memory traffic per element (two reads, one write). */
void stream_triad_f64(double *restrict a, const double *restrict b, const double *restrict c,
                      double s, int64_t n)
{
    FASTNN_FOR_CHUNKS(n, for (int64_t i = i0; i < i1; i++) a[i] = b[i] + s * c[i];);
}
