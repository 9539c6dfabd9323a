#include "services/engine/model.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>

namespace ragserve::engine {

StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& model_dir,
                                             const kernels::Ops* ops) {
  RS_ASSIGN_OR_RETURN(std::unique_ptr<ModelWeights> w, ModelWeights::Load(model_dir));
  return std::make_unique<Model>(std::shared_ptr<const ModelWeights>(std::move(w)), ops);
}

Model::Model(std::shared_ptr<const ModelWeights> weights, const kernels::Ops* ops)
    : weights_(std::move(weights)), ops_(ops), inv_freq_(weights_->config().RopeInvFreq()) {
  if (const char* env = std::getenv("RAGSERVE_ENGINE_THREADS")) decode_threads_ = std::atoi(env);
}

void Model::SetDecodeThreads(int n) {
  std::lock_guard<std::mutex> lock(mu_);
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
  return std::make_unique<KvCache>(geometry(), config().sliding_window, ops_);
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
  std::lock_guard<std::mutex> lock(mu_);
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
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  const int64_t QD = int64_t{c.num_heads} * c.head_dim, KD = int64_t{c.num_kv_heads} * c.head_dim;
  x_.resize(T * H);
  h_.resize(T * H);
  tmp_.resize(T * H);
  q_.resize(T * QD);
  att_.resize(T * QD);
  lse_.resize(T * c.num_heads);
  k_.resize(T * KD);
  v_.resize(T * KD);
  gate_.resize(T * I);
  up_.resize(T * I);
  ids_.clear();
  pos_.clear();
  for (const SequenceStep& st : batch) {
    for (size_t i = 0; i < st.tokens.size(); ++i) {
      ids_.push_back(st.tokens[i]);
      pos_.push_back(st.start_pos + static_cast<int32_t>(i));
    }
  }
  const kernels::Ops& ops = *ops_;
  ops.Embed(weights_->embed(), ids_.data(), T, x_.data());
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = weights_->layers()[l];
    ops.RmsNorm(x_.data(), T, H, lw.input_norm, c.rms_norm_eps, h_.data());
    {
      const WeightView* ws[] = {&lw.q, &lw.k, &lw.v};
      const WeightView* bs[] = {c.qkv_bias ? &lw.q_bias : nullptr,
                                c.qkv_bias ? &lw.k_bias : nullptr,
                                c.qkv_bias ? &lw.v_bias : nullptr};
      float* ys[] = {q_.data(), k_.data(), v_.data()};
      ops.MatMulShared(h_.data(), T, 3, ws, bs, ys);
    }
    ops.Rope(q_.data(), T, c.num_heads, c.head_dim, pos_.data(), inv_freq_.data());
    ops.Rope(k_.data(), T, c.num_kv_heads, c.head_dim, pos_.data(), inv_freq_.data());
    int64_t off = 0;
    for (size_t s = 0; s < batch.size(); ++s) {
      const SequenceStep& st = batch[s];
      const int n = static_cast<int>(st.tokens.size());
      Status a = st.kv->Append(l, k_.data() + off * KD, v_.data() + off * KD, n, pos_.data() + off);
      if (!a.ok()) return Annotate(a, StrCat("layer ", l, " sequence ", s, " append"));
      Status b = st.kv->Attend(l, q_.data() + off * QD, n, scale, att_.data() + off * QD,
                               lse_.data() + off * c.num_heads);
      if (!b.ok()) return Annotate(b, StrCat("layer ", l, " sequence ", s, " attend"));
      off += n;
    }
    ops.MatMul(att_.data(), T, lw.o, c.o_bias ? &lw.o_bias : nullptr, tmp_.data());
    ops.Add(x_.data(), tmp_.data(), T * H);
    ops.RmsNorm(x_.data(), T, H, lw.post_norm, c.rms_norm_eps, h_.data());
    {
      const WeightView* ws[] = {&lw.gate, &lw.up};
      const WeightView* bs[] = {nullptr, nullptr};
      float* ys[] = {gate_.data(), up_.data()};
      ops.MatMulShared(h_.data(), T, 2, ws, bs, ys);
    }
    ops.SiluMul(gate_.data(), up_.data(), T * I, gate_.data());
    ops.MatMul(gate_.data(), T, lw.down, nullptr, tmp_.data());
    ops.Add(x_.data(), tmp_.data(), T * H);
  }
  if (mode != LogitsMode::kNone) RS_RETURN_IF_ERROR(LmHead(batch, mode, T, logits));
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
  const float* src = x_.data();
  if (mode == LogitsMode::kLast) {
    rows = static_cast<int64_t>(batch.size());
    sel_.resize(rows * H);
    int64_t off = 0;
    for (size_t s = 0; s < batch.size(); ++s) {
      off += static_cast<int64_t>(batch[s].tokens.size());
      std::copy(x_.begin() + (off - 1) * H, x_.begin() + off * H, sel_.begin() + s * H);
    }
    src = sel_.data();
  }
  h_.resize(std::max<int64_t>(T, rows) * H);
  ops.RmsNorm(src, rows, H, weights_->final_norm(), c.rms_norm_eps, h_.data());
  logits->resize(static_cast<size_t>(rows * c.vocab_size));
  ops.MatMul(h_.data(), rows, weights_->lm_head(), nullptr, logits->data());
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
  KvCache own(g, config().sliding_window, ops_);
  std::unique_ptr<BlockKvSource> pre;
  std::vector<KvSource*> extra;
  if (prefix != nullptr && prefix->tokens > 0) {
    pre = std::make_unique<BlockKvSource>(prefix, 1.0f, ops_);
    extra.push_back(pre.get());
  }
  MergedKvSource src(&own, extra, g);
  RS_RETURN_IF_ERROR(Prefill(tokens, start_pos, &src, chunk_size, nullptr));
  return own.ToBlock(0, own.length(), fingerprint());
}

}  // namespace ragserve::engine
