#include "services/engine/model.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>

#include "kernels/cuda/paged_kv.h"
#include "services/engine/device_kv_cache.h"

namespace ragserve::engine {

StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& model_dir, const kernels::Ops* ops,
                                             const WeightsLoadOptions& weights) {
  RS_ASSIGN_OR_RETURN(std::unique_ptr<ModelWeights> w, ModelWeights::Load(model_dir, weights));
  return Create(std::shared_ptr<const ModelWeights>(std::move(w)), ops);
}

StatusOr<std::unique_ptr<Model>> Model::Create(std::shared_ptr<const ModelWeights> weights,
                                               const kernels::Ops* ops) {
  auto m = std::make_unique<Model>(std::move(weights), ops);
  RS_RETURN_IF_ERROR(m->status());
  return m;
}

Model::Model(std::shared_ptr<const ModelWeights> weights, const kernels::Ops* ops)
    : weights_(std::move(weights)),
      ops_(ops),
      host_ops_(ops->memory() == kernels::MemorySpace::kHost ? ops : &kernels::FastOps()),
      inv_freq_(weights_->config().RopeInvFreq()),
      x_(ops),
      h_(ops),
      q_(ops),
      k_(ops),
      v_(ops),
      att_(ops),
      lse_(ops),
      tmp_(ops),
      gate_(ops),
      up_(ops),
      sel_(ops),
      logits_b_(ops),
      ids_b_(ops),
      pos_b_(ops) {
  if (const char* env = std::getenv("RAGSERVE_ENGINE_THREADS")) decode_threads_ = std::atoi(env);
  init_status_ = UploadWeights();
}

Model::~Model() {
  for (void* p : uploads_) ops_->Free(p);
  ops_->Free(inv_freq_b_);
}

Status Model::UploadWeights() {
  const bool host = ops_->memory() == kernels::MemorySpace::kHost;
  std::map<const void*, void*> done;  // host address -> backend copy (tied embeddings: once)
  auto up = [&](const WeightView& w, WeightView* out) -> Status {
    *out = w;
    if (host || w.data == nullptr) return OkStatus();
    if (auto it = done.find(w.data); it != done.end()) {
      out->data = it->second;
      return OkStatus();
    }
    if (kernels::IsQuantized(w.dtype)) {
      return InvalidArgument(StrCat("the ", ops_->name(), " backend does not run ",
                                    kernels::DTypeName(w.dtype),
                                    " weights (CPU only): load them as f32, f16 or bf16 "
                                    "(--weights-dtype)"));
    }
    const size_t bytes = static_cast<size_t>(w.Bytes());
    void* p = ops_->Allocate(bytes);
    if (p == nullptr) {
      return ResourceExhausted(StrCat("uploading weights to the ", ops_->name(),
                                      " backend: ", bytes, " bytes could not be allocated"));
    }
    uploads_.push_back(p);
    ops_->CopyToBackend(p, w.data, bytes);
    done[w.data] = p;
    out->data = p;
    return OkStatus();
  };
  RS_RETURN_IF_ERROR(up(weights_->embed(), &embed_));
  RS_RETURN_IF_ERROR(up(weights_->lm_head(), &lm_head_));
  RS_RETURN_IF_ERROR(up(weights_->final_norm(), &final_norm_));
  layers_.resize(weights_->layers().size());
  for (size_t l = 0; l < layers_.size(); ++l) {
    const LayerWeights& src = weights_->layers()[l];
    LayerWeights& dst = layers_[l];
    for (auto [from, to] : {std::pair{&src.input_norm, &dst.input_norm},
                            {&src.q, &dst.q},
                            {&src.k, &dst.k},
                            {&src.v, &dst.v},
                            {&src.o, &dst.o},
                            {&src.q_bias, &dst.q_bias},
                            {&src.k_bias, &dst.k_bias},
                            {&src.v_bias, &dst.v_bias},
                            {&src.o_bias, &dst.o_bias},
                            {&src.post_norm, &dst.post_norm},
                            {&src.gate, &dst.gate},
                            {&src.up, &dst.up},
                            {&src.down, &dst.down}}) {
      RS_RETURN_IF_ERROR(up(*from, to));
    }
  }
  const size_t fbytes = inv_freq_.size() * sizeof(float);
  inv_freq_b_ = static_cast<float*>(ops_->Allocate(fbytes));
  if (inv_freq_b_ == nullptr) return ResourceExhausted("allocating rotary frequencies");
  ops_->CopyToBackend(inv_freq_b_, inv_freq_.data(), fbytes);
  return ops_->Synchronize();
}

