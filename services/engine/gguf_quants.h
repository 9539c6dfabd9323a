// Scalar reference decoding of GGUF tensor types to f32, bit-exact to the format's definition
// (ggml's dequantize_row_* evaluated in plain IEEE f32, each product and difference rounded on its
// own: this file is built with -ffp-contract=off so no fused multiply-add changes a bit).
//
// Block layouts (little-endian; "f16" is an IEEE half):
//   Q8_0  32 values, 34 bytes: f16 d; i8 q[32].                 x = q * d
//   Q4_0  32 values, 18 bytes: f16 d; u8 qs[16].                x[j] = ((qs[j] & 15) - 8) * d,
//                                                                x[j+16] = ((qs[j] >> 4) - 8) * d
//   Q5_0  32 values, 22 bytes: f16 d; u8 qh[4] (u32, bit j = 5th bit of value j); u8 qs[16].
//         x[j] = (((qs[j] & 15) | bit j << 4) - 16) * d, x[j+16] = (((qs[j] >> 4) |
//         bit j+16 << 4) - 16) * d. Its q - 16 lie in [-16, 15], so a Q5_0 block is exactly a
//         Q8_0 block with the same d (RepackQ5_0ToQ8_0): llama.cpp's Q4_K_M writes Q5_0 for
//         matrices whose rows are not whole 256-value blocks.
//   Q4_K 256 values, 144 bytes: f16 d, dmin; u8 scales[12] (8 pairs of 6-bit scale/min);
//         u8 qs[128]. Sub-block s (32 values): x = (d * sc_s) * q - dmin * m_s, q a nibble
//         (low nibbles of 32 bytes, then their high nibbles, per 64 values).
//   Q6_K 256 values, 210 bytes: u8 ql[128] (low 4 bits); u8 qh[64] (high 2 bits); i8 scales[16];
//         f16 d. x = (d * scale_16) * (q - 32), q a 6-bit value.
// F32 / F16 / BF16 are widened exactly. The block decoders are kernels::DequantizeRef
// (kernels/cpu/quant.h, which also holds the integer GEMV/GEMM that run on the blocks directly:
// the loader keeps quantized tensors quantized unless WeightsLoadOptions asks otherwise).
#pragma once

#include <cstdint>

#include "services/common/status.h"

namespace ragserve::engine {

// Whether DequantizeGgml decodes `type` (a GgmlType id): F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_K,
// Q6_K.
bool CanDequantizeGgml(uint32_t type);

// Decodes `n` values (a multiple of the type's block size) of `type` stored at `src` into dst.
// InvalidArgument naming the type when it is not one CanDequantizeGgml accepts, or n is not a
// multiple of the block. src must hold n / block * block_bytes bytes (the caller checked).
Status DequantizeGgml(uint32_t type, const void* src, int64_t n, float* dst);

// Rewrites `blocks` Q5_0 blocks (22 bytes each) at src as Q8_0 blocks (34 bytes each) at dst:
// the same d, q - 16 as the int8 values; DequantizeRef of the result equals DequantizeGgml of the
// source bit for bit.
void RepackQ5_0ToQ8_0(const void* src, int64_t blocks, void* dst);

}  // namespace ragserve::engine
