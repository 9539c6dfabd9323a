// ModelWeights::LoadGguf: a GGUF file's tensors mapped onto the engine's Hugging Face-layout
// weights (the hyper-parameters come from gguf_config.cc).
#include <algorithm>
#include <cstring>
#include <set>
#include <utility>
#include <vector>

#include "nlohmann/json.hpp"
#include "services/engine/gguf_model.h"
#include "services/engine/gguf_quants.h"
#include "services/engine/weights.h"

namespace ragserve::engine {
namespace {

using nlohmann::json;

// HF row r of a q/k matrix with heads of `hd` rows -> its row in llama.cpp's rotary order
// (the converter's permute(): within a head, rows i and i + hd/2 become rows 2i and 2i + 1).
int64_t GgufRopeRow(int64_t r, int64_t hd) {
  const int64_t h = r / hd, i = r % hd, half = hd / 2;
  return h * hd + 2 * (i % half) + i / half;
}

std::string ShapeText(const std::vector<int64_t>& s) {
  std::string out;
  for (int64_t d : s) out += StrCat(out.empty() ? "" : ", ", d);
  return StrCat("[", out, "]");
}

// Hands out the GGUF tensors as HF-layout weight views, decoding or reordering when needed.
class GgufTaker {
 public:
  GgufTaker(const GgufFile& f, const WeightsLoadOptions& o,
            std::vector<std::vector<uint8_t>>* owned)
      : f_(f), opts_(o), owned_(owned) {}

  // Tensor `name` as the HF shape `shape` ([rows, cols] or [n]); rope_hd > 0 reorders its rows
  // (heads of rope_hd rows) from llama.cpp's rotary order.
  StatusOr<WeightView> Take(const std::string& name, const std::vector<int64_t>& shape,
                            int64_t rope_hd = 0, MatrixRole role = MatrixRole::kLayer);
  const std::set<std::string>& used() const { return used_; }
  const std::vector<TensorInfo>& infos() const { return infos_; }
  // The file bytes each of infos() was read from.
  const std::vector<std::pair<const uint8_t*, uint64_t>>& sources() const { return sources_; }

 private:
  StatusOr<const GgufTensorInfo*> Find(const std::string& name,
                                       const std::vector<int64_t>& shape) const;
  // Tensor t as `out` in a copy (decoded, converted or quantized; rows reordered when rope_hd).
  StatusOr<WeightView> Decode(const std::string& name, const GgufTensorInfo& t, kernels::DType out,
                              int64_t rows, int64_t cols, int64_t rope_hd);