void Model::SetDecodeThreads(int n) {
  MutexLock lock(mu_);
  decode_threads_ = std::max(n, 0);
}

int Model::ThreadTuner::Pick() {
  if (max_threads_ == 0) max_threads_ = std::max(1, omp_get_max_threads());
  if (max_threads_ == 1) return 1;
  ++steps_;
  if (ewma_[0] == 0.0) return max_threads_;
  if (ewma_[1] == 0.0) return 1;
  const int best = ewma_[0] <= ewma_[1] ? 0 : 1;
  const int pick = steps_ % kExplorePeriod == 0 ? 1 - best : best;
  return pick == 0 ? max_threads_ : 1;
}

void Model::ThreadTuner::Record(int threads, double seconds) {
  double& e = ewma_[threads == 1 && max_threads_ > 1 ? 1 : 0];
  e = e == 0.0 ? seconds : 0.75 * e + 0.25 * seconds;
}

KvGeometry Model::geometry() const {
  const ModelConfig& c = config();
  return KvGeometry{c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim};
}

std::unique_ptr<KvCache> Model::NewKvCache() const {
  return std::make_unique<KvCache>(geometry(), config().sliding_window, host_ops_);
}

StatusOr<std::shared_ptr<kernels::cuda::KvPagePool>> Model::DeviceKvPool(kernels::DType kv_dtype,
                                                                         int64_t pool_bytes) {
  if (ops_->memory() == kernels::MemorySpace::kHost) {
    return FailedPrecondition(StrCat("the ", ops_->name(), " backend keeps KV in host memory"));
  }
  MutexLock lock(mu_);
  if (!kv_pool_) {
    kernels::cuda::KvPageGeometry pg;
    pg.kv_heads = config().num_kv_heads;
    pg.head_dim = config().head_dim;
    pg.dtype = kv_dtype;
    RS_ASSIGN_OR_RETURN(kv_pool_, kernels::cuda::KvPagePool::Create(pg, pool_bytes));
  }
  RS_CHECK_ARG(kv_pool_->geometry().dtype == kv_dtype, "the KV page pool stores ",
               kernels::DTypeName(kv_pool_->geometry().dtype), ", asked for ",
               kernels::DTypeName(kv_dtype));
  return kv_pool_;
}

StatusOr<std::unique_ptr<KvSource>> Model::NewKvSource(kernels::DType kv_dtype,
                                                       int64_t pool_bytes) {
  if (ops_->memory() == kernels::MemorySpace::kHost) return std::unique_ptr<KvSource>(NewKvCache());
  RS_ASSIGN_OR_RETURN(std::shared_ptr<kernels::cuda::KvPagePool> pool,
                      DeviceKvPool(kv_dtype, pool_bytes));
  RS_ASSIGN_OR_RETURN(std::unique_ptr<DeviceKvCache> kv,
                      DeviceKvCache::Create(std::move(pool), geometry(), config().sliding_window));
  return std::unique_ptr<KvSource>(std::move(kv));
}

Status Model::AppendAttend(KvSource* kv, int layer, const float* k, const float* v, int n,
                           const int32_t* positions, const float* q, float scale, float* o,
                           float* lse) {
  if (kv->memory() == ops_->memory()) {
    RS_RETURN_IF_ERROR(kv->Append(layer, k, v, n, positions));
    return kv->Attend(layer, q, n, scale, o, lse);
  }
  RS_CHECK_ARG(kv->memory() == kernels::MemorySpace::kHost,
               "a KV source in device memory needs a device backend, the model runs on ",
               ops_->name());
  // A host source under a device model: stage the step's K/V and queries to the host and the
  // partial back (per layer; what the hybrid path avoids for the GPU-resident part).
  const ModelConfig& c = config();
  const size_t kd = static_cast<size_t>(n) * c.num_kv_heads * c.head_dim;
  const size_t qd = static_cast<size_t>(n) * c.num_heads * c.head_dim;
  const size_t hn = static_cast<size_t>(n) * c.num_heads;
  stage_k_.resize(kd);
  stage_v_.resize(kd);
  stage_q_.resize(qd);
  stage_o_.resize(qd);
  stage_lse_.resize(hn);
  ops_->CopyToHost(stage_k_.data(), k, kd * sizeof(float));
  ops_->CopyToHost(stage_v_.data(), v, kd * sizeof(float));
  ops_->CopyToHost(stage_q_.data(), q, qd * sizeof(float));
  RS_RETURN_IF_ERROR(kv->Append(layer, stage_k_.data(), stage_v_.data(), n, positions));
  RS_RETURN_IF_ERROR(
      kv->Attend(layer, stage_q_.data(), n, scale, stage_o_.data(), stage_lse_.data()));
  ops_->CopyToBackend(o, stage_o_.data(), qd * sizeof(float));
  ops_->CopyToBackend(lse, stage_lse_.data(), hn * sizeof(float));
  return OkStatus();
}

