/* One register-blocked GEMM micro-kernel and its transposing pack, for one ISA and one element
 * type: a template, included by gemm.c with these macros defined:
 *   REAL, VEC, W (lanes per vector), MR (rows per tile), NV (vectors per row: NR = NV * W),
 *   MASK, MASK_ALL, MASK_FIRST(n) (the first n lanes), LOADU, MLOADU(mask, p), STOREU,
 *   MSTOREU(p, mask, v), FMADD(a, b, c) = a * b + c rounded once, SET1, ADD, MAX, ZERO,
 *   TB and TRANSPOSE_BLOCK (a TB x TB transpose, for the pack), TARGET (the function
 *   attribute), UK_TILE, UK and PACK (the names of the tile, the kernel and the pack).
 * It undefines those it shares with every includer at its end; the mask macros and the
 * masked load are the includer's to undefine.
 *
 * Every path computes each output element the same way, whatever its vector width, tile shape
 * or blocking: acc = 0, or the partial sum in cin when a K chunk continues one
 * (c_mode & GEMM_C_CONTINUE); acc = fma(a[i][p], b[p][j], acc) for p = 0, 1, ... in order;
 * then c + acc when the product accumulates into c (c_mode & GEMM_C_ACCUMULATE: summed first,
 * so it rounds as the product does, as BLAS's beta = 1); + bias[j]; max(0, acc) for ReLU.
 * The ISA paths therefore agree bit for bit, and so do any two thread counts. */

/* c[0:m, 0:nv*W] tile of `rows` (MR or MR / 2) rows and nv vectors per row; `full`: all
 * nv*W columns are valid, else the last vector holds n - (nv-1)*W valid lanes (masked loads
 * and stores never touch the rest). Rows m <= i < rows read row 0 of a and are not stored. */
TARGET static inline __attribute__((always_inline)) void UK_TILE(
    const int rows, const int nv, const int full, int64_t m, int64_t n, int64_t k, const REAL *restrict a,
    int64_t rsa, int64_t csa, const REAL *restrict b, int64_t ldb, REAL *c, int64_t ldc,
    const REAL *cin, int64_t ldcin, int c_mode, const REAL *restrict bias, int relu)
{
    VEC acc[MR][NV];
    const MASK last = full ? MASK_ALL : MASK_FIRST(n - (nv - 1) * W);
    const REAL *ap[MR];
#pragma GCC unroll 16
    for (int i = 0; i < rows; i++) ap[i] = a + (i < m ? i : 0) * rsa;
#pragma GCC unroll 16
    for (int i = 0; i < rows; i++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            if (!(c_mode & GEMM_C_CONTINUE) || i >= m) {
                acc[i][v] = ZERO;
            } else {
                const REAL *ci = cin + i * ldcin + v * W;
                acc[i][v] = (full || v < nv - 1) ? LOADU(ci) : MLOADU(last, ci);
            }
        }
    for (int64_t p = 0; p < k; p++) {
        const REAL *bp = b + p * ldb;
        VEC bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            bv[v] = (full || v < nv - 1) ? LOADU(bp + v * W) : MLOADU(last, bp + v * W);
#pragma GCC unroll 16
        for (int i = 0; i < rows; i++) {
            VEC ai = SET1(ap[i][p * csa]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) acc[i][v] = FMADD(ai, bv[v], acc[i][v]);
        }
    }
    if (c_mode & GEMM_C_ACCUMULATE)
#pragma GCC unroll 16
        for (int i = 0; i < rows; i++) {
            if (i >= m) break;
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) {
                const REAL *ci = c + i * ldc + v * W;
                acc[i][v] = ADD((full || v < nv - 1) ? LOADU(ci) : MLOADU(last, ci), acc[i][v]);
            }
        }
    if (bias) {
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            VEC bb = (full || v < nv - 1) ? LOADU(bias + v * W) : MLOADU(last, bias + v * W);
#pragma GCC unroll 16
            for (int i = 0; i < rows; i++) acc[i][v] = ADD(acc[i][v], bb);
        }
    }
    if (relu) /* max(0, acc) with 0 first: NaN and -0 pass through, as in y < 0 ? 0 : y */
