#include "services/kvr/retrieval_kv_source.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "kernels/cpu/attention.h"
#include "services/common/logging.h"

namespace ragserve::kvr {
namespace {

class LocalKvrSequence final : public KvrSequence {
 public:
  LocalKvrSequence(KvRetrieval* kvr, std::string id, int hq, int d)
      : kvr_(kvr), id_(std::move(id)), hq_(hq), d_(d) {}

  Status AddPrefill(int layer, int64_t n, const float* k, const float* v, const float* q) override {
    RS_RETURN_IF_ERROR(kvr_->AppendKv(id_, layer, n, k, v));
    return kvr_->AddPrefillQueries(id_, layer, n, q);
  }
  StatusOr<double> FinishPrefill() override { return kvr_->FinishPrefill(id_); }
  Status Append(int64_t n, const std::vector<const float*>& k,
                const std::vector<const float*>& v) override {
    for (size_t l = 0; l < k.size(); ++l) {
      RS_RETURN_IF_ERROR(kvr_->AppendKv(id_, static_cast<int>(l), n, k[l], v[l]));
    }
    return OkStatus();
  }
  Status Attend(int layer, int64_t n, const float* q, const AttendOptions& opt, float* o,
                float* lse, int64_t* keys_scored) override {
    const int64_t row = int64_t{hq_} * d_;
    for (int64_t i = 0; i < n; ++i) {
      RS_ASSIGN_OR_RETURN(AttendLayerResult r, kvr_->Attend(id_, layer, q + i * row, row, opt));
      std::copy(r.o.begin(), r.o.end(), o + i * row);
      std::copy(r.lse.begin(), r.lse.end(), lse + i * hq_);
      if (keys_scored != nullptr) *keys_scored += r.keys_scored;
    }
    return OkStatus();
  }
  Status Release() override { return kvr_->Release(id_).status(); }

