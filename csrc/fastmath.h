/* exp and tanh for float32 written as plain arithmetic, so that loops calling them
 * vectorise (glibc's expf/tanhf are scalar calls). Cephes' polynomials, as in
 * sse_mathfun: about 1-2 ulp over the whole range. NaN passes through. The float64 kernels
 * keep libm. Internal header. */
#ifndef FASTNN_FASTMATH_H
#define FASTNN_FASTMATH_H

#include <stdint.h>
#include <math.h>
#include <string.h>

static inline __attribute__((always_inline)) float fastnn_expf(float x)
{
    const float hi = 88.3762626647949f, lo = -88.3762626647949f;
    float v = x > hi ? hi : (x < lo ? lo : x);
    /* exp(v) = 2^n * exp(r), n = round(v / ln 2) by adding 1.5 * 2^23 (float operations
     * only: a float-to-int conversion after the clamps stops GCC 12 vectorising for AVX2),
     * r = v - n ln 2 in two parts for accuracy */
    const float magic = 12582912.0f;
    float t = v * 1.44269504088896341f + magic;
    float nf = t - magic;
    int32_t tbits;
    memcpy(&tbits, &t, sizeof tbits);
    int32_t n = tbits - 0x4B400000;
    float r = v - nf * 0.693359375f + nf * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = (n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float result = p * scale;
    result = x > hi ? (float)INFINITY : (x < lo ? 0.0f : result); /* overflow, underflow */
    return x != x ? x : result;
}

static inline __attribute__((always_inline)) float fastnn_tanhf(float x)
{
    float ax = x < 0 ? -x : x;
    /* small |x|: odd polynomial; else 1 - 2 / (exp(2|x|) + 1), which does not cancel there */
    float z = x * x;
    float p = -5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    float small = p * z * x + x;
    float big = 1.0f - 2.0f / (fastnn_expf(2.0f * ax) + 1.0f);
    big = x < 0 ? -big : big;
    float result = ax < 0.625f ? small : big;
    return x != x ? x : result;
}

#endif