#pragma GCC unroll 16
        for (int i = 0; i < rows; i++)
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) acc[i][v] = MAX(ZERO, acc[i][v]);
#pragma GCC unroll 16
    for (int i = 0; i < rows; i++) {
        if (i >= m) break;
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            REAL *ci = c + i * ldc + v * W;
            if (full || v < nv - 1) STOREU(ci, acc[i][v]);
            else MSTOREU(ci, last, acc[i][v]);
        }
    }
}

/* UK_TILE for a constant number of rows, with nv and full made constants too. */
TARGET static inline __attribute__((always_inline)) void UK_ROWS(
    const int rows, int64_t m, int64_t n, int64_t k, const REAL *a, int64_t rsa, int64_t csa,
    const REAL *b, int64_t ldb, REAL *c, int64_t ldc, const REAL *cin, int64_t ldcin,
    int c_mode, const REAL *bias, int relu)
{
#define UK_CASE(NVC, FULL)                                                                 \
    UK_TILE(rows, NVC, FULL, m, n, k, a, rsa, csa, b, ldb, c, ldc, cin, ldcin, c_mode, bias, \
            relu)
    int nv = (int)((n + W - 1) / W);
    int full = n % W == 0;
    switch (nv * 2 + full) {
    case 2: UK_CASE(1, 0); break;
    case 3: UK_CASE(1, 1); break;
#if NV >= 2
    case 4: UK_CASE(2, 0); break;
    case 5: UK_CASE(2, 1); break;
#endif
#if NV >= 3
    case 6: UK_CASE(3, 0); break;
    case 7: UK_CASE(3, 1); break;
#endif
    default: break;
    }
#undef UK_CASE
}

/* The micro-kernel: the tile c (m, n) of the product of a (m, k) and b (k, n), see above;
 * m <= MR, n <= NV * W. A short last tile of rows (M = 10: 8 + 2) runs on half the
 * accumulators. */
TARGET static void UK(int64_t m, int64_t n, int64_t k, const REAL *a, int64_t rsa, int64_t csa,
                      const REAL *b, int64_t ldb, REAL *c, int64_t ldc, const REAL *cin,
                      int64_t ldcin, int c_mode, const REAL *bias, int relu)
{
    if (m <= MR / 2)
        UK_ROWS(MR / 2, m, n, k, a, rsa, csa, b, ldb, c, ldc, cin, ldcin, c_mode, bias, relu);
    else
        UK_ROWS(MR, m, n, k, a, rsa, csa, b, ldb, c, ldc, cin, ldcin, c_mode, bias, relu);
}

/* dst (k, n) row-major with row stride NV*W <- src (n, k) row-major with row stride ld,
 * i.e. dst[p][j] = src[j][p]: a block of B^T laid out as the micro-kernel reads B. */
TARGET static void PACK(REAL *restrict dst, const REAL *restrict src, int64_t ld, int64_t n,
                        int64_t k)
{
    const int64_t nr = NV * W;
    int64_t j = 0;
    for (; j + TB <= n; j += TB) {
        int64_t p = 0;
        for (; p + TB <= k; p += TB) TRANSPOSE_BLOCK(dst + p * nr + j, nr, src + j * ld + p, ld);
        for (; p < k; p++)
            for (int64_t jj = 0; jj < TB; jj++) dst[p * nr + j + jj] = src[(j + jj) * ld + p];
    }
    for (; j < n; j++)
        for (int64_t p = 0; p < k; p++) dst[p * nr + j] = src[j * ld + p];
}

#undef REAL
#undef VEC
#undef W
#undef LOADU
#undef STOREU
#undef MSTOREU
#undef FMADD
#undef SET1
#undef ADD
#undef MAX
#undef ZERO
#undef TB
#undef TRANSPOSE_BLOCK
#undef UK_TILE
#undef UK_ROWS
#undef UK
#undef PACK
