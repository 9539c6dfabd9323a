// Helpers for engine tests: a random tiny model written to a fresh temporary directory.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "services/engine/model.h"
#include "services/engine/tiny_model.h"

namespace ragserve::engine::testing {

// A fresh directory under the system temp dir, removed on destruction.
class TempDir {
 public:
  TempDir() {
    // mkdtemp replaces the trailing six X characters.
    std::string tmpl =
        (std::filesystem::temp_directory_path() / ("engine_test_" + std::string(6, 'X'))).string();
    path_ = ::mkdtemp(tmpl.data()) != nullptr ? tmpl : std::string();
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Small sizes so tests stay fast; GQA (4 heads over 2 kv heads).
inline TinyModelOptions SmallOptions() {
  TinyModelOptions o;
  o.num_layers = 2;
  o.hidden_size = 64;
  o.num_heads = 4;
  o.num_kv_heads = 2;
  o.intermediate_size = 128;
  o.vocab_size = 300;
  o.seed = 5;
  return o;
}

// Writes a model (no tokenizer) into dir/name and loads it; fails the test on error.
inline std::unique_ptr<Model> MakeModel(const TempDir& dir, const TinyModelOptions& o,
                                        const std::string& name = "m",
                                        const kernels::Ops* ops = &kernels::FastOps()) {
  const std::string d = dir.path() + "/" + name;
  Status s = WriteTinyModel(o, {}, d);
  EXPECT_TRUE(s.ok()) << s.ToString();
  auto m = Model::Load(d, ops);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? std::move(m).value() : nullptr;
}

// n token ids drawn uniformly from [2, vocab) (past the BOS/EOS specials), seeded.
inline std::vector<int32_t> RandomTokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(2, vocab - 1);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = dist(rng);
  return t;
}

// One decode step of one sequence: token `tok` at position `pos` through `kv`; *logits gets its
// [vocab] logits.
inline Status DecodeStep(Model& m, KvSource* kv, int32_t tok, int32_t pos,
                         std::vector<float>* logits) {
  SequenceStep st{std::span<const int32_t>(&tok, 1), pos, kv};
  return m.Forward(std::span<const SequenceStep>(&st, 1), LogitsMode::kLast, logits);
}

inline float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return 1e30f;
  float m = 0.0f;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

}  // namespace ragserve::engine::testing
