/* STREAM triad, for measuring the machine's memory bandwidth with the same compiler flags and
 * thread team as the kernels (bench/ reports kernels as a fraction of it). */
#include "runtime.h"

/* a (n) <- b + s * c: 24 bytes of memory traffic per element (two reads, one write). */
void stream_triad_f64(double *restrict a, const double *restrict b, const double *restrict c,
                      double s, int64_t n)
{
    int nthreads = fastnn_threads_for_elements(n);
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t i = 0; i < n; i++) a[i] = b[i] + s * c[i];
}