Status Model::Forward(std::span<const SequenceStep> batch, LogitsMode mode,
                      std::vector<float>* logits) {
  const ModelConfig& c = config();
  RS_CHECK_ARG(!batch.empty(), "Forward: empty batch");
  RS_CHECK_ARG(mode == LogitsMode::kNone || logits != nullptr, "Forward: logits output is null");
  int64_t T = 0;
  for (size_t s = 0; s < batch.size(); ++s) {
    const SequenceStep& st = batch[s];
    RS_CHECK_ARG(!st.tokens.empty(), "Forward: sequence ", s, " has no tokens");
    RS_CHECK_ARG(st.kv != nullptr, "Forward: sequence ", s, " has no KV source");
    RS_CHECK_ARG(st.start_pos >= 0, "Forward: sequence ", s, " start_pos ", st.start_pos, " < 0");
    for (int32_t id : st.tokens) {
      RS_CHECK_ARG(id >= 0 && id < c.vocab_size, "Forward: token id ", id, " of sequence ", s,
                   " outside [0, ", c.vocab_size, ")");
    }
    T += static_cast<int64_t>(st.tokens.size());
  }
  MutexLock lock(mu_);
  // Decode-sized steps run with the tuned (or fixed) thread count; restored on every return.
  // Two tuners: decode-sized steps (GEMV) and prefill-sized steps (sgemm), timed per token.
  const bool tune = decode_threads_ == 0;
  ThreadTuner& tuner = tuners_[T <= kernels::kGemvMaxRows ? 0 : 1];
  const int threads = tune ? tuner.Pick() : decode_threads_;
  const int saved_threads = kernels::FastOpsThreads();
  kernels::SetFastOpsThreads(threads);
  const auto t_start = std::chrono::steady_clock::now();
  struct Restore {
    int n;
    ~Restore() { kernels::SetFastOpsThreads(n); }
  } restore{saved_threads};
  RS_RETURN_IF_ERROR(init_status_);
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  const int64_t QD = int64_t{c.num_heads} * c.head_dim, KD = int64_t{c.num_kv_heads} * c.head_dim;
  float* x = x_.Get<float>(T * H);
  float* h = h_.Get<float>(T * H);
  float* tmp = tmp_.Get<float>(T * H);
  float* q = q_.Get<float>(T * QD);
  float* att = att_.Get<float>(T * QD);
  float* lse = lse_.Get<float>(T * c.num_heads);
  float* k = k_.Get<float>(T * KD);
  float* v = v_.Get<float>(T * KD);
  float* gate = gate_.Get<float>(T * I);
  float* up = up_.Get<float>(T * I);
  int32_t* ids_b = ids_b_.Get<int32_t>(T);
  int32_t* pos_b = pos_b_.Get<int32_t>(T);
  for (const void* p :
       {static_cast<const void*>(x), static_cast<const void*>(h), static_cast<const void*>(tmp),
        static_cast<const void*>(q), static_cast<const void*>(att), static_cast<const void*>(lse),
        static_cast<const void*>(k), static_cast<const void*>(v), static_cast<const void*>(gate),
        static_cast<const void*>(up), static_cast<const void*>(ids_b),
        static_cast<const void*>(pos_b)}) {
    if (p == nullptr) {
      return ResourceExhausted(
          StrCat("Forward: activations of ", T, " tokens do not fit in ", ops_->name(), " memory"));
    }
  }
  ids_.clear();
  pos_.clear();
  for (const SequenceStep& st : batch) {
    for (size_t i = 0; i < st.tokens.size(); ++i) {
      ids_.push_back(st.tokens[i]);
      pos_.push_back(st.start_pos + static_cast<int32_t>(i));
    }
  }
  const kernels::Ops& ops = *ops_;
  // An early error return must still wait for the work queued so far (an asynchronous backend
  // would otherwise run it while the next caller reuses the scratch) and not leave its errors
  // to the next step.
  struct SyncOnError {
    const kernels::Ops& ops;
    bool armed = true;
    ~SyncOnError() {
      if (armed) (void)ops.Synchronize();
    }
  } sync_on_error{ops};
  ops.CopyToBackend(ids_b, ids_.data(), ids_.size() * sizeof(int32_t));
  ops.CopyToBackend(pos_b, pos_.data(), pos_.size() * sizeof(int32_t));
  ops.Embed(embed_, ids_b, T, x);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = layers_[l];
    ops.RmsNorm(x, T, H, lw.input_norm, c.rms_norm_eps, h);
    {
      const WeightView* ws[] = {&lw.q, &lw.k, &lw.v};
      const WeightView* bs[] = {c.qkv_bias ? &lw.q_bias : nullptr,
                                c.qkv_bias ? &lw.k_bias : nullptr,
                                c.qkv_bias ? &lw.v_bias : nullptr};
      float* ys[] = {q, k, v};
      ops.MatMulShared(h, T, 3, ws, bs, ys);
    }
    ops.Rope(q, T, c.num_heads, c.head_dim, pos_b, inv_freq_b_);
    ops.Rope(k, T, c.num_kv_heads, c.head_dim, pos_b, inv_freq_b_);
    int64_t off = 0;
    for (size_t s = 0; s < batch.size(); ++s) {
      const SequenceStep& st = batch[s];
      const int n = static_cast<int>(st.tokens.size());
      Status a = AppendAttend(st.kv, l, k + off * KD, v + off * KD, n, pos_.data() + off,
                              q + off * QD, scale, att + off * QD, lse + off * c.num_heads);
      if (!a.ok()) return Annotate(a, StrCat("layer ", l, " sequence ", s));
      off += n;
    }
    ops.MatMul(att, T, lw.o, c.o_bias ? &lw.o_bias : nullptr, tmp);
    ops.Add(x, tmp, T * H);
    ops.RmsNorm(x, T, H, lw.post_norm, c.rms_norm_eps, h);
    {
      const WeightView* ws[] = {&lw.gate, &lw.up};
      const WeightView* bs[] = {nullptr, nullptr};
      float* ys[] = {gate, up};
      ops.MatMulShared(h, T, 2, ws, bs, ys);
    }
    ops.SiluMul(gate, up, T * I, gate);
    ops.MatMul(gate, T, lw.down, nullptr, tmp);
    ops.Add(x, tmp, T * H);
  }
  if (mode != LogitsMode::kNone) RS_RETURN_IF_ERROR(LmHead(batch, mode, T, logits));
  sync_on_error.armed = false;
  RS_RETURN_IF_ERROR(ops.Synchronize());
  if (tune) {
    tuner.Record(threads,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count() /
                     static_cast<double>(T));
  }
  return OkStatus();
}

