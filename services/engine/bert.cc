#include "services/engine/bert.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "services/engine/safetensors.h"

namespace ragserve::engine {

using kernels::WeightView;

struct BertEncoder::Weights {
  SafetensorsFile file;
  WeightView word, pos, type;
  std::vector<float> emb_ln_g, emb_ln_b;
  struct Layer {
    WeightView q, k, v, qb, kb, vb, o, ob, up, upb, down, downb;
    std::vector<float> ln1_g, ln1_b, ln2_g, ln2_b;
  };
  std::vector<Layer> layers;
};

namespace {

StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return NotFound(StrCat("cannot read ", path));
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Looks up `name` (with the checkpoint's prefix) and checks its shape.
class TensorTable {
 public:
  TensorTable(const SafetensorsFile& f, std::string prefix, std::string path)
      : f_(f), prefix_(std::move(prefix)), path_(std::move(path)) {}

  StatusOr<WeightView> Get(const std::string& name, int64_t rows, int64_t cols, bool vector) {
    const std::string full = prefix_ + name;
    auto it = f_.header.tensors.find(full);
    if (it == f_.header.tensors.end()) {
      return InvalidArgument(StrCat(path_, ": tensor \"", full, "\" is missing"));
    }
    const TensorInfo& t = it->second;
    const bool ok = vector ? (t.shape.size() == 1 && t.shape[0] == cols)
                           : (t.shape.size() == 2 && t.shape[0] == rows && t.shape[1] == cols);
    if (!ok) {
      std::string got;
      for (size_t i = 0; i < t.shape.size(); ++i)
        got += (i ? ", " : "") + std::to_string(t.shape[i]);
      return InvalidArgument(
          StrCat(path_, ": tensor \"", full, "\" has shape [", got, "], expected ",
                 vector ? StrCat("[", cols, "]") : StrCat("[", rows, ", ", cols, "]")));
    }
    return WeightView{f_.Data(t), t.dtype, vector ? 1 : rows, cols};
  }

  StatusOr<std::vector<float>> GetF32(const std::string& name, int64_t n) {
    RS_ASSIGN_OR_RETURN(WeightView w, Get(name, 1, n, true));
    std::vector<float> out(n);
    kernels::ConvertToF32(w.data, w.dtype, n, out.data());
    return out;
  }

 private:
  const SafetensorsFile& f_;
  std::string prefix_;
  std::string path_;
};

// y = (x - mean) / sqrt(var + eps) * g + b per row of n (statistics in double).
void LayerNorm(float* x, int64_t m, int64_t n, const std::vector<float>& g,
               const std::vector<float>& b, double eps) {
  for (int64_t r = 0; r < m; ++r) {
    float* row = x + r * n;
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += row[i];
    const double mean = sum / n;
    double var = 0;
    for (int64_t i = 0; i < n; ++i) var += (row[i] - mean) * (row[i] - mean);
    const float inv = static_cast<float>(1.0 / std::sqrt(var / n + eps));
    const float fm = static_cast<float>(mean);
    for (int64_t i = 0; i < n; ++i) row[i] = (row[i] - fm) * inv * g[i] + b[i];
  }
}

void GeluErf(float* x, int64_t n) {
  constexpr float kInvSqrt2 = 0.70710678118654752f;
  for (int64_t i = 0; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * kInvSqrt2));
}

}  // namespace

BertEncoder::~BertEncoder() = default;

StatusOr<std::unique_ptr<BertEncoder>> BertEncoder::Load(const std::string& dir,
                                                         const BertEncoderOptions& opts) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return NotFound(StrCat("BERT encoder: '", dir, "' is not a directory"));
  }
  std::unique_ptr<BertEncoder> e(new BertEncoder());
  const std::string config_path = (fs::path(dir) / "config.json").string();
  RS_ASSIGN_OR_RETURN(std::string config_text, ReadFile(config_path));
  auto config = ParseBertConfig(config_text);
  if (!config.ok()) return Annotate(config.status(), config_path);
  e->config_ = *config;
  const BertConfig& c = e->config_;

  const std::string tok_path = (fs::path(dir) / "tokenizer.json").string();
  RS_ASSIGN_OR_RETURN(e->tokenizer_, WordPieceTokenizer::Load(tok_path));
  if (e->tokenizer_->id_limit() > c.vocab_size) {
    return InvalidArgument(StrCat(tok_path, ": token id ", e->tokenizer_->id_limit() - 1,
                                  " is beyond the model's vocab_size ", c.vocab_size));
  }

  if (opts.pooling.has_value()) {
    e->pooling_ = *opts.pooling;
  } else if (const fs::path pool = fs::path(dir) / "1_Pooling" / "config.json";
             fs::exists(pool, ec)) {
    RS_ASSIGN_OR_RETURN(std::string text, ReadFile(pool.string()));
    auto p = ParsePoolingConfig(text);
    if (!p.ok()) return Annotate(p.status(), pool.string());
    e->pooling_ = *p;
  }
  RS_CHECK_ARG(opts.max_length >= 0, "BERT encoder: max_length must be >= 0, got ",
               opts.max_length);
  RS_CHECK_ARG(opts.batch_tokens >= 1, "BERT encoder: batch_tokens must be >= 1, got ",
               opts.batch_tokens);
  int max_len = c.max_position_embeddings;
  if (e->tokenizer_->options().truncation_max_length > 0) {
    max_len = std::min(max_len, e->tokenizer_->options().truncation_max_length);
  }
  if (opts.max_length > 0) max_len = std::min(opts.max_length, c.max_position_embeddings);
  e->max_length_ = std::max(2, max_len);
  e->batch_tokens_ = opts.batch_tokens;
  e->ops_ = opts.ops != nullptr ? opts.ops : &kernels::FastOps();
  RS_CHECK_ARG(e->ops_->memory() == kernels::MemorySpace::kHost,
               "BERT encoder: the op backend must use host memory, got '", e->ops_->name(), "'");

  const std::string st_path = (fs::path(dir) / "model.safetensors").string();
  if (!fs::exists(st_path, ec)) return NotFound(StrCat("BERT encoder: missing ", st_path));
  e->weights_ = std::make_unique<Weights>();
  Weights& w = *e->weights_;
  RS_ASSIGN_OR_RETURN(w.file, OpenSafetensors(st_path));
  std::string prefix;
  if (!w.file.header.tensors.count("embeddings.word_embeddings.weight") &&
      w.file.header.tensors.count("bert.embeddings.word_embeddings.weight")) {
    prefix = "bert.";
  }
  TensorTable t(w.file, prefix, st_path);
  const int64_t h = c.hidden_size, ff = c.intermediate_size;
  RS_ASSIGN_OR_RETURN(w.word, t.Get("embeddings.word_embeddings.weight", c.vocab_size, h, false));
  RS_ASSIGN_OR_RETURN(
      w.pos, t.Get("embeddings.position_embeddings.weight", c.max_position_embeddings, h, false));
  RS_ASSIGN_OR_RETURN(
      w.type, t.Get("embeddings.token_type_embeddings.weight", c.type_vocab_size, h, false));
  RS_ASSIGN_OR_RETURN(w.emb_ln_g, t.GetF32("embeddings.LayerNorm.weight", h));
  RS_ASSIGN_OR_RETURN(w.emb_ln_b, t.GetF32("embeddings.LayerNorm.bias", h));
  w.layers.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = StrCat("encoder.layer.", l, ".");
    Weights::Layer& L = w.layers[l];
    RS_ASSIGN_OR_RETURN(L.q, t.Get(p + "attention.self.query.weight", h, h, false));
    RS_ASSIGN_OR_RETURN(L.qb, t.Get(p + "attention.self.query.bias", 1, h, true));
    RS_ASSIGN_OR_RETURN(L.k, t.Get(p + "attention.self.key.weight", h, h, false));
    RS_ASSIGN_OR_RETURN(L.kb, t.Get(p + "attention.self.key.bias", 1, h, true));
    RS_ASSIGN_OR_RETURN(L.v, t.Get(p + "attention.self.value.weight", h, h, false));
    RS_ASSIGN_OR_RETURN(L.vb, t.Get(p + "attention.self.value.bias", 1, h, true));
    RS_ASSIGN_OR_RETURN(L.o, t.Get(p + "attention.output.dense.weight", h, h, false));
    RS_ASSIGN_OR_RETURN(L.ob, t.Get(p + "attention.output.dense.bias", 1, h, true));
    RS_ASSIGN_OR_RETURN(L.ln1_g, t.GetF32(p + "attention.output.LayerNorm.weight", h));
    RS_ASSIGN_OR_RETURN(L.ln1_b, t.GetF32(p + "attention.output.LayerNorm.bias", h));
    RS_ASSIGN_OR_RETURN(L.up, t.Get(p + "intermediate.dense.weight", ff, h, false));
    RS_ASSIGN_OR_RETURN(L.upb, t.Get(p + "intermediate.dense.bias", 1, ff, true));
    RS_ASSIGN_OR_RETURN(L.down, t.Get(p + "output.dense.weight", h, ff, false));
    RS_ASSIGN_OR_RETURN(L.downb, t.Get(p + "output.dense.bias", 1, h, true));
    RS_ASSIGN_OR_RETURN(L.ln2_g, t.GetF32(p + "output.LayerNorm.weight", h));
    RS_ASSIGN_OR_RETURN(L.ln2_b, t.GetF32(p + "output.LayerNorm.bias", h));
  }
  return e;
}