  const GgufFile& f_;
  WeightsLoadOptions opts_;
  std::vector<std::vector<uint8_t>>* owned_;
  std::set<std::string> used_;
  std::vector<TensorInfo> infos_;  // what the fingerprint hashes
  std::vector<std::pair<const uint8_t*, uint64_t>> sources_;
};

StatusOr<const GgufTensorInfo*> GgufTaker::Find(const std::string& name,
                                                const std::vector<int64_t>& shape) const {
  const GgufTensorInfo* t = f_.header.FindTensor(name);
  if (t == nullptr) return InvalidArgument(StrCat("gguf: missing tensor \"", name, "\""));
  const std::vector<int64_t> want(shape.rbegin(), shape.rend());  // ne order
  if (t->ne != want) {
    return InvalidArgument(StrCat("gguf: tensor \"", name, "\" has ne ", ShapeText(t->ne),
                                  ", the metadata needs ", ShapeText(want)));
  }
  if (!CanDequantizeGgml(t->type)) {
    return InvalidArgument(StrCat("gguf: tensor \"", name, "\" has type ", GgmlTypeName(t->type),
                                  ", not supported (supported: F32, F16, BF16, Q8_0, Q4_0, "
                                  "Q5_0, Q4_K, Q6_K)"));
  }
  return t;
}

// The engine dtype of a GGUF tensor type CanDequantizeGgml accepts. Q5_0 has no kernels of its
// own: its blocks are rewritten, exactly, as Q8_0 blocks (RepackQ5_0ToQ8_0).
kernels::DType EngineDType(GgmlType t) {
  switch (t) {
    case GgmlType::kF16:
      return kernels::DType::kF16;
    case GgmlType::kBF16:
      return kernels::DType::kBF16;
    case GgmlType::kQ5_0:
    case GgmlType::kQ8_0:
      return kernels::DType::kQ8_0;
    case GgmlType::kQ4_0:
      return kernels::DType::kQ4_0;
    case GgmlType::kQ4_K:
      return kernels::DType::kQ4_K;
    case GgmlType::kQ6_K:
      return kernels::DType::kQ6_K;
    default:
      return kernels::DType::kF32;
  }
}

StatusOr<WeightView> GgufTaker::Take(const std::string& name, const std::vector<int64_t>& shape,
                                     int64_t rope_hd, MatrixRole role) {
  RS_ASSIGN_OR_RETURN(const GgufTensorInfo* t, Find(name, shape));
  const int64_t rows = shape.size() == 2 ? shape[0] : 1;
  const int64_t cols = shape.size() == 2 ? shape[1] : shape[0];
  const kernels::DType stored = EngineDType(static_cast<GgmlType>(t->type));
  // What the tensor becomes (WeightsLoadOptions::weights_dtype): matrices as asked (MatrixDType),
  // except that quantized ones keep their format when asked for another quantized one; vectors as
  // stored, but never block-quantized (the norm and bias ops take plain dtypes).
  kernels::DType want = stored;
  if (shape.size() == 2 && opts_.weights_dtype &&
      !(kernels::IsQuantized(stored) && kernels::IsQuantized(*opts_.weights_dtype))) {
    want = MatrixDType(*opts_.weights_dtype, cols, role);
  }
  if (shape.size() != 2 && kernels::IsQuantized(stored)) want = kernels::DType::kF32;
  WeightView w;
  if (want == stored && rope_hd == 0 && t->type != static_cast<uint32_t>(GgmlType::kQ5_0)) {
    w = WeightView{f_.Data(*t), stored, rows, cols};
  } else {
    RS_ASSIGN_OR_RETURN(w, Decode(name, *t, want, rows, cols, rope_hd));
  }
  used_.insert(name);
  infos_.push_back(TensorInfo{StrCat(name, ":", GgmlTypeName(t->type)), w.dtype, shape, 0, 0});
  sources_.push_back({f_.Data(*t), t->bytes});
  return w;
}

StatusOr<WeightView> GgufTaker::Decode(const std::string& name, const GgufTensorInfo& t,
                                       kernels::DType out, int64_t rows, int64_t cols,
                                       int64_t rope_hd) {
  const int64_t block = kernels::DTypeBlockValues(out);
  if (cols % block != 0) {
    return InvalidArgument(StrCat("gguf: tensor \"", name, "\" has ", cols,
                                  " columns, not a multiple of the ", kernels::DTypeName(out),
                                  " block (", block, " values): it cannot be stored as ",
                                  kernels::DTypeName(out)));
  }
  WeightView w{nullptr, out, rows, cols};
  std::vector<uint8_t>& buf = owned_->emplace_back(static_cast<size_t>(w.Bytes()));
  w.data = buf.data();
  std::vector<float> tmp(static_cast<size_t>(cols));
  const uint64_t row_bytes = t.bytes / static_cast<uint64_t>(rows);
  if (rows == 1 && rope_hd > 0) {  // a bias: reorder its elements
    std::vector<float> all(static_cast<size_t>(cols));
    RS_RETURN_IF_ERROR(DequantizeGgml(t.type, f_.Data(t), cols, all.data()));
    for (int64_t i = 0; i < cols; ++i) tmp[i] = all[GgufRopeRow(i, rope_hd)];
    kernels::ConvertFromF32(tmp.data(), out, cols, buf.data());
  } else if (out == kernels::DType::kQ8_0 && t.type == static_cast<uint32_t>(GgmlType::kQ5_0)) {
    for (int64_t r = 0; r < rows; ++r) {  // Q5_0 -> Q8_0, row by row (rows maybe reordered)
      const int64_t src = rope_hd > 0 ? GgufRopeRow(r, rope_hd) : r;
      RepackQ5_0ToQ8_0(f_.Data(t) + src * row_bytes, cols / 32, buf.data() + r * w.RowBytes());
    }
  } else if (out == EngineDType(static_cast<GgmlType>(t.type))) {
    // Same format, rows reordered (q/k of a quantized file): whole rows of blocks move as they are.
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t src = rope_hd > 0 ? GgufRopeRow(r, rope_hd) : r;
      std::memcpy(buf.data() + r * row_bytes, f_.Data(t) + src * row_bytes, row_bytes);
    }
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t src = rope_hd > 0 ? GgufRopeRow(r, rope_hd) : r;
      RS_RETURN_IF_ERROR(DequantizeGgml(t.type, f_.Data(t) + src * row_bytes, cols, tmp.data()));
      kernels::ConvertFromF32(tmp.data(), out, cols, buf.data() + r * w.RowBytes());
    }
  }
  return w;
}

std::string Blk(int i, const char* suffix) { return StrCat("blk.", i, ".", suffix); }