Status Model::LmHead(std::span<const SequenceStep> batch, LogitsMode mode, int64_t T,
                     std::vector<float>* logits) {
  const ModelConfig& c = config();
  const kernels::Ops& ops = *ops_;
  const int64_t H = c.hidden_size;
  // Only the rows whose logits are wanted go through the final norm and the LM head.
  int64_t rows = T;
  const float* src = x_.Get<float>(T * H);
  if (mode == LogitsMode::kLast) {
    rows = static_cast<int64_t>(batch.size());
    float* sel = sel_.Get<float>(rows * H);
    if (sel == nullptr) return ResourceExhausted("LmHead: out of backend memory");
    int64_t off = 0;
    for (size_t s = 0; s < batch.size(); ++s) {
      off += static_cast<int64_t>(batch[s].tokens.size());
      ops.CopyWithin(sel + s * H, src + (off - 1) * H, static_cast<size_t>(H) * sizeof(float));
    }
    src = sel;
  }
  float* h = h_.Get<float>(std::max<int64_t>(T, rows) * H);
  logits->resize(static_cast<size_t>(rows * c.vocab_size));
  const bool host = ops.memory() == kernels::MemorySpace::kHost;
  float* out = host ? logits->data() : logits_b_.Get<float>(rows * c.vocab_size);
  if (out == nullptr) return ResourceExhausted("LmHead: out of backend memory");
  ops.RmsNorm(src, rows, H, final_norm_, c.rms_norm_eps, h);
  ops.MatMul(h, rows, lm_head_, nullptr, out);
  if (!host) ops.CopyToHost(logits->data(), out, logits->size() * sizeof(float));
  return OkStatus();
}