std::vector<int32_t> BertEncoder::Tokenize(const std::string& text) const {
  return tokenizer_->Encode(text, max_length_);
}

void BertEncoder::Forward(const std::vector<const std::vector<int32_t>*>& seqs,
                          std::vector<float>* out) const {
  const kernels::Ops& ops = *ops_;
  const Weights& w = *weights_;
  const BertConfig& c = config_;
  const int64_t h = c.hidden_size, ff = c.intermediate_size;
  int64_t total = 0;
  for (const auto* s : seqs) total += static_cast<int64_t>(s->size());
  std::vector<int32_t> ids;
  ids.reserve(total);
  for (const auto* s : seqs) ids.insert(ids.end(), s->begin(), s->end());

  std::vector<float>& x = *out;
  x.assign(total * h, 0.0f);
  std::vector<float> row(h), type0(h);
  ops.Embed(w.word, ids.data(), total, x.data());
  kernels::ConvertToF32(w.type.Row(0), w.type.dtype, h, type0.data());
  int64_t t = 0;
  for (const auto* s : seqs) {
    for (size_t p = 0; p < s->size(); ++p, ++t) {
      kernels::ConvertToF32(w.pos.Row(static_cast<int64_t>(p)), w.pos.dtype, h, row.data());
      float* xr = x.data() + t * h;
      for (int64_t i = 0; i < h; ++i) xr[i] += row[i] + type0[i];
    }
  }
  LayerNorm(x.data(), total, h, w.emb_ln_g, w.emb_ln_b, c.layer_norm_eps);

  std::vector<float> q(total * h), k(total * h), v(total * h), ctx(total * h), tmp(total * h);
  std::vector<float> inter(total * ff);
  int64_t max_len = 0;
  for (const auto* s : seqs) max_len = std::max<int64_t>(max_len, s->size());
  std::vector<float> lse(max_len * c.num_heads);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const int threads = kernels::FastOpsThreads();
  for (const Weights::Layer& L : w.layers) {
    const WeightView* ws[3] = {&L.q, &L.k, &L.v};
    const WeightView* bs[3] = {&L.qb, &L.kb, &L.vb};
    float* ys[3] = {q.data(), k.data(), v.data()};
    ops.MatMulShared(x.data(), total, 3, ws, bs, ys);
    int64_t off = 0;
    for (const auto* s : seqs) {
      const int n = static_cast<int>(s->size());
      ops.BlockAttention(q.data() + off * h, n, c.num_heads, c.num_heads, c.head_dim,
                         k.data() + off * h, v.data() + off * h, n, scale, ctx.data() + off * h,
                         lse.data(), threads);
      off += n;
    }
    ops.MatMul(ctx.data(), total, L.o, &L.ob, tmp.data());
    ops.Add(tmp.data(), x.data(), total * h);
    LayerNorm(tmp.data(), total, h, L.ln1_g, L.ln1_b, c.layer_norm_eps);
    x.swap(tmp);
    ops.MatMul(x.data(), total, L.up, &L.upb, inter.data());
    GeluErf(inter.data(), total * ff);
    ops.MatMul(inter.data(), total, L.down, &L.downb, tmp.data());
    ops.Add(tmp.data(), x.data(), total * h);
    LayerNorm(tmp.data(), total, h, L.ln2_g, L.ln2_b, c.layer_norm_eps);
    x.swap(tmp);
  }
}

