/* exp and tanh for float32 written as plain arithmetic, so that loops calling them
 * vectorise (glibc's expf/tanhf are scalar calls). exp: Cephes' polynomial, as in
 * sse_mathfun, about 1-2 ulp, subnormal results included; tanh: a rational function, at most 6 ulp. NaN passes through.
 * The float64 kernels keep libm. Internal header. */
#ifndef FASTNN_FASTMATH_H
#define FASTNN_FASTMATH_H

#include <stdint.h>
#include <math.h>
#include <string.h>

static inline __attribute__((always_inline)) float fastnn_expf(float x)
{
    /* above hi exp overflows; below lo it is under half the least subnormal, 2^-150 */
    const float hi = 88.3762626647949f, lo = -103.972077083991796f;
    float v = x > hi ? hi : (x < lo ? lo : x);
    /* exp(v) = 2^n * exp(r), n = round(v / ln 2) by adding 1.5 * 2^23 (float operations
     * only: a float-to-int conversion after the clamps stops GCC 12 vectorising for AVX2),
     * r = v - n ln 2 in two parts for accuracy */
    const float magic = 12582912.0f;
    float t = v * 1.44269504088896341f + magic;
    float nf = t - magic;
    uint32_t tbits; /* unsigned: NaN's bits make the exponent below garbage, not UB */
    memcpy(&tbits, &t, sizeof tbits);
    uint32_t n = tbits - 0x4B400000u;
    float r = v - nf * 0.693359375f + nf * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    /* 2^n as two normal powers of two, 2^n1 * 2^n2 (n >= -150, so n1, n2 >= -75): both
     * products are exact while the result is normal, and the second rounds once into a
     * subnormal below 2^-126, where one 2^n would not exist */
    int32_t ni = (int32_t)n, n1 = ni / 2, n2 = ni - n1;
    uint32_t bits1 = ((uint32_t)n1 + 127u) << 23, bits2 = ((uint32_t)n2 + 127u) << 23;
    float scale1, scale2;
    memcpy(&scale1, &bits1, sizeof scale1);
    memcpy(&scale2, &bits2, sizeof scale2);
    float result = p * scale1 * scale2;
    result = x > hi ? (float)INFINITY : (x < lo ? 0.0f : result); /* overflow, underflow */
    return x != x ? x : result;
}

/* tanh as Eigen's 13/6-degree rational interpolant on [-9, 9] (tanh rounds to +-1 in float
 * beyond): 7 + 4 multiply-adds and one division, no exp, no branch; a few ulp over the whole
 * range (tests/test_activations.py measures it on a dense grid). */
static inline __attribute__((always_inline)) float fastnn_tanhf(float x)
{
    float v = x > 9.0f ? 9.0f : (x < -9.0f ? -9.0f : x);
    float z = v * v;
    float p = -2.76076847742355e-16f;
    p = p * z + 2.00018790482477e-13f;
    p = p * z - 8.60467152213735e-11f;
    p = p * z + 5.12229709037114e-08f;
    p = p * z + 1.48572235717979e-05f;
    p = p * z + 6.37261928875436e-04f;
    p = p * z + 4.89352455891786e-03f;
    float q = 1.19825839466702e-06f;
    q = q * z + 1.18534705686654e-04f;
    q = q * z + 2.26843463243900e-03f;
    q = q * z + 4.89352518554385e-03f;
    float result = v * p / q;
    return x != x ? x : result;
}

#endif
