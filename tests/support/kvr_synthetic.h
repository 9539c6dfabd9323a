// Test support (linked by tests and benches only, never by a service).
//
// Synthetic RetrievalAttention workloads: keys, values and queries of one kv head and its group
// of query heads, with the properties the paper relies on:
//   - queries and keys are out of distribution to each other: different means and different
//     anisotropic covariances (random rotations of exponentially decaying spectra);
//   - both are RoPE-rotated by position (HF rotate-half convention, pairs (i, i + d/2));
//   - attention is concentrated: each query has a "topic" and a salient_fraction of keys carry a
//     component along one topic direction; a query's top keys are the salient keys of its topic.
//     Topic directions live in the lowest-frequency RoPE dims so position rotates them only
//     slightly. Keys see the topic only weakly (their variance is elsewhere) while queries see
//     it strongly: key-space clusters and key-key neighbourhoods do not follow what a query
//     attends to, which is what defeats IVF/HNSW built over keys alone (the paper's OOD finding).
// Fully determined by the seed.
#pragma once

#include <cstdint>
#include <vector>

#include "services/common/status.h"

namespace ragserve::kvr {

struct SyntheticParams {
  int64_t n_keys = 4096;  // prefill tokens (keys, values and prefill queries each)
  int head_dim = 128;     // d, even
  int group_size = 4;     // query heads sharing the kv head (GQA group)
  int64_t n_decode = 16;  // decode queries, at positions n_keys, n_keys + 1, ...
  int n_topics = 0;       // 0: max(8, n_keys / 2048)
  double salient_fraction = 0.05;
  float key_mean_norm = 6.0f;    // |mean of keys| (before RoPE)
  float query_mean_norm = 6.0f;  // |mean of queries|, a different random direction
  // Salient keys carry key_topic_strength * (0.75 + 0.25|N(0,1)|) along their topic direction,
  // small next to the key noise (norm ~ sqrt(d)), so clustering keys does not separate topics;
  // queries carry query_topic_strength along theirs, so q.k of a query with the salient keys
  // of its topic is ~ key * query strength above the rest: the attention-concentration knob.
  float key_topic_strength = 3.0f;
  float query_topic_strength = 50.0f;
  // Scale of key and query noise inside the topic subspace (the 2*max(1, d/16) lowest-frequency
  // RoPE dims): small, so the large query component there adds little noise to q.k.
  float topic_subspace_noise = 0.1f;
  float query_noise_scale = 0.3f;  // query covariance scale outside the topic subspace
  float rope_theta = 500000.0f;
  uint64_t seed = 1;
};

struct SyntheticWorkload {
  int64_t n_keys = 0;
  int head_dim = 0;
  int group_size = 0;
  int64_t n_decode = 0;
  std::vector<float> keys;             // [n_keys, d], RoPE-rotated by position
  std::vector<float> values;           // [n_keys, d]
  std::vector<float> prefill_queries;  // [n_keys, group_size, d] (token t, head j at t*h + j)
  std::vector<float> decode_queries;   // [n_decode, group_size, d]
};

// InvalidArgument on n_keys < 1, odd or non-positive head_dim, group_size < 1, n_decode < 0,
// salient_fraction outside [0, 1].
StatusOr<SyntheticWorkload> GenerateWorkload(const SyntheticParams& p);

// n independent N(0, scale^2) values from a std::mt19937_64 seeded with `seed`.
std::vector<float> RandomNormal(size_t n, uint64_t seed, float scale = 1.0f);

// Rotates x[d] in place by RoPE at position pos (pairs (i, i + d/2), freq theta^(-2i/d)).
void ApplyRope(float* x, int d, int64_t pos, float theta);

}  // namespace ragserve::kvr
