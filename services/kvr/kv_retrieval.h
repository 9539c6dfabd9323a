// KvRetrieval: the whole KV retrieval service as a gRPC-free library (the gRPC adapter in
// service.h is a thin layer over it; the decoder can link it in-process).
//
// A sequence has L layers of K/V for Hkv kv heads and Hq = group * Hkv query heads (query head
// i reads kv head i / group, the HF GQA convention). Its life cycle:
//   Create -> AppendKv / AddPrefillQueries (prefill, any chunking) -> FinishPrefill (builds one
//   key index per layer and kv head) -> Attend / AppendKv (decode) -> Release (or idle TTL).
// Prefill queries are subsampled while they arrive (every s-th token, s doubling as needed) so
// that at most ~max_build_queries query vectors per kv head are ever held.
//
// Thread safety: all methods are thread-safe; different sequences never block each other for
// long (per-sequence state is reached under a short map lock).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "services/common/mutex.h"
#include "services/kvr/hybrid_attention.h"
#include "services/kvr/kv_store.h"

namespace ragserve::kvr {

struct KvRetrievalOptions {
  int64_t memory_limit_bytes = int64_t{8} << 30;  // K/V + key index bytes of all sequences
  int64_t default_ttl_ms = 0;  // idle release when a sequence gives none; 0 = never
  HybridOptions defaults;      // index parameters; sinks/window/kind defaults
  // Monotonic clock in milliseconds for TTLs; empty = steady_clock (tests inject one).
  std::function<int64_t()> now_ms;
};

struct SequenceConfig {
  SequenceSpec kv;             // layers, kv heads, head dim, storage dtype
  int num_q_heads = 0;         // multiple of kv.num_kv_heads; 0 = kv.num_kv_heads
  int64_t sink_tokens = -1;    // -1 = the service default
  int64_t window_tokens = -1;  // -1 = the service default
  int index_kind = -1;         // a KeyIndexKind value; -1 = the service default
  int64_t ttl_ms = -1;         // -1 = the service default; 0 = never
};

struct AttendLayerResult {
  std::vector<float> o;    // [Hq, d]
  std::vector<float> lse;  // [Hq]
  int64_t keys_scored = 0;
};

struct KvRetrievalStats {
  int64_t sequences = 0;
  int64_t bytes_used = 0;
  int64_t bytes_limit = 0;
  int64_t attend_calls = 0;
};

class KvRetrieval {
 public:
  explicit KvRetrieval(KvRetrievalOptions options = {});
  ~KvRetrieval();

  // InvalidArgument on a bad config (names the field), AlreadyExists for a live id.
  Status Create(const std::string& seq, const SequenceConfig& config);
  // k, v: [n, Hkv, d] f32 for one layer (prefill or decode). Errors as KvStore::Append.
  Status AppendKv(const std::string& seq, int layer, int64_t n, const float* k, const float* v);
  // q: [n, Hq, d] f32 prefill queries of one layer, in token order (positions continue from the
  // previous call for that layer). FailedPrecondition after FinishPrefill.
  Status AddPrefillQueries(const std::string& seq, int layer, int64_t n, const float* q);
  // Builds the key index of every (layer, kv head) from the collected queries; returns the
  // build time in milliseconds. Layers whose middle is still empty build lazily later.
  StatusOr<double> FinishPrefill(const std::string& seq);
  // q: [Hq, d] -> o [Hq, d], lse [Hq] for one layer (every kv head of it).
  StatusOr<AttendLayerResult> Attend(const std::string& seq, int layer, const float* q,
                                     int64_t q_len, const AttendOptions& opt);
  // Frees the sequence; returns the bytes it held. NotFound / FailedPrecondition as KvStore.
  StatusOr<int64_t> Release(const std::string& seq);
  // The resolved config of a live sequence (num_q_heads filled in).
  StatusOr<SequenceConfig> Describe(const std::string& seq) const;
  // Tokens stored in one layer.
  StatusOr<int64_t> NumTokens(const std::string& seq, int layer) const;
  StatusOr<int64_t> SequenceBytes(const std::string& seq) const;
  // Releases sequences idle longer than their TTL; returns how many.
  int64_t ExpireIdle();
  KvRetrievalStats Stats() const;

 private:
  struct Seq;
  StatusOr<std::shared_ptr<Seq>> Find(const std::string& seq) const;
  int64_t Now() const;

  const KvRetrievalOptions options_;
  KvStore store_;
  mutable Mutex mu_;
  std::map<std::string, std::shared_ptr<Seq>> seqs_ ABSL_GUARDED_BY(mu_);
  int64_t attend_calls_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ragserve::kvr