Status Model::Prefill(std::span<const int32_t> tokens, int32_t start_pos, KvSource* kv,
                      int chunk_size, std::vector<float>* last_logits) {
  RS_CHECK_ARG(!tokens.empty(), "Prefill: no tokens");
  const size_t chunk = chunk_size <= 0 ? tokens.size() : static_cast<size_t>(chunk_size);
  std::vector<float> logits;
  for (size_t b = 0; b < tokens.size(); b += chunk) {
    const size_t e = std::min(tokens.size(), b + chunk);
    const bool last = e == tokens.size();
    SequenceStep st{tokens.subspan(b, e - b), start_pos + static_cast<int32_t>(b), kv};
    const LogitsMode mode = last && last_logits != nullptr ? LogitsMode::kLast : LogitsMode::kNone;
    RS_RETURN_IF_ERROR(Forward(std::span<const SequenceStep>(&st, 1), mode, &logits));
  }
  if (last_logits != nullptr) *last_logits = std::move(logits);
  return OkStatus();
}

StatusOr<KvBlock> Model::EncodeBlock(const KvBlock* prefix, std::span<const int32_t> tokens,
                                     int32_t start_pos, int chunk_size) {
  const KvGeometry g = geometry();
  if (prefix != nullptr) {
    RS_CHECK_ARG(prefix->fingerprint == fingerprint(), "EncodeBlock: prefix fingerprint ",
                 prefix->fingerprint, " != model fingerprint ", fingerprint());
    RS_CHECK_ARG(
        prefix->geometry.num_layers == g.num_layers && prefix->geometry.kv_row() == g.kv_row(),
        "EncodeBlock: prefix geometry does not match the model");
  }
  if (ops_->memory() == kernels::MemorySpace::kDevice) {
    return EncodeBlockOnDevice(prefix, tokens, start_pos, chunk_size);
  }
  KvCache own(g, config().sliding_window, host_ops_);
  std::unique_ptr<BlockKvSource> pre;
  std::vector<KvSource*> extra;
  if (prefix != nullptr && prefix->tokens > 0) {
    pre = std::make_unique<BlockKvSource>(prefix, 1.0f, host_ops_);
    extra.push_back(pre.get());
  }
  MergedKvSource src(&own, extra, g);
  RS_RETURN_IF_ERROR(Prefill(tokens, start_pos, &src, chunk_size, nullptr));
  return own.ToBlock(0, own.length(), fingerprint());
}

StatusOr<KvBlock> Model::EncodeBlockOnDevice(const KvBlock* prefix, std::span<const int32_t> tokens,
                                             int32_t start_pos, int chunk_size) {
  const KvGeometry g = geometry();
  // The prefix in GPU pages + the block's own causal pages: DeviceApeKvSource with no passages
  // (temperature = scaling = 1) is exactly "attend the prefix, then yourself causally". The pages
  // come from a pool of this call's exact size in f32, apart from the decode pool: a cached block
  // must not depend on the worker's KV storage dtype, nor take pages from running sequences.
  kernels::cuda::KvPageGeometry pg;
  pg.kv_heads = g.num_kv_heads;
  pg.head_dim = g.head_dim;
  pg.dtype = kernels::DType::kF32;
  const int64_t prefix_tokens = prefix != nullptr ? prefix->tokens : 0;
  const int64_t pages = int64_t{g.num_layers} *
                        ((prefix_tokens + pg.page_size - 1) / pg.page_size +
                         (static_cast<int64_t>(tokens.size()) + pg.page_size - 1) / pg.page_size);
  RS_ASSIGN_OR_RETURN(
      std::shared_ptr<kernels::cuda::KvPagePool> pool,
      kernels::cuda::KvPagePool::Create(pg, std::max<int64_t>(pages, 1) * pg.page_bytes()));
  RS_ASSIGN_OR_RETURN(
      std::unique_ptr<DeviceApeKvSource> src,
      DeviceApeKvSource::Create(pool, g, config().sliding_window,
                                prefix != nullptr && prefix->tokens > 0 ? prefix : nullptr, {},
                                1.0f, 1.0f, ops_));
  RS_RETURN_IF_ERROR(Prefill(tokens, start_pos, src.get(), chunk_size, nullptr));
  KvBlock b;
  b.geometry = g;
  b.tokens = static_cast<int64_t>(tokens.size());
  b.fingerprint = fingerprint();
  for (int64_t i = 0; i < b.tokens; ++i) b.positions.push_back(start_pos + static_cast<int32_t>(i));
  b.k.resize(static_cast<size_t>(g.num_layers));
  b.v.resize(static_cast<size_t>(g.num_layers));
  for (int l = 0; l < g.num_layers; ++l) {
    b.k[l].resize(static_cast<size_t>(b.tokens * g.kv_row()));
    b.v[l].resize(b.k[l].size());
    RS_RETURN_IF_ERROR(src->own().paged().Read(l, 0, b.tokens, b.k[l].data(), b.v[l].data()));
  }
  return b;
}

}  // namespace ragserve::engine