Status BertEncoder::EncodeIds(const std::vector<std::vector<int32_t>>& seqs, float* out) const {
  for (size_t i = 0; i < seqs.size(); ++i) {
    RS_CHECK_ARG(!seqs[i].empty() && static_cast<int>(seqs[i].size()) <= max_length_,
                 "BERT encoder: sequence ", i, " has ", seqs[i].size(), " tokens, expected 1..",
                 max_length_);
    for (int32_t id : seqs[i]) {
      RS_CHECK_ARG(id >= 0 && id < config_.vocab_size, "BERT encoder: sequence ", i,
                   " has token id ", id, " outside [0, ", config_.vocab_size, ")");
    }
  }
  const int64_t h = config_.hidden_size;
  std::vector<float> x;
  size_t i = 0;
  while (i < seqs.size()) {
    // One forward pass over as many whole sequences as fit batch_tokens_ (at least one).
    std::vector<const std::vector<int32_t>*> batch;
    int64_t tokens = 0;
    const size_t first = i;
    while (i < seqs.size() &&
           (batch.empty() || tokens + static_cast<int64_t>(seqs[i].size()) <= batch_tokens_)) {
      tokens += static_cast<int64_t>(seqs[i].size());
      batch.push_back(&seqs[i]);
      ++i;
    }
    Forward(batch, &x);
    int64_t off = 0;
    for (size_t b = 0; b < batch.size(); ++b) {
      const int64_t n = static_cast<int64_t>(batch[b]->size());
      float* o = out + (first + b) * h;
      if (pooling_ == Pooling::kCls) {
        std::copy(x.data() + off * h, x.data() + (off + 1) * h, o);
      } else {
        std::vector<double> acc(h, 0.0);
        for (int64_t r = 0; r < n; ++r) {
          const float* xr = x.data() + (off + r) * h;
          for (int64_t j = 0; j < h; ++j) acc[j] += xr[j];
        }
        for (int64_t j = 0; j < h; ++j) o[j] = static_cast<float>(acc[j] / n);
      }
      double norm = 0;
      for (int64_t j = 0; j < h; ++j) norm += static_cast<double>(o[j]) * o[j];
      // sentence-transformers Normalize: x / max(||x||, 1e-12).
      const float inv = static_cast<float>(1.0 / std::max(std::sqrt(norm), 1e-12));
      for (int64_t j = 0; j < h; ++j) o[j] *= inv;
      off += n;
    }
  }
  return OkStatus();
}

Status BertEncoder::Encode(const std::vector<std::string>& texts, float* out) const {
  std::vector<std::vector<int32_t>> seqs;
  seqs.reserve(texts.size());
  for (const std::string& t : texts) seqs.push_back(Tokenize(t));
  return EncodeIds(seqs, out);
}

}  // namespace ragserve::engine
