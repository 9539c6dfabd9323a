#include "services/engine/weights.h"

#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "kernels/cpu/quant.h"
#include "nlohmann/json.hpp"
#include "services/common/logging.h"
#include "services/engine/gguf_model.h"

namespace ragserve::engine {
namespace {

struct Located {
  const TensorInfo* info;
  const SafetensorsFile* file;
};

std::string LayerName(int i, const char* suffix) { return StrCat("model.layers.", i, ".", suffix); }

// Tensors some checkpoints carry that the runtime recomputes (rotary caches): accepted, unused.
bool IsIgnorable(const std::string& name) {
  return name.ends_with("self_attn.rotary_emb.inv_freq");
}

// XXH64 of the bytes, or for more than 256 KiB of 64 samples of 4 KiB spread over them (the
// first and the last included) and the size: reads at most 256 KiB of a mapped tensor.
uint64_t SampledDigest(const uint8_t* data, uint64_t bytes) {
  constexpr uint64_t kChunk = 4096, kChunks = 64;
  if (bytes <= kChunk * kChunks) return XXH64(data, bytes, 0);
  uint64_t digests[kChunks + 1];
  for (uint64_t i = 0; i < kChunks; ++i) {
    digests[i] = XXH64(data + i * ((bytes - kChunk) / (kChunks - 1)), kChunk, i);
  }
  digests[kChunks] = bytes;
  return XXH64(digests, sizeof(digests), 0);
}

}  // namespace

std::string ComputeFingerprint(const ModelConfig& config,
                               const std::vector<FingerprintedTensor>& tensors) {
  std::vector<const FingerprintedTensor*> sorted;
  for (const FingerprintedTensor& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](const FingerprintedTensor* a, const FingerprintedTensor* b) {
              return a->info->name < b->info->name;
            });
  std::string text = config.canonical_json;
  text.push_back('\n');
  for (const FingerprintedTensor* t : sorted) {
    text += t->info->name;
    text.push_back(':');
    text += kernels::DTypeName(t->info->dtype);
    for (int64_t d : t->info->shape) text += StrCat(",", d);
    char digest[18];
    std::snprintf(digest, sizeof(digest), ":%016llx",
                  static_cast<unsigned long long>(SampledDigest(t->data, t->bytes)));
    text += digest;
    text.push_back('\n');
  }
  const uint64_t h = XXH64(text.data(), text.size(), 0);
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

int64_t ModelWeights::BytesReadPerToken() const {
  auto bytes = [](const WeightView& w) { return w.data == nullptr ? 0 : w.Bytes(); };
  int64_t total = bytes(lm_head_) + bytes(final_norm_) + embed_.RowBytes();
  for (const auto& l : layers_) {
    for (const WeightView* w : {&l.input_norm, &l.q, &l.k, &l.v, &l.o, &l.q_bias, &l.k_bias,
                                &l.v_bias, &l.o_bias, &l.post_norm, &l.gate, &l.up, &l.down}) {
      total += bytes(*w);
    }
  }
  return total;
}

namespace {

// One line per load when matrices are not in the dtype asked for (MatrixDType: the LM head of a
// 4-bit format, k-quant matrices that are not whole blocks; GGUF blocks kept as stored), so an
// operator who asked for q4_k knows why the model is larger than expected.
void LogDTypeExceptions(const ModelWeights& mw, const WeightsLoadOptions& options,
                        const std::string& model_path) {
  if (!options.weights_dtype) return;
  const kernels::DType want = *options.weights_dtype;
  std::map<std::string, int> other;  // dtype -> layer matrices stored in it
  int matrices = 0;
  for (const LayerWeights& l : mw.layers()) {
    for (const WeightView* w : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) {
      ++matrices;
      if (w->dtype != want) ++other[std::string(kernels::DTypeName(w->dtype))];
    }
  }
  std::string what;
  if (mw.lm_head().dtype != want) {
    what = StrCat("the LM head as ", kernels::DTypeName(mw.lm_head().dtype));
  }
  for (const auto& [dtype, n] : other) {
    what += StrCat(what.empty() ? "" : ", ", n, " of ", matrices, " layer matrices as ", dtype);
  }
  if (!what.empty()) {
    RS_LOG(info, "{}: weights dtype {} asked; stored otherwise: {}", model_path,
           kernels::DTypeName(want), what);
  }
}

}  // namespace

kernels::DType MatrixDType(kernels::DType want, int64_t cols, MatrixRole role) {
  if (role == MatrixRole::kOutput &&
      (want == kernels::DType::kQ4_0 || want == kernels::DType::kQ4_K)) {
    want = kernels::DType::kQ6_K;
  }
  if (cols % kernels::DTypeBlockValues(want) == 0) return want;
  const bool k_quant = want == kernels::DType::kQ4_K || want == kernels::DType::kQ6_K;
  if (k_quant && cols % kernels::DTypeBlockValues(kernels::DType::kQ8_0) == 0) {
    return kernels::DType::kQ8_0;
  }
  return want;
}

StatusOr<WeightsLoadOptions> ParseWeightsDtype(const std::string& name) {
  WeightsLoadOptions o;
  if (name.empty() || name == "auto") return o;
  kernels::DType t;
  RS_CHECK_ARG(kernels::DTypeFromName(name, &t), "--weights-dtype must be auto, f32, f16, bf16, ",
               "q8_0, q4_0, q4_k or q6_k, got '", name, "'");
  o.weights_dtype = t;
  return o;
}

StatusOr<WeightView> ModelWeights::ConvertMatrix(const std::string& name, const WeightView& w,
                                                 kernels::DType to) {
  const int64_t block = kernels::DTypeBlockValues(to);
  if (w.cols % block != 0) {
    return InvalidArgument(StrCat("tensor \"", name, "\" has ", w.cols,
                                  " columns, not a multiple of the ", kernels::DTypeName(to),
                                  " block (", block, " values): it cannot be stored as ",
                                  kernels::DTypeName(to)));
  }
  WeightView out{nullptr, to, w.rows, w.cols};
  std::vector<uint8_t>& buf = owned_.emplace_back(static_cast<size_t>(out.Bytes()));
  out.data = buf.data();
  // Rows are independent: quantizing a large checkpoint at load uses every core.
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(w.cols));
#pragma omp for schedule(dynamic, 64)
    for (int64_t r = 0; r < w.rows; ++r) {
      kernels::ConvertToF32(w.Row(r), w.dtype, w.cols, row.data());
      kernels::ConvertFromF32(row.data(), to, w.cols, buf.data() + r * out.RowBytes());
    }
  }
  return out;
}

StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::Load(const std::string& model_path,
                                                           const WeightsLoadOptions& options) {
  RS_ASSIGN_OR_RETURN(std::unique_ptr<ModelWeights> mw, IsGgufModelPath(model_path)
                                                            ? LoadGguf(model_path, options)
                                                            : LoadSafetensors(model_path, options));
  LogDTypeExceptions(*mw, options, model_path);
  mw->PackForKernels();
  return mw;
}

void ModelWeights::PackForKernels() {
  if (const char* env = std::getenv("RAGSERVE_NO_REPACK"); env != nullptr && env[0] == '1') return;
  auto pack = [&](WeightView* w) {
    const int64_t bytes = kernels::PackedBytes(*w);
    if (bytes == 0) return;
    // 64-byte aligned: the kernel's loads of a group's block then never split a cache line.
    std::vector<uint8_t>& buf = owned_.emplace_back(static_cast<size_t>(bytes + 64));
    uint8_t* p = buf.data() + (64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64;
    kernels::PackWeights(*w, p);
    w->packed = p;
  };
  // A bf16 LM head is left alone: the packed kernel serves prefill-sized inputs only, and the
  // head mostly sees a row per sequence (LogitsMode::kLast): its copy would be memory for nothing.
  if (lm_head_.dtype != kernels::DType::kBF16) pack(&lm_head_);
  for (LayerWeights& l : layers_) {
    for (WeightView* w : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) pack(w);
  }
}

StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::LoadSafetensors(
    const std::string& model_dir, const WeightsLoadOptions& options) {
  namespace fs = std::filesystem;
  std::unique_ptr<ModelWeights> mw(new ModelWeights());
  RS_ASSIGN_OR_RETURN(mw->config_, LoadModelConfig(model_dir));
  const ModelConfig& c = mw->config_;

  // Which files hold the tensors.
  std::vector<std::string> shard_files;
  std::map<std::string, std::string> index_map;  // tensor -> file (sharded layout)
  const std::string single = model_dir + "/model.safetensors";
  const std::string index = model_dir + "/model.safetensors.index.json";
  std::error_code ec;
  if (fs::exists(single, ec)) {
    shard_files.push_back("model.safetensors");
  } else if (fs::exists(index, ec)) {
    std::ifstream in(index, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") ||
        !j["weight_map"].is_object()) {
      return InvalidArgument(StrCat(index, ": not a JSON object with a \"weight_map\" object"));
    }
    std::set<std::string> files;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it->is_string()) {
        return InvalidArgument(
            StrCat(index, ": weight_map entry \"", it.key(), "\" is not a string"));
      }
      const std::string f = it->get<std::string>();
      if (f.find('/') != std::string::npos || f.find("..") != std::string::npos) {
        return InvalidArgument(StrCat(index, ": shard file name \"", f, "\" must be a plain name"));
      }
      index_map[it.key()] = f;
      files.insert(f);
    }
    shard_files.assign(files.begin(), files.end());
  } else {
    return NotFound(StrCat("no model.safetensors or model.safetensors.index.json in ", model_dir));
  }

  std::map<std::string, Located> all;
  mw->files_.reserve(shard_files.size());
  for (const std::string& f : shard_files) {
    RS_ASSIGN_OR_RETURN(SafetensorsFile sf, OpenSafetensors(model_dir + "/" + f));
    mw->files_.push_back(std::move(sf));
  }
  for (size_t fi = 0; fi < mw->files_.size(); ++fi) {
    const SafetensorsFile& sf = mw->files_[fi];
    for (const auto& [name, info] : sf.header.tensors) {
      if (!index_map.empty()) {
        auto it = index_map.find(name);
        if (it == index_map.end() || it->second != shard_files[fi]) {
          return InvalidArgument(StrCat("tensor \"", name, "\" found in ", shard_files[fi],
                                        " but the index maps it elsewhere"));
        }
      }
      if (!all.emplace(name, Located{&info, &sf}).second) {
        return InvalidArgument(StrCat("tensor \"", name, "\" appears in more than one shard"));
      }
    }
  }
  for (const auto& [name, file] : index_map) {
    if (!all.count(name)) {
      return InvalidArgument(
          StrCat("tensor \"", name, "\" listed in the index is missing from ", file));
    }
  }

  std::set<std::string> used;
  std::map<std::string, kernels::DType> converted;  // tensor -> dtype after load (fingerprint)
  ModelWeights* self = mw.get();
  auto take = [&](const std::string& name, std::vector<int64_t> shape,
                  MatrixRole role = MatrixRole::kLayer) -> StatusOr<WeightView> {
    auto it = all.find(name);
    if (it == all.end()) return InvalidArgument(StrCat("missing tensor \"", name, "\""));
    const TensorInfo& t = *it->second.info;
    if (t.shape != shape) {
      std::string got, want;
      for (int64_t d : t.shape) got += StrCat(got.empty() ? "" : ", ", d);
      for (int64_t d : shape) want += StrCat(want.empty() ? "" : ", ", d);
      return InvalidArgument(
          StrCat("tensor \"", name, "\" has shape [", got, "], config needs [", want, "]"));
    }
    used.insert(name);
    WeightView w;
    w.data = it->second.file->Data(t);
    w.dtype = t.dtype;
    w.rows = shape.size() == 2 ? shape[0] : 1;
    w.cols = shape.size() == 2 ? shape[1] : shape[0];
    if (shape.size() == 2 && options.weights_dtype && *options.weights_dtype != w.dtype) {
      RS_ASSIGN_OR_RETURN(
          w, self->ConvertMatrix(name, w, MatrixDType(*options.weights_dtype, w.cols, role)));
      converted[name] = w.dtype;
    }
    return w;
  };
  const int64_t H = c.hidden_size, V = c.vocab_size, I = c.intermediate_size;
  const int64_t QD = int64_t{c.num_heads} * c.head_dim, KD = int64_t{c.num_kv_heads} * c.head_dim;
  const bool tied = c.tie_word_embeddings && !all.count("lm_head.weight");
  RS_ASSIGN_OR_RETURN(mw->embed_, take("model.embed_tokens.weight", {V, H},
                                       tied ? MatrixRole::kOutput : MatrixRole::kLayer));
  RS_ASSIGN_OR_RETURN(mw->final_norm_, take("model.norm.weight", {H}));
  if (tied) {
    mw->lm_head_ = mw->embed_;
  } else {
    RS_ASSIGN_OR_RETURN(mw->lm_head_, take("lm_head.weight", {V, H}, MatrixRole::kOutput));
  }
  mw->layers_.resize(static_cast<size_t>(c.num_layers));
  for (int i = 0; i < c.num_layers; ++i) {
    LayerWeights& l = mw->layers_[i];
    RS_ASSIGN_OR_RETURN(l.input_norm, take(LayerName(i, "input_layernorm.weight"), {H}));
    RS_ASSIGN_OR_RETURN(l.post_norm, take(LayerName(i, "post_attention_layernorm.weight"), {H}));
    RS_ASSIGN_OR_RETURN(l.q, take(LayerName(i, "self_attn.q_proj.weight"), {QD, H}));
    RS_ASSIGN_OR_RETURN(l.k, take(LayerName(i, "self_attn.k_proj.weight"), {KD, H}));
    RS_ASSIGN_OR_RETURN(l.v, take(LayerName(i, "self_attn.v_proj.weight"), {KD, H}));
    RS_ASSIGN_OR_RETURN(l.o, take(LayerName(i, "self_attn.o_proj.weight"), {H, QD}));
    if (c.qkv_bias) {
      RS_ASSIGN_OR_RETURN(l.q_bias, take(LayerName(i, "self_attn.q_proj.bias"), {QD}));
      RS_ASSIGN_OR_RETURN(l.k_bias, take(LayerName(i, "self_attn.k_proj.bias"), {KD}));
      RS_ASSIGN_OR_RETURN(l.v_bias, take(LayerName(i, "self_attn.v_proj.bias"), {KD}));
    }
    if (c.o_bias) {
      RS_ASSIGN_OR_RETURN(l.o_bias, take(LayerName(i, "self_attn.o_proj.bias"), {H}));
    }
    RS_ASSIGN_OR_RETURN(l.gate, take(LayerName(i, "mlp.gate_proj.weight"), {I, H}));
    RS_ASSIGN_OR_RETURN(l.up, take(LayerName(i, "mlp.up_proj.weight"), {I, H}));
    RS_ASSIGN_OR_RETURN(l.down, take(LayerName(i, "mlp.down_proj.weight"), {H, I}));
  }
  std::vector<FingerprintedTensor> infos;
  std::vector<TensorInfo> retyped;  // headers of converted tensors, with their new dtype
  retyped.reserve(converted.size());
  for (const auto& [name, loc] : all) {
    if (!used.count(name) && !IsIgnorable(name)) {
      return InvalidArgument(StrCat("unexpected tensor \"", name, "\" for model_type ",
                                    c.model_type, " with ", c.num_layers, " layers"));
    }
    const auto* data = static_cast<const uint8_t*>(loc.file->Data(*loc.info));
    const uint64_t bytes = loc.info->end - loc.info->begin;
    if (auto it = converted.find(name); it != converted.end()) {
      retyped.push_back(*loc.info);
      retyped.back().dtype = it->second;
      infos.push_back({&retyped.back(), data, bytes});
    } else {
      infos.push_back({loc.info, data, bytes});
    }
    mw->num_params_ += loc.info->numel();
  }
  mw->fingerprint_ = ComputeFingerprint(c, infos);
  return mw;
}

}  // namespace ragserve::engine
