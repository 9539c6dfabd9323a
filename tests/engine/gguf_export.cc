// ragserve-gguf-export: loads a model path (a .gguf file or an HF directory) with
// ModelWeights::Load and writes every weight the engine will use, under its Hugging Face name and
// in its loaded dtype, to one safetensors file; prints {"fingerprint", "config", "dtype"} as JSON.
// The C++ side of tests/engine/gguf_ref_test.py (which compares the tensors with numpy's
// dequantization of the same GGUF blocks).
//
//   ragserve-gguf-export model.gguf out.safetensors [f32|bf16|f16|q8_0|...]
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "services/engine/weights.h"

namespace {

using namespace ragserve::engine;

void Add(const std::string& name, const WeightView& w, bool vector,
         std::vector<TensorToWrite>* out) {
  if (w.data == nullptr) return;
  TensorToWrite t;
  t.name = name;
  t.dtype = w.dtype;
  t.shape = vector ? std::vector<int64_t>{w.cols} : std::vector<int64_t>{w.rows, w.cols};
  if (ragserve::kernels::IsQuantized(w.dtype)) {  // kept quantized: exported dequantized (f32)
    t.dtype = ragserve::kernels::DType::kF32;
    t.bytes.resize(static_cast<size_t>(w.rows * w.cols) * 4);
    ragserve::kernels::ConvertToF32(w.data, w.dtype, w.rows * w.cols,
                                    reinterpret_cast<float*>(t.bytes.data()));
  } else {
    const size_t n = static_cast<size_t>(w.Bytes());
    t.bytes.resize(n);
    std::memcpy(t.bytes.data(), w.data, n);
  }
  out->push_back(std::move(t));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: ragserve-gguf-export MODEL OUT.safetensors [WEIGHTS_DTYPE]\n";
    return 2;
  }
  // No dtype: the weights as loaded by default (quantized GGUF tensors kept in their blocks and
  // exported dequantized, bit-exactly); a dtype: WeightsLoadOptions::weights_dtype.
  auto o = ParseWeightsDtype(argc > 3 ? argv[3] : "");
  if (!o.ok()) {
    std::cerr << o.status().ToString() << "\n";
    return 2;
  }
  auto w = ModelWeights::Load(argv[1], *o);
  if (!w.ok()) {
    std::cerr << w.status().ToString() << "\n";
    return 1;
  }
  const ModelWeights& m = **w;
  std::vector<TensorToWrite> ts;
  Add("model.embed_tokens.weight", m.embed(), false, &ts);
  if (m.lm_head().data != m.embed().data) Add("lm_head.weight", m.lm_head(), false, &ts);
  Add("model.norm.weight", m.final_norm(), true, &ts);
  for (size_t i = 0; i < m.layers().size(); ++i) {
    const LayerWeights& l = m.layers()[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    Add(p + "input_layernorm.weight", l.input_norm, true, &ts);
    Add(p + "post_attention_layernorm.weight", l.post_norm, true, &ts);
    for (auto [name, v] :
         {std::pair{"q_proj", &l.q}, {"k_proj", &l.k}, {"v_proj", &l.v}, {"o_proj", &l.o}}) {
      Add(p + "self_attn." + name + ".weight", *v, false, &ts);
    }
    for (auto [name, v] : {std::pair{"q_proj", &l.q_bias},
                           {"k_proj", &l.k_bias},
                           {"v_proj", &l.v_bias},
                           {"o_proj", &l.o_bias}}) {
      Add(p + "self_attn." + name + ".bias", *v, true, &ts);
    }
    for (auto [name, v] :
         {std::pair{"gate_proj", &l.gate}, {"up_proj", &l.up}, {"down_proj", &l.down}}) {
      Add(p + "mlp." + name + ".weight", *v, false, &ts);
    }
  }
  auto s = WriteSafetensors(argv[2], ts);
  if (!s.ok()) {
    std::cerr << s.ToString() << "\n";
    return 1;
  }
  nlohmann::json out = {{"fingerprint", m.fingerprint()},
                        {"config", nlohmann::json::parse(m.config().canonical_json)},
                        {"rope_inv_freq", m.config().RopeInvFreq()},
                        {"dtype", std::string(ragserve::kernels::DTypeName(m.dtype()))}};
  std::cout << out.dump() << "\n";
  return 0;
}
