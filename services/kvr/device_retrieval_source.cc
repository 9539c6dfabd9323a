#include "services/kvr/device_retrieval_source.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

namespace ragserve::kvr {

StatusOr<std::unique_ptr<DeviceRetrievalKvSource>> DeviceRetrievalKvSource::Create(
    KvrClient* client, const std::string& id, const engine::KvGeometry& g,
    const RetrievalSourceOptions& options, std::shared_ptr<kernels::cuda::KvPagePool> pool,
    const kernels::Ops* ops) {
  RS_CHECK_ARG(client != nullptr, "null KV retrieval client");
  RS_CHECK_ARG(ops != nullptr && ops->memory() == kernels::MemorySpace::kDevice,
               "DeviceRetrievalKvSource needs a device backend");
  RS_CHECK_ARG(options.sink_tokens >= 0 && options.window_tokens >= 0,
               "the GPU hybrid source needs explicit sink and window sizes, got ",
               options.sink_tokens, " and ", options.window_tokens);
  RS_CHECK_ARG(pool != nullptr, "no GPU page pool");
  RS_CHECK_ARG(
      pool->geometry().kv_heads == g.num_kv_heads && pool->geometry().head_dim == g.head_dim,
      "GPU page pool geometry does not match the model");
  RS_ASSIGN_OR_RETURN(const SequenceConfig cfg, internal::SourceSequenceConfig(g, options));
  RS_ASSIGN_OR_RETURN(auto gpu, kernels::cuda::PagedKvCache::Create(std::move(pool), g.num_layers,
                                                                    /*window=*/0));
  RS_ASSIGN_OR_RETURN(auto seq, client->Create(id, cfg));
  return std::unique_ptr<DeviceRetrievalKvSource>(
      new DeviceRetrievalKvSource(id, g, options, std::move(seq), std::move(gpu), ops));
}

DeviceRetrievalKvSource::DeviceRetrievalKvSource(std::string id, const engine::KvGeometry& g,
                                                 RetrievalSourceOptions options,
                                                 std::unique_ptr<KvrSequence> seq,
                                                 std::unique_ptr<kernels::cuda::PagedKvCache> gpu,
                                                 const kernels::Ops* ops)
    : RetrievalSource(std::move(id), g, std::move(options), std::move(seq)),
      sinks_(options_.sink_tokens),
      window_(options_.window_tokens),
      ops_(ops),
      gpu_(std::move(gpu)),
      o2_(ops),
      lse2_(ops) {}

DeviceRetrievalKvSource::~DeviceRetrievalKvSource() { (void)Release(); }

Status DeviceRetrievalKvSource::Release() {
  gpu_.reset();
  return RetrievalSource::Release();
}

int64_t DeviceRetrievalKvSource::local_kv_tokens() const {
  if (gpu_ == nullptr) return 0;
  return gpu_->length(0) - cpu_only_tokens();
}

int64_t DeviceRetrievalKvSource::local_kv_tokens_bound() const {
  // Decode keeps sinks + window + the step's token on the GPU (plus partly filled pages).
  return decoding() ? sinks_ + window_ + 1 : -1;
}

void DeviceRetrievalKvSource::EvictMiddle() {
  const int64_t end = stored_ - window_;
  if (end <= std::max(sinks_, evicted_end_)) return;
  gpu_->Evict(sinks_, end);
  evicted_end_ = end;
}

Status DeviceRetrievalKvSource::Append(int layer, const float* k, const float* v, int n,
                                       const int32_t*) {
  if (!status_.ok()) return OkStatus();
  if (Status bad = CheckAppend(layer, k, v, n); !bad.ok()) {
    Fail(bad);
    return OkStatus();
  }
  if (phase_ == Phase::kBuilding && layer == 0) {
    // A step starts: switch to the built indexes when the build is done (the tokens decoded
    // meanwhile are flushed below).
    StatusOr<bool> built = PollBuild();
    if (!built.ok()) {
      Fail(built.status());
      return OkStatus();
    }
  }
  if (decoding() && layer == 0) {
    // The previous step's tokens (every layer) go to the store before this step attends; the
    // GPU pages they pushed into the store's middle are given back.
    Status st = FlushPending();
    if (!st.ok()) {
      Fail(st);
      return OkStatus();
    }
    EvictMiddle();
  }
  Status st = gpu_->Append(layer, k, v, n);
  if (!st.ok()) {
    Fail(st);
    return OkStatus();
  }
  // Prefill: sent with this layer's queries in Attend; building: at the switch to decode; decode:
  // at the next step's first Append.
  const size_t bytes = static_cast<size_t>(n * g_.kv_row()) * sizeof(float);
  auto [pk, pv] = pending_.Extend(layer, n, /*replace=*/phase_ == Phase::kPrefill);
  ops_->CopyToHost(pk, k, bytes);
  ops_->CopyToHost(pv, v, bytes);
  return OkStatus();
}

Status DeviceRetrievalKvSource::Attend(int layer, const float* q, int n, float scale, float* o,
                                       float* lse) {
  Status st = CheckAttend(layer, q, n);
  if (st.ok()) {
    switch (phase_) {
      case Phase::kPrefill:
        st = PrefillAttend(layer, q, n, scale, o, lse);
        break;
      case Phase::kBuilding:
        // Exact full attention over the GPU pages (prompt + the tokens decoded since).
        st = gpu_->Attend(layer, q, n, g_.num_heads, scale, o, lse);
        if (layer == 0) stats_.build_tokens += n;
        break;
      case Phase::kDecoding:
        st = DecodeAttend(layer, q, n, scale, o, lse);
        break;
    }
  }
  if (!st.ok()) {
    Fail(st);
    if (n > 0 && o != nullptr && lse != nullptr) {
      const int64_t heads = int64_t{n} * g_.num_heads;
      ho_.assign(static_cast<size_t>(heads * g_.head_dim), 0.0f);
      hlse_.assign(static_cast<size_t>(heads), -std::numeric_limits<float>::infinity());
      ops_->CopyToBackend(o, ho_.data(), ho_.size() * sizeof(float));
      ops_->CopyToBackend(lse, hlse_.data(), hlse_.size() * sizeof(float));
    }
  }
  return OkStatus();
}

Status DeviceRetrievalKvSource::PrefillAttend(int layer, const float* q, int n, float scale,
                                              float* o, float* lse) {
  RS_RETURN_IF_ERROR(gpu_->Attend(layer, q, n, g_.num_heads, scale, o, lse));
  const size_t qd = static_cast<size_t>(n) * g_.num_heads * g_.head_dim;
  hq_.resize(qd);
  ops_->CopyToHost(hq_.data(), q, qd * sizeof(float));
  // Queries go raw: the index ranks keys by q.k, which a positive scale does not change.
  RS_RETURN_IF_ERROR(seq_->AddPrefill(layer, n, pending_.k(layer), pending_.v(layer), hq_.data()));
  pending_.Clear(layer);
  if (layer == g_.num_layers - 1 && gpu_->length(layer) >= options_.prefill_tokens) {
    stored_ = gpu_->length(layer);
    RS_RETURN_IF_ERROR(StartBuild());
    if (decoding()) EvictMiddle();  // inline build; otherwise at the switch to decode
  }
  return OkStatus();
}

Status DeviceRetrievalKvSource::DecodeAttend(int layer, const float* q, int n, float scale,
                                             float* o, float* lse) {
  const int h = g_.num_heads, d = g_.head_dim;
  const int64_t qd = int64_t{h} * d;
  // The store's middle; the GPU attends the rest: sinks [0, sm) and [me, own position].
  const int64_t sm = std::min(sinks_, stored_);
  const int64_t me = std::max(sm, stored_ - window_);
  const bool middle = me > sm;
  // The queries reach the host first (this waits for the step's work so far), so the GPU part
  // queued next runs while the store searches.
  if (middle) {
    hq_.resize(static_cast<size_t>(n * qd));
    ops_->CopyToHost(hq_.data(), q, hq_.size() * sizeof(float));
  }
  float* o2 = o2_.Get<float>(n * qd);
  float* lse2 = lse2_.Get<float>(int64_t{n} * h);
  if (o2 == nullptr || lse2 == nullptr) return ResourceExhausted("hybrid attention: GPU scratch");
  const int64_t len = gpu_->length(layer);
  for (int i = 0; i < n; ++i) {
    const float* qi = q + i * qd;
    float* oi = o + i * qd;
    float* li = lse + int64_t{i} * h;
    RS_RETURN_IF_ERROR(gpu_->AttendRange(layer, qi, 1, h, scale, me, len - n + i + 1, oi, li));
    if (sm > 0) {
      RS_RETURN_IF_ERROR(gpu_->AttendRange(layer, qi, 1, h, scale, 0, sm, o2, lse2));
      RS_RETURN_IF_ERROR(kernels::cuda::MergeDevicePartials(oi, li, o2, lse2, h, d));
    }
  }
  if (!middle) return OkStatus();
  // The store scores with 1/sqrt(d); scaling q makes its scores scale * q.k.
  const float qscale = scale * std::sqrt(static_cast<float>(d));
  for (float& x : hq_) x *= qscale;
  AttendOptions opt = options_.attend;
  opt.retrieved_only = true;
  opt.top_k = static_cast<int>(std::min<int64_t>(opt.top_k, me - sm));
  ho_.resize(static_cast<size_t>(n * qd));
  hlse_.resize(static_cast<size_t>(n) * h);
  RS_RETURN_IF_ERROR(
      seq_->Attend(layer, n, hq_.data(), opt, ho_.data(), hlse_.data(), &stats_.keys_scored));
  stats_.decode_attends += n;
  // Stream order: the H2D copies land after the sink merges above stopped reading o2/lse2.
  ops_->CopyToBackend(o2, ho_.data(), ho_.size() * sizeof(float));
  ops_->CopyToBackend(lse2, hlse_.data(), hlse_.size() * sizeof(float));
  return kernels::cuda::MergeDevicePartials(o, lse, o2, lse2, int64_t{n} * h, d);
}

}  // namespace ragserve::kvr
