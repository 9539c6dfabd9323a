// KvStore: the CPU key/value store of the KV retrieval service. Holds, per sequence, layer and
// kv head, the keys and values of every token as a contiguous [n, d] array (f32, or f16 that is
// converted to f32 on read), growing in chunks of chunk_tokens tokens.
//
// Byte accounting: a sequence is charged for its allocated capacity (K and V, all layers and
// heads) plus what Charge() adds for it (its key indexes); bytes_used() is the sum over live
// sequences. An Append that would push bytes_used()
// over memory_limit_bytes fails with RESOURCE_EXHAUSTED and changes nothing. Released
// sequences (Release, or idle longer than ttl_ms when ExpireIdle runs) free their memory;
// a later Append/read of a released id is FAILED_PRECONDITION, of an unknown id NOT_FOUND.
//
// Thread safety: all methods are thread-safe. Appends to one sequence are serialized; reads of
// one sequence run concurrently with each other (readers-writer lock per sequence).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "services/common/mutex.h"
#include "services/common/status.h"

namespace ragserve::kvr {

enum class KvDtype { kF32 = 0, kF16 = 1 };

// Bounds of a sequence's shape (InvalidArgument beyond them): a spec is the client's word, and
// per-layer state is allocated when the sequence is created.
inline constexpr int kMaxLayers = 1024;
inline constexpr int kMaxHeads = 1024;  // kv heads, and query heads (SequenceConfig)
inline constexpr int kMaxHeadDim = 1024;

struct SequenceSpec {
  int num_layers = 1;
  int num_kv_heads = 1;
  int head_dim = 128;
  KvDtype dtype = KvDtype::kF32;
};

struct KvStoreOptions {
  int64_t memory_limit_bytes = int64_t{8} << 30;
  int64_t ttl_ms = 0;          // idle time after which ExpireIdle() releases; 0 = never
  int64_t chunk_tokens = 256;  // capacity grows by whole chunks of tokens
  // Monotonic clock in milliseconds; empty = std::chrono::steady_clock (tests inject one).
  std::function<int64_t()> now_ms;
};

// Read-only view of one (sequence, layer, kv_head), valid only inside WithHead's callback.
// Exactly one of k32/k16 (and v32/v16) is set, by dtype; rows are [n, d] contiguous.
struct HeadView {
  KvDtype dtype = KvDtype::kF32;
  int64_t n = 0;
  int d = 0;
  const float* k32 = nullptr;
  const float* v32 = nullptr;
  const uint16_t* k16 = nullptr;
  const uint16_t* v16 = nullptr;
};

// Copies rows idx[0..m) of a view as f32 into k_out[m, d] and v_out[m, d] (either may be null).
void GatherRows(const HeadView& view, const int64_t* idx, int64_t m, float* k_out, float* v_out);
// Copies rows [start, start + m) of a view as f32 (either output may be null).
void CopyRows(const HeadView& view, int64_t start, int64_t m, float* k_out, float* v_out);

// IEEE half <-> float (round to nearest even; used for f16 storage).
uint16_t FloatToHalf(float f);
float HalfToFloat(uint16_t h);

class KvStore {
 public:
  explicit KvStore(KvStoreOptions options = {});
  ~KvStore();

  // Registers an empty sequence. AlreadyExists if live; InvalidArgument on an empty id or
  // layers/heads/head_dim < 1. A released id may be created again.
  Status CreateSequence(const std::string& seq, const SequenceSpec& spec);
  // Appends n >= 1 tokens to one layer: k and v are [n, num_kv_heads, head_dim] f32 (the DESIGN
  // KV-block layout), stored as the sequence's dtype. NaN/Inf -> InvalidArgument; over the
  // memory limit -> ResourceExhausted; in every error case nothing is stored.
  Status Append(const std::string& seq, int layer, int64_t n, const float* k, const float* v);
  // Charges delta bytes (negative: refunds) of memory held for the sequence outside the store
  // (its key indexes) to the sequence and to bytes_used(); Release frees them with the rest.
  // A positive delta that would push bytes_used() over the limit fails with ResourceExhausted
  // and changes nothing, unless `force` (memory already allocated: it is counted, and the next
  // Append over the limit fails instead).
  Status Charge(const std::string& seq, int64_t delta, bool force = false);
  // Frees the sequence now. NotFound for an unknown id; FailedPrecondition if already released.
  Status Release(const std::string& seq);
  // Releases every sequence idle for more than ttl_ms; returns how many (0 when ttl_ms == 0).
  int64_t ExpireIdle();

  StatusOr<SequenceSpec> Spec(const std::string& seq) const;
  // Tokens stored for one layer.
  StatusOr<int64_t> NumTokens(const std::string& seq, int layer) const;
  // Runs fn with a view of (seq, layer, kv_head) under the sequence's read lock (fn must not
  // call back into this store for the same sequence with a write). Refreshes the idle timer.
  Status WithHead(const std::string& seq, int layer, int kv_head,
                  const std::function<void(const HeadView&)>& fn) const;

  // Bytes charged to one sequence (allocated K/V capacity + Charge()).
  StatusOr<int64_t> SequenceBytes(const std::string& seq) const;
  int64_t bytes_used() const;
  int64_t memory_limit_bytes() const { return options_.memory_limit_bytes; }
  int64_t num_sequences() const;

 private:
  struct Sequence;
  StatusOr<std::shared_ptr<Sequence>> Find(const std::string& seq) const;
  int64_t Now() const;

  const KvStoreOptions options_;
  mutable Mutex mu_;  // taken after a Sequence lock, never before
  std::unordered_map<std::string, std::shared_ptr<Sequence>> seqs_ ABSL_GUARDED_BY(mu_);
  // Ids released recently (bounded, FIFO).
  std::unordered_set<std::string> released_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> released_order_ ABSL_GUARDED_BY(mu_);
  int64_t bytes_used_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ragserve::kvr