Status TakeLayer(GgufTaker& g, const ModelConfig& c, int i, LayerWeights* l) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, hd = c.head_dim;
  const int64_t QD = int64_t{c.num_heads} * hd, KD = int64_t{c.num_kv_heads} * hd;
  // llama.cpp's converter reorders q/k rows for its rotary kernel for llama/mistral; qwen2 files
  // keep the HF order (its rotary type is NEOX, the HF rotate_half).
  const int64_t rope = c.model_type == "qwen2" ? 0 : hd;
  RS_ASSIGN_OR_RETURN(l->input_norm, g.Take(Blk(i, "attn_norm.weight"), {H}));
  RS_ASSIGN_OR_RETURN(l->post_norm, g.Take(Blk(i, "ffn_norm.weight"), {H}));
  RS_ASSIGN_OR_RETURN(l->q, g.Take(Blk(i, "attn_q.weight"), {QD, H}, rope));
  RS_ASSIGN_OR_RETURN(l->k, g.Take(Blk(i, "attn_k.weight"), {KD, H}, rope));
  RS_ASSIGN_OR_RETURN(l->v, g.Take(Blk(i, "attn_v.weight"), {KD, H}));
  RS_ASSIGN_OR_RETURN(l->o, g.Take(Blk(i, "attn_output.weight"), {H, QD}));
  if (c.qkv_bias) {
    RS_ASSIGN_OR_RETURN(l->q_bias, g.Take(Blk(i, "attn_q.bias"), {QD}, rope));
    RS_ASSIGN_OR_RETURN(l->k_bias, g.Take(Blk(i, "attn_k.bias"), {KD}, rope));
    RS_ASSIGN_OR_RETURN(l->v_bias, g.Take(Blk(i, "attn_v.bias"), {KD}));
  }
  if (c.o_bias) {
    RS_ASSIGN_OR_RETURN(l->o_bias, g.Take(Blk(i, "attn_output.bias"), {H}));
  }
  RS_ASSIGN_OR_RETURN(l->gate, g.Take(Blk(i, "ffn_gate.weight"), {I, H}));
  RS_ASSIGN_OR_RETURN(l->up, g.Take(Blk(i, "ffn_up.weight"), {I, H}));
  RS_ASSIGN_OR_RETURN(l->down, g.Take(Blk(i, "ffn_down.weight"), {H, I}));
  return OkStatus();
}

// rope_freqs.weight [head_dim / 2] (F32): per-frequency divisors (llama3 scaling).
Status TakeRopeFactors(const GgufFile& f, ModelConfig* c) {
  const GgufTensorInfo* t = f.header.FindTensor("rope_freqs.weight");
  if (t == nullptr) return OkStatus();
  if (t->type != static_cast<uint32_t>(GgmlType::kF32) || t->ne.size() != 1 ||
      t->ne[0] != c->head_dim / 2) {
    return InvalidArgument(StrCat("gguf: rope_freqs.weight must be F32 [", c->head_dim / 2,
                                  "], got ", GgmlTypeName(t->type), " ", ShapeText(t->ne)));
  }
  c->rope_freq_factors.resize(static_cast<size_t>(t->ne[0]));
  RS_RETURN_IF_ERROR(DequantizeGgml(t->type, f.Data(*t), t->ne[0], c->rope_freq_factors.data()));
  for (float v : c->rope_freq_factors) {
    if (!(v > 0.0f)) return InvalidArgument("gguf: rope_freqs.weight has a factor <= 0");
  }
  return OkStatus();
}

}  // namespace

StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::LoadGguf(const std::string& path,
                                                               const WeightsLoadOptions& options) {
  std::unique_ptr<ModelWeights> mw(new ModelWeights());
  RS_ASSIGN_OR_RETURN(mw->gguf_, OpenGguf(path));
  auto load = [&]() -> Status {
    RS_ASSIGN_OR_RETURN(mw->config_, GgufModelConfig(mw->gguf_->header));
    ModelConfig& c = mw->config_;
    RS_RETURN_IF_ERROR(TakeRopeFactors(*mw->gguf_, &c));
    GgufTaker g(*mw->gguf_, options, &mw->owned_);
    const int64_t H = c.hidden_size, V = c.vocab_size;
    const MatrixRole embed_role = c.tie_word_embeddings ? MatrixRole::kOutput : MatrixRole::kLayer;
    RS_ASSIGN_OR_RETURN(mw->embed_, g.Take("token_embd.weight", {V, H}, 0, embed_role));
    RS_ASSIGN_OR_RETURN(mw->final_norm_, g.Take("output_norm.weight", {H}));
    if (c.tie_word_embeddings) {
      mw->lm_head_ = mw->embed_;
    } else {
      RS_ASSIGN_OR_RETURN(mw->lm_head_, g.Take("output.weight", {V, H}, 0, MatrixRole::kOutput));
    }
    mw->layers_.resize(static_cast<size_t>(c.num_layers));
    for (int i = 0; i < c.num_layers; ++i) RS_RETURN_IF_ERROR(TakeLayer(g, c, i, &mw->layers_[i]));
    for (const GgufTensorInfo& t : mw->gguf_->header.tensors) {
      if (!g.used().count(t.name) && t.name != "rope_freqs.weight") {
        return InvalidArgument(StrCat("gguf: unexpected tensor \"", t.name, "\" for ", c.model_type,
                                      " with ", c.num_layers, " layers"));
      }
    }
    std::vector<FingerprintedTensor> infos;
    for (size_t i = 0; i < g.infos().size(); ++i) {
      const TensorInfo& t = g.infos()[i];
      infos.push_back({&t, g.sources()[i].first, g.sources()[i].second});
      mw->num_params_ += t.numel();
    }
    if (!c.rope_freq_factors.empty()) {  // the factors change the model: fingerprint them
      json canon = json::parse(c.canonical_json);
      canon["rope_freqs"] = c.rope_freq_factors;
      c.canonical_json = canon.dump();
    }
    mw->fingerprint_ = ComputeFingerprint(c, infos);
    return OkStatus();
  };
  Status s = load();
  if (!s.ok()) return Annotate(s, path);
  return mw;
}

}  // namespace ragserve::engine
