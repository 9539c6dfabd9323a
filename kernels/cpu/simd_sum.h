#pragma once

// Horizontal sums of SIMD registers, shared by the f32/bf16 GEMVs (ops_fast.cc) and the quantized
// kernels (quant_simd.cc). Per-function target attributes as in those files: callable from any
// function compiled for AVX2 (or a superset), no -march needed.

#include <immintrin.h>

namespace ragserve::kernels::internal {

// The sum of the 8 lanes of an AVX register.
__attribute__((target("avx2,fma,f16c"))) inline float HorizontalSum256(__m256 v) {
  const __m128 lo = _mm256_castps256_ps128(v);
  const __m128 hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace ragserve::kernels::internal
