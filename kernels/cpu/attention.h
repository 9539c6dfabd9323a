// Attention with log-sum-exp on CPU: the partial-attention primitive shared by the engine's
// forward pass, the KV retrieval service (RetrievalAttention) and APE.
//
// A partial attention over a set of keys S is the pair
//   o   = sum_{j in S} softmax_j(scale * q.k_j) v_j        (normalized within S)
//   lse = log sum_{j in S} exp(scale * q.k_j)
// Two partials over disjoint key sets merge exactly (MergePartial), which is what lets the
// static window, the retrieved keys and parallel-encoded passages be attended separately.
#pragma once

#include <cstdint>

namespace ragserve::kernels {

// A group of h query heads that share one kv head, attending n keys.
// q: [h, d], k: [n, d], v: [n, d] (row strides ldk/ldv floats, >= d) -> o: [h, d], lse: [h].
// n == 0 writes o = 0 and lse = -inf. Plain reference version (no SIMD, no threads).
void AttentionPartialRef(const float* q, int h, const float* k, int64_t ldk, const float* v,
                         int64_t ldv, int64_t n, int d, float scale, float* o, float* lse);
// Same contract, at memory bandwidth for long n (AVX2/FMA when the CPU has it and d % 8 == 0,
// else a plain loop): K and V are each read once for all h heads (scores of every head from one
// read of a key row, then the weighted sum of V rows); tested against AttentionPartialRef.
void AttentionPartial(const float* q, int h, const float* k, int64_t ldk, const float* v,
                      int64_t ldv, int64_t n, int d, float scale, float* o, float* lse);

// Split-K AttentionPartial on `threads` threads (spin_pool.h): the n keys in one range per
// thread, the partials merged exactly (MergePartial). For one kv head of a long context, where
// threads over heads would leave cores idle. threads <= 1 or short n: AttentionPartial.
void AttentionPartialParallel(const float* q, int h, const float* k, int64_t ldk, const float* v,
                              int64_t ldv, int64_t n, int d, float scale, float* o, float* lse,
                              int threads);

// The scores s[hh * n + j] = scale * q_hh . k_j of h query heads q: [h, d] against n keys
// (row stride ldk), every key row read once for all heads (the exact key scan of retrieval).
void KeyScores(const float* q, int h, const float* k, int64_t ldk, int64_t n, int d, float scale,
               float* s);

// Same contract over the m keys k[idx[i]] / v[idx[i]] (a gathered subset, e.g. retrieved keys).
void AttentionPartialGather(const float* q, int h, const float* k, int64_t ldk, const float* v,
                            int64_t ldv, const int64_t* idx, int64_t m, int d, float scale,
                            float* o, float* lse);

// Attention of n queries over a cache or a block, tiled for prefill: causal = the contract of
// Ops::CausalAttention (window applies), !causal = Ops::BlockAttention (every key visible). For
// each kv head and block of queries, blocks of keys go through single-threaded sgemm
// (S = scale Q K^T, then O += P V) with an online softmax, so the keys are read once per query
// block instead of once per query. Equal to AttentionPartial per row within float reordering.
// (kv head, query block) tasks run on `threads` threads (spin_pool.h).
void AttentionTiled(const float* q, int n, int heads, int kv_heads, int d, const float* k,
                    const float* v, int64_t len, bool causal, int64_t window, float scale, float* o,
                    float* lse, int threads);

// Merges partial b into partial a in place for h heads of dim d:
//   lse = log(exp(lse_a) + exp(lse_b)); o = (exp(lse_a - lse) o_a + exp(lse_b - lse) o_b).
// Either side may be empty (lse = -inf).
void MergePartial(float* o_a, float* lse_a, const float* o_b, const float* lse_b, int h, int d);

}  // namespace ragserve::kernels
