#include "services/kvr/kv_retrieval.h"

#include <algorithm>
#include <atomic>
#include <chrono>

#include "services/common/logging.h"

namespace ragserve::kvr {

struct KvRetrieval::Seq {
  // Prefill queries of one layer kept for the index build: tokens at positions that are
  // multiples of `stride`, rows [kept, Hq, d].
  struct QuerySample {
    int64_t next_pos = 0;
    int64_t stride = 1;
    std::vector<int64_t> pos;
    std::vector<float> rows;
  };
  SequenceSpec kv;
  int hq = 0;
  int group = 0;
  int64_t ttl_ms = 0;
  std::unique_ptr<HybridAttention> ha;
  std::atomic<int64_t> last_access_ms{0};
  Mutex mu;
  bool prefill_done ABSL_GUARDED_BY(mu) = false;
  std::vector<QuerySample> samples ABSL_GUARDED_BY(mu);  // per layer
};

KvRetrieval::KvRetrieval(KvRetrievalOptions options)
    : options_(std::move(options)), store_([this] {
        KvStoreOptions so;
        so.memory_limit_bytes = options_.memory_limit_bytes;
        return so;
      }()) {}

KvRetrieval::~KvRetrieval() = default;

int64_t KvRetrieval::Now() const {
  if (options_.now_ms) return options_.now_ms();
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

StatusOr<std::shared_ptr<KvRetrieval::Seq>> KvRetrieval::Find(const std::string& seq) const {
  {
    MutexLock lock(mu_);
    auto it = seqs_.find(seq);
    if (it != seqs_.end()) {
      it->second->last_access_ms = Now();
      return it->second;
    }
  }
  // Unknown here: let the store say whether it was released or never existed.
  RS_RETURN_IF_ERROR(store_.Spec(seq).status());
  return NotFound(StrCat("unknown sequence '", seq, "'"));
}

Status KvRetrieval::Create(const std::string& seq, const SequenceConfig& config) {
  ExpireIdle();
  const SequenceSpec& kv = config.kv;
  RS_CHECK_ARG(kv.num_kv_heads >= 1, "num_kv_heads must be >= 1, got ", kv.num_kv_heads);
  const int hq = config.num_q_heads == 0 ? kv.num_kv_heads : config.num_q_heads;
  RS_CHECK_ARG(hq <= kMaxHeads, "num_q_heads must be <= ", kMaxHeads, ", got ", hq);
  RS_CHECK_ARG(hq >= kv.num_kv_heads && hq % kv.num_kv_heads == 0, "num_q_heads ", hq,
               " must be a positive multiple of num_kv_heads ", kv.num_kv_heads);
  HybridOptions ho = options_.defaults;
  if (config.sink_tokens >= 0) ho.sink_tokens = config.sink_tokens;
  if (config.window_tokens >= 0) ho.window_tokens = config.window_tokens;
  if (config.index_kind >= 0) {
    RS_CHECK_ARG(config.index_kind <= static_cast<int>(KeyIndexKind::kAttentionAware),
                 "unknown index kind ", config.index_kind);
    ho.index_kind = static_cast<KeyIndexKind>(config.index_kind);
  }
  RS_CHECK_ARG(config.ttl_ms >= -1, "ttl must be >= 0, got ", config.ttl_ms);
  RS_RETURN_IF_ERROR(store_.CreateSequence(seq, kv));
  auto s = std::make_shared<Seq>();
  s->kv = kv;
  s->hq = hq;
  s->group = hq / kv.num_kv_heads;
  s->ttl_ms = config.ttl_ms >= 0 ? config.ttl_ms : options_.default_ttl_ms;
  s->ha = std::make_unique<HybridAttention>(&store_, ho);
  {
    MutexLock lock(s->mu);  // not shared yet; held so that the analysis checks this
    s->samples.resize(static_cast<size_t>(kv.num_layers));
  }
  s->last_access_ms = Now();
  MutexLock lock(mu_);
  seqs_[seq] = std::move(s);
  return OkStatus();
}

Status KvRetrieval::AppendKv(const std::string& seq, int layer, int64_t n, const float* k,
                             const float* v) {
  RS_ASSIGN_OR_RETURN(auto s, Find(seq));
  return store_.Append(seq, layer, n, k, v);
}

Status KvRetrieval::AddPrefillQueries(const std::string& seq, int layer, int64_t n,
                                      const float* q) {
  RS_ASSIGN_OR_RETURN(auto s, Find(seq));
  RS_CHECK_ARG(layer >= 0 && layer < s->kv.num_layers, "layer ", layer, " out of range [0, ",
               s->kv.num_layers, ")");
  RS_CHECK_ARG(n >= 0, "number of query tokens must be >= 0, got ", n);
  RS_CHECK_ARG(n == 0 || q != nullptr, "null prefill queries");
  const int64_t row = static_cast<int64_t>(s->hq) * s->kv.head_dim;
  RS_RETURN_IF_ERROR(index::CheckFinite(n * s->hq, s->kv.head_dim, q, "prefill query"));
  MutexLock lock(s->mu);
  if (s->prefill_done) {
    return FailedPrecondition(StrCat("sequence '", seq, "': prefill queries after FinishPrefill"));
  }
  auto& smp = s->samples[layer];
  const int64_t cap =
      std::max<int64_t>(1, options_.defaults.attention_aware.max_build_queries / s->group);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t pos = smp.next_pos + t;
    if (pos % smp.stride != 0) continue;
    smp.pos.push_back(pos);
    smp.rows.insert(smp.rows.end(), q + t * row, q + (t + 1) * row);
    if (static_cast<int64_t>(smp.pos.size()) > 2 * cap) {
      // Keep every other sampled token: positions stay evenly spread over the prompt.
      size_t w = 0;
      for (size_t i = 0; i < smp.pos.size(); ++i) {
        if (smp.pos[i] % (2 * smp.stride) != 0) continue;
        smp.pos[w] = smp.pos[i];
        std::copy(smp.rows.begin() + i * row, smp.rows.begin() + (i + 1) * row,
                  smp.rows.begin() + w * row);
        ++w;
      }
      smp.pos.resize(w);
      smp.rows.resize(w * row);
      smp.stride *= 2;
    }
  }
  smp.next_pos += n;
  return OkStatus();
}

StatusOr<double> KvRetrieval::FinishPrefill(const std::string& seq) {
  RS_ASSIGN_OR_RETURN(auto s, Find(seq));
  MutexLock lock(s->mu);
  RS_CHECK_ARG(!s->prefill_done, "sequence '", seq, "': FinishPrefill called twice");
  const auto t0 = std::chrono::steady_clock::now();
  const int d = s->kv.head_dim, g = s->group;
  for (int layer = 0; layer < s->kv.num_layers; ++layer) {
    auto& smp = s->samples[layer];
    const int64_t kept = static_cast<int64_t>(smp.pos.size());
    std::vector<float> buf(static_cast<size_t>(kept) * g * d);
    for (int kvh = 0; kvh < s->kv.num_kv_heads; ++kvh) {
      for (int64_t t = 0; t < kept; ++t) {
        const float* src = smp.rows.data() + (t * s->hq + kvh * g) * d;
        std::copy(src, src + static_cast<int64_t>(g) * d, buf.begin() + t * g * d);
      }
      RS_RETURN_IF_ERROR(Annotate(s->ha->BuildIndex(seq, layer, kvh, kept, g, buf.data()),
                                  StrCat("layer ", layer, " kv_head ", kvh)));
    }
    smp = Seq::QuerySample{};  // frees the kept queries
  }
  s->prefill_done = true;
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

StatusOr<AttendLayerResult> KvRetrieval::Attend(const std::string& seq, int layer, const float* q,
                                                int64_t q_len, const AttendOptions& opt) {
  RS_ASSIGN_OR_RETURN(auto s, Find(seq));
  const int d = s->kv.head_dim, g = s->group;
  RS_CHECK_ARG(q_len == static_cast<int64_t>(s->hq) * d, "queries must be [num_q_heads=", s->hq,
               ", head_dim=", d, "] = ", static_cast<int64_t>(s->hq) * d, " floats, got ", q_len);
  RS_CHECK_ARG(layer >= 0 && layer < s->kv.num_layers, "layer ", layer, " out of range [0, ",
               s->kv.num_layers, ")");
  AttendLayerResult r;
  r.o.resize(static_cast<size_t>(s->hq) * d);
  r.lse.resize(static_cast<size_t>(s->hq));
  for (int kvh = 0; kvh < s->kv.num_kv_heads; ++kvh) {
    AttendStats st;
    const int64_t off = static_cast<int64_t>(kvh) * g;
    RS_RETURN_IF_ERROR(s->ha->Attend(seq, layer, kvh, q + off * d, g, d, opt, r.o.data() + off * d,
                                     r.lse.data() + off, &st));
    r.keys_scored += st.keys_scored;
  }
  MutexLock lock(mu_);
  ++attend_calls_;
  return r;
}

StatusOr<int64_t> KvRetrieval::Release(const std::string& seq) {
  RS_ASSIGN_OR_RETURN(auto s, Find(seq));
  RS_ASSIGN_OR_RETURN(const int64_t bytes, store_.SequenceBytes(seq));
  RS_RETURN_IF_ERROR(store_.Release(seq));
  s->ha->Drop(seq);
  MutexLock lock(mu_);
  seqs_.erase(seq);
  return bytes;
}

StatusOr<SequenceConfig> KvRetrieval::Describe(const std::string& seq) const {
  RS_ASSIGN_OR_RETURN(auto s, Find(seq));
  SequenceConfig c;
  c.kv = s->kv;
  c.num_q_heads = s->hq;
  c.ttl_ms = s->ttl_ms;
  return c;
}

StatusOr<int64_t> KvRetrieval::NumTokens(const std::string& seq, int layer) const {
  RS_RETURN_IF_ERROR(Find(seq).status());
  return store_.NumTokens(seq, layer);
}

StatusOr<int64_t> KvRetrieval::SequenceBytes(const std::string& seq) const {
  RS_RETURN_IF_ERROR(Find(seq).status());
  return store_.SequenceBytes(seq);
}

int64_t KvRetrieval::ExpireIdle() {
  std::vector<std::string> idle;
  const int64_t now = Now();
  {
    MutexLock lock(mu_);
    for (const auto& [id, s] : seqs_) {
      if (s->ttl_ms > 0 && now - s->last_access_ms.load() > s->ttl_ms) idle.push_back(id);
    }
  }
  int64_t n = 0;
  for (const auto& id : idle) {
    if (Release(id).ok()) {
      ++n;
      RS_LOG(info, "kvr: released idle sequence '{}'", id);
    }
  }
  return n;
}

KvRetrievalStats KvRetrieval::Stats() const {
  KvRetrievalStats st;
  st.bytes_used = store_.bytes_used();
  st.bytes_limit = store_.memory_limit_bytes();
  MutexLock lock(mu_);
  st.sequences = static_cast<int64_t>(seqs_.size());
  st.attend_calls = attend_calls_;
  return st;
}

}  // namespace ragserve::kvr