 private:
  KvRetrieval* kvr_;
  const std::string id_;
  const int hq_, d_;
};

}  // namespace

StatusOr<std::unique_ptr<KvrSequence>> LocalKvrClient::Create(const std::string& id,
                                                              const SequenceConfig& config) {
  RS_RETURN_IF_ERROR(kvr_->Create(id, config));
  RS_ASSIGN_OR_RETURN(const SequenceConfig resolved, kvr_->Describe(id));
  return std::unique_ptr<KvrSequence>(
      std::make_unique<LocalKvrSequence>(kvr_, id, resolved.num_q_heads, resolved.kv.head_dim));
}

namespace internal {

StatusOr<SequenceConfig> SourceSequenceConfig(const engine::KvGeometry& g,
                                              const RetrievalSourceOptions& options) {
  RS_CHECK_ARG(g.num_layers >= 1 && g.num_kv_heads >= 1 && g.head_dim >= 1 &&
                   g.num_heads >= g.num_kv_heads && g.num_heads % g.num_kv_heads == 0,
               "bad KV geometry: layers ", g.num_layers, ", heads ", g.num_heads, ", kv heads ",
               g.num_kv_heads, ", head_dim ", g.head_dim);
  RS_CHECK_ARG(options.prefill_tokens >= 1, "prefill_tokens must be >= 1, got ",
               options.prefill_tokens);
  RS_CHECK_ARG(options.attend.top_k >= 1, "top_k must be >= 1, got ", options.attend.top_k);
  RS_CHECK_ARG(options.attend.ef_search >= 0, "ef_search must be >= 0, got ",
               options.attend.ef_search);
  SequenceConfig cfg;
  cfg.kv.num_layers = g.num_layers;
  cfg.kv.num_kv_heads = g.num_kv_heads;
  cfg.kv.head_dim = g.head_dim;
  cfg.kv.dtype = options.dtype;
  cfg.num_q_heads = g.num_heads;
  cfg.sink_tokens = options.sink_tokens;
  cfg.window_tokens = options.window_tokens;
  cfg.index_kind = options.index_kind;
  cfg.ttl_ms = options.ttl_ms;
  return cfg;
}

std::pair<float*, float*> PendingKv::Extend(int layer, int64_t n, bool replace) {
  const size_t at = replace ? 0 : static_cast<size_t>(n_[layer] * row_);
  const size_t size = at + static_cast<size_t>(n * row_);
  k_[layer].resize(size);
  v_[layer].resize(size);
  n_[layer] = (replace ? 0 : n_[layer]) + n;
  return {k_[layer].data() + at, v_[layer].data() + at};
}

void PendingKv::Clear(int layer) {
  k_[layer].clear();
  v_[layer].clear();
  n_[layer] = 0;
}

StatusOr<int64_t> PendingKv::Flush(KvrSequence* seq, int64_t max_append_bytes) {
  const int64_t n = n_[0];
  if (n == 0) return int64_t{0};
  for (size_t l = 0; l < n_.size(); ++l) {
    if (n_[l] != n) {
      return Internal(StrCat("layer ", l, " holds ", n_[l], " pending tokens, layer 0 ", n,
                             " (an incomplete forward step)"));
    }
  }
  // A decode step holds one token; the switch after a background build all those decoded
  // meanwhile: sent in slices that keep a remote store's messages well under gRPC's limit.
  const int64_t token_bytes = int64_t{2} * row_ * static_cast<int64_t>(sizeof(float) * n_.size());
  const int64_t slice = std::max<int64_t>(1, max_append_bytes / token_bytes);
  std::vector<const float*> ks(n_.size()), vs(n_.size());
  for (int64_t t = 0; t < n; t += slice) {
    for (size_t l = 0; l < n_.size(); ++l) {
      ks[l] = k_[l].data() + t * row_;
      vs[l] = v_[l].data() + t * row_;
    }
    RS_RETURN_IF_ERROR(seq->Append(std::min(slice, n - t), ks, vs));
  }
  for (size_t l = 0; l < n_.size(); ++l) Clear(static_cast<int>(l));
  return n;
}

}  // namespace internal

StatusOr<std::unique_ptr<RetrievalKvSource>> RetrievalKvSource::Create(
    KvrClient* client, const std::string& id, const engine::KvGeometry& g,
    const RetrievalSourceOptions& options, const kernels::Ops* ops) {
  RS_CHECK_ARG(client != nullptr, "null KV retrieval client");
  RS_CHECK_ARG(!options.attend.retrieved_only,
               "retrieved_only is not supported (the source attends the static set through the "
               "store)");
  RS_ASSIGN_OR_RETURN(const SequenceConfig cfg, internal::SourceSequenceConfig(g, options));
  RS_ASSIGN_OR_RETURN(auto seq, client->Create(id, cfg));
  return std::unique_ptr<RetrievalKvSource>(
      new RetrievalKvSource(id, g, options, std::move(seq), ops));
}

RetrievalSource::RetrievalSource(std::string id, const engine::KvGeometry& g,
                                 RetrievalSourceOptions options, std::unique_ptr<KvrSequence> seq)
    : id_(std::move(id)),
      g_(g),
      options_(std::move(options)),
      seq_(std::move(seq)),
      pending_(g.num_layers, g.kv_row()) {}

RetrievalSource::~RetrievalSource() { (void)RetrievalSource::Release(); }

Status RetrievalSource::Release() {
  if (seq_ == nullptr) return OkStatus();
  if (build_ != nullptr) {
    MutexLock lock(build_->mu);
    if (!build_->done) {
      // FinishPrefill is running on the executor: the task releases the sequence when it returns.
      build_->abandoned = std::move(seq_);
      return OkStatus();
    }
  }
  build_.reset();
  std::unique_ptr<KvrSequence> seq = std::move(seq_);
  return Annotate(seq->Release(), StrCat("kv retrieval: release of sequence '", id_, "'"));
}

Status RetrievalSource::StartBuild() {
  if (options_.build_executor != nullptr) {
    auto state = std::make_shared<BuildState>();
    KvrSequence* seq = seq_.get();  // owned by the source, or by `state` once abandoned
    std::string id = id_;
    const Status queued = options_.build_executor->Submit([state, seq, id] {
      double ms = 0;
      const Status st = CallCatchingExceptions("key index build", [&]() -> Status {
        RS_ASSIGN_OR_RETURN(ms, seq->FinishPrefill());
        return OkStatus();
      });
      std::unique_ptr<KvrSequence> abandoned;
      {
        MutexLock lock(state->mu);
        state->done = true;
        state->status = st;
        state->ms = ms;
        abandoned = std::move(state->abandoned);
      }
      if (abandoned != nullptr) {
        // The source was released during the build: the result is discarded.
        if (Status rel = abandoned->Release(); !rel.ok()) {
          RS_LOG(warn, "kv retrieval: release of sequence '{}' after its build: {}", id,
                 rel.ToString());
        }
      }
    });
    if (queued.ok()) {
      build_ = std::move(state);
      phase_ = Phase::kBuilding;
      return OkStatus();
    }
    RS_LOG(warn, "kv retrieval: sequence '{}': index build runs inline ({})", id_,
           queued.ToString());
  }
  RS_ASSIGN_OR_RETURN(stats_.build_ms, seq_->FinishPrefill());
  phase_ = Phase::kDecoding;
  return OkStatus();
}

StatusOr<bool> RetrievalSource::PollBuild() {
  Status st;
  {
    MutexLock lock(build_->mu);
    if (!build_->done) return false;
    st = build_->status;
    stats_.build_ms = build_->ms;
  }
  build_.reset();
  RS_RETURN_IF_ERROR(st);
  phase_ = Phase::kDecoding;
  return true;
}

void RetrievalSource::Fail(const Status& st) {
  if (status_.ok()) status_ = Annotate(st, StrCat("kv retrieval (sequence '", id_, "')"));
}

Status RetrievalSource::CheckAppend(int layer, const float* k, const float* v, int n) const {
  if (layer < 0 || layer >= g_.num_layers || n < 1 || k == nullptr || v == nullptr) {
    return InvalidArgument(StrCat("Append: bad layer ", layer, " or token count ", n));
  }
  if (seq_ == nullptr) return FailedPrecondition("Append after Release");
  return OkStatus();
}

Status RetrievalSource::CheckAttend(int layer, const float* q, int n) const {
  if (!status_.ok()) return status_;
  if (layer < 0 || layer >= g_.num_layers || n < 1 || q == nullptr) {
    return InvalidArgument(StrCat("Attend: bad layer ", layer, " or token count ", n));
  }
  if (seq_ == nullptr) return FailedPrecondition("Attend after Release");
  const int64_t m = pending_.count(layer);
  if (phase_ != Phase::kPrefill ? n > m : n != m) {
    return InvalidArgument(
        StrCat("Attend of ", n, " queries after an Append of ", m, " tokens in layer ", layer));
  }
  return OkStatus();
}

Status RetrievalSource::FlushPending() {
  RS_ASSIGN_OR_RETURN(const int64_t n, pending_.Flush(seq_.get()));
  if (n > 0) {
    ++stats_.appends;
    stored_ += n;
  }
  return OkStatus();
}

RetrievalKvSource::RetrievalKvSource(std::string id, const engine::KvGeometry& g,
                                     RetrievalSourceOptions options,
                                     std::unique_ptr<KvrSequence> seq, const kernels::Ops* ops)
    : RetrievalSource(std::move(id), g, std::move(options), std::move(seq)),
      ops_(ops),
      prefill_cache_(std::make_unique<engine::KvCache>(g, 0, ops)) {}

RetrievalKvSource::~RetrievalKvSource() { (void)Release(); }

Status RetrievalKvSource::Release() {
  prefill_cache_.reset();
  return RetrievalSource::Release();
}

int64_t RetrievalKvSource::local_kv_tokens() const {
  if (prefill_cache_ != nullptr) return prefill_cache_->length();
  return pending_.count(0);
}

int64_t RetrievalKvSource::local_kv_tokens_bound() const {
  // Decode holds one step's tokens (one per step after the prompt) until the next step.
  return decoding() ? 1 : -1;
}

Status RetrievalKvSource::Append(int layer, const float* k, const float* v, int n,
                                 const int32_t* positions) {
  if (!status_.ok()) return OkStatus();
  if (Status bad = CheckAppend(layer, k, v, n); !bad.ok()) {
    Fail(bad);
    return OkStatus();
  }
  if (phase_ == Phase::kBuilding && layer == 0) {
    // A step starts: switch to the built indexes when the build is done.
    StatusOr<bool> built = PollBuild();
    if (!built.ok()) {
      Fail(built.status());
      return OkStatus();
    }
    if (*built) prefill_cache_.reset();  // the tokens decoded meanwhile are flushed below
  }
  const int64_t row = g_.kv_row();
  if (phase_ != Phase::kDecoding) {
    Status st = prefill_cache_->Append(layer, k, v, n, positions);
    if (!st.ok()) {
      Fail(st);
      return OkStatus();
    }
    // Prefill: sent to the store with this layer's queries in Attend. Building: kept for the
    // store until the switch to decode.
    auto [pk, pv] = pending_.Extend(layer, n, /*replace=*/phase_ == Phase::kPrefill);
    std::copy(k, k + n * row, pk);
    std::copy(v, v + n * row, pv);
    return OkStatus();
  }
  if (layer == 0) {
    // The previous step's tokens (every layer) go to the store before this step attends.
    Status st = FlushPending();
    if (!st.ok()) {
      Fail(st);
      return OkStatus();
    }
  }
  auto [pk, pv] = pending_.Extend(layer, n, /*replace=*/false);
  std::copy(k, k + n * row, pk);
  std::copy(v, v + n * row, pv);
  return OkStatus();
}

Status RetrievalKvSource::Attend(int layer, const float* q, int n, float scale, float* o,
                                 float* lse) {
  const int64_t qd = int64_t{g_.num_heads} * g_.head_dim;
  Status st = CheckAttend(layer, q, n);
  if (st.ok()) {
    switch (phase_) {
      case Phase::kPrefill:
        st = PrefillAttend(layer, q, n, scale, o, lse);
        break;
      case Phase::kBuilding:
        // Exact full attention over the prompt and the tokens decoded since.
        st = prefill_cache_->Attend(layer, q, n, scale, o, lse);
        if (layer == 0) stats_.build_tokens += n;
        break;
      case Phase::kDecoding:
        st = DecodeAttend(layer, q, n, scale, o, lse);
        break;
    }
  }
  if (!st.ok()) {
    Fail(st);
    std::fill(o, o + n * qd, 0.0f);
    std::fill(lse, lse + int64_t{n} * g_.num_heads, -std::numeric_limits<float>::infinity());
  }
  return OkStatus();
}

Status RetrievalKvSource::PrefillAttend(int layer, const float* q, int n, float scale, float* o,
                                        float* lse) {
  RS_RETURN_IF_ERROR(prefill_cache_->Attend(layer, q, n, scale, o, lse));
  // Queries go raw: the index ranks keys by q.k, which a positive scale does not change.
  RS_RETURN_IF_ERROR(seq_->AddPrefill(layer, n, pending_.k(layer), pending_.v(layer), q));
  pending_.Clear(layer);
  if (layer == g_.num_layers - 1 && prefill_cache_->length(layer) >= options_.prefill_tokens) {
    stored_ = prefill_cache_->length(layer);
    RS_RETURN_IF_ERROR(StartBuild());
    // Inline build: the store holds the prompt from here on.
    if (decoding()) prefill_cache_.reset();
  }
  return OkStatus();
}

Status RetrievalKvSource::DecodeAttend(int layer, const float* q, int n, float scale, float* o,
                                       float* lse) {
  const int h = g_.num_heads, hkv = g_.num_kv_heads, d = g_.head_dim, group = h / hkv;
  const int64_t qd = int64_t{h} * d, m = pending_.count(layer);  // n <= m (CheckAttend)
  // The store scores with 1/sqrt(d); scaling q makes its scores scale * q.k.
  const float qscale = scale * std::sqrt(static_cast<float>(d));
  qs_.resize(static_cast<size_t>(n * qd));
  for (int64_t i = 0; i < n * qd; ++i) qs_[i] = q[i] * qscale;
  AttendOptions opt = options_.attend;
  opt.top_k = static_cast<int>(std::min<int64_t>(opt.top_k, stored_));
  RS_RETURN_IF_ERROR(seq_->Attend(layer, n, qs_.data(), opt, o, lse, &stats_.keys_scored));
  stats_.decode_attends += n;
  // Merge in the pending tokens (causal: query i sees pending tokens [0, m - n + i]).
  o2_.resize(static_cast<size_t>(qd));
  lse2_.resize(static_cast<size_t>(h));
  const int64_t ld = int64_t{hkv} * d;
  for (int i = 0; i < n; ++i) {
    const int64_t visible = m - n + i + 1;
    for (int kvh = 0; kvh < hkv; ++kvh) {
      const int64_t qoff = int64_t{kvh} * group;
      kernels::AttentionPartial(q + i * qd + qoff * d, group, pending_.k(layer) + kvh * d, ld,
                                pending_.v(layer) + kvh * d, ld, visible, d, scale,
                                o2_.data() + qoff * d, lse2_.data() + qoff);
    }
    kernels::MergePartial(o + i * qd, lse + int64_t{i} * h, o2_.data(), lse2_.data(), h, d);
  }
  return OkStatus();
}

}  // namespace ragserve::kvr
