// Checkpoint loading: safetensors header validation, config parsing, directory layouts (single
// file and sharded), and clear errors (never crashes) for missing, truncated, oversized, wrongly
// typed or wrongly shaped input.
#include "services/engine/weights.h"

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "services/engine/config.h"
#include "services/engine/safetensors.h"
#include "tests/engine/engine_test_util.h"
#include "tests/support/process.h"

namespace ragserve::engine {
namespace {

using ragserve::testing::ReadFileOrEmpty;

using testing::SmallOptions;
using testing::TempDir;

void WriteFile(const std::string& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << s;
}
// A safetensors file image from a header JSON and a data buffer.
std::string Image(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i));
  return out + header + data;
}
StatusOr<SafetensorsHeader> Parse(const std::string& img) {
  return ParseSafetensorsHeader(reinterpret_cast<const uint8_t*>(img.data()), img.size(),
                                img.size());
}

TEST(SafetensorsTest, WriteThenParseRoundTripsNamesDtypesShapesAndBytes) {
  TempDir dir;
  std::vector<TensorToWrite> ts = {
      {"b", DType::kBF16, {2, 3}, std::vector<uint8_t>(12, 7)},
      {"a", DType::kF32, {4}, std::vector<uint8_t>(16, 9)},
      {"empty", DType::kF16, {0, 5}, {}},
  };
  ASSERT_TRUE(WriteSafetensors(dir.path() + "/x.safetensors", ts, {{"k", "v"}}).ok());
  auto f = OpenSafetensors(dir.path() + "/x.safetensors");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->header.data_offset % 8, 0u);
  EXPECT_EQ(f->header.metadata.at("k"), "v");
  ASSERT_EQ(f->header.tensors.size(), 3u);
  const TensorInfo& b = f->header.tensors.at("b");
  EXPECT_EQ(b.dtype, DType::kBF16);
  EXPECT_EQ(b.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(static_cast<const uint8_t*>(f->Data(b))[11], 7);
  EXPECT_EQ(static_cast<const uint8_t*>(f->Data(f->header.tensors.at("a")))[0], 9);
}

TEST(SafetensorsTest, RejectsMalformedHeadersWithAnErrorNamingTheTensor) {
  struct Case {
    std::string header, data;
    StatusCode code;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {R"({"w":{"dtype":"I8","shape":[2],"data_offsets":[0,2]}})", "xx",
       StatusCode::kInvalidArgument, "\"w\" has unsupported dtype \"I8\""},
      {R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "12345678",
       StatusCode::kInvalidArgument, "\"w\" spans 8 bytes"},
      {R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", "12345678",
       StatusCode::kDataLoss, "\"w\" ends at byte 16"},
      {R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", "",
       StatusCode::kInvalidArgument, "\"w\" has bad dimension"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", "12345678",
       StatusCode::kInvalidArgument, "\"w\" data_offsets"},
      {R"({"w":{"dtype":"F32","shape":[2]}})", "12345678", StatusCode::kInvalidArgument,
       "\"w\" has no valid data_offsets"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       "123456789012", StatusCode::kInvalidArgument, "overlap"},
      {R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", "",
       StatusCode::kInvalidArgument, "\"w\""},
      {R"([1,2,3])", "", StatusCode::kInvalidArgument, "not a JSON object"},
      {R"({"w":)", "", StatusCode::kInvalidArgument, "not valid JSON"},
  };
  for (const Case& c : cases) {
    auto h = Parse(Image(c.header, c.data));
    ASSERT_FALSE(h.ok()) << c.header;
    EXPECT_EQ(h.status().code(), c.code) << c.header << " -> " << h.status().ToString();
    EXPECT_NE(h.status().message().find(c.needle), std::string::npos)
        << c.header << " -> " << h.status().message();
  }
}

TEST(SafetensorsTest, RejectsTruncatedAndOversizedHeaders) {
  auto tiny = Parse(std::string("\x05\x00\x00", 3));
  EXPECT_EQ(tiny.status().code(), StatusCode::kDataLoss);
  std::string img = Image(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "abcd");
  auto cut = Parse(img.substr(0, 20));  // header length says more than the file holds
  EXPECT_EQ(cut.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(cut.status().message().find("truncated"), std::string::npos);
  std::string huge(8, '\0');
  huge[7] = 0x01;  // 2^56-byte header
  auto big = Parse(huge + "{}");
  EXPECT_EQ(big.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(big.status().message().find("exceeds the limit"), std::string::npos);
}

TEST(ConfigTest, ParsesTheFieldsOfEachModelType) {
  auto c = ParseModelConfig(R"({"model_type":"qwen2","vocab_size":10,"hidden_size":8,
      "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
      "num_key_value_heads":1,"rms_norm_eps":1e-6,"rope_theta":1000000.0,
      "tie_word_embeddings":true,"bos_token_id":3,"eos_token_id":[4,5]})");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->qkv_bias);
  EXPECT_FALSE(c->o_bias);
  EXPECT_EQ(c->head_dim, 4);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, 3);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{4, 5}));
  auto m = ParseModelConfig(R"({"model_type":"mistral","vocab_size":10,"hidden_size":8,
      "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
      "sliding_window":4096})");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->sliding_window, 4096);
  EXPECT_EQ(m->num_kv_heads, 2);
  EXPECT_FALSE(m->qkv_bias);
}

TEST(ConfigTest, RopeScalingLinearDividesAndLlama3KeepsHighFrequencies) {
  const std::string base = R"({"model_type":"llama","vocab_size":10,"hidden_size":64,
      "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":1,"rope_theta":500000.0)";
  auto none = ParseModelConfig(base + "}");
  auto lin = ParseModelConfig(base + R"(,"rope_scaling":{"type":"linear","factor":4.0}})");
  auto l3 = ParseModelConfig(base + R"(,"rope_scaling":{"rope_type":"llama3","factor":8.0,
      "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}})");
  ASSERT_TRUE(none.ok() && lin.ok() && l3.ok());
  const auto f0 = none->RopeInvFreq(), f1 = lin->RopeInvFreq(), f3 = l3->RopeInvFreq();
  ASSERT_EQ(f0.size(), 32u);
  for (size_t i = 0; i < f0.size(); ++i) EXPECT_FLOAT_EQ(f1[i], f0[i] / 4.0f);
  EXPECT_FLOAT_EQ(f3[0], f0[0]);           // wavelength 2*pi < 8192/4: unchanged
  EXPECT_FLOAT_EQ(f3[31], f0[31] / 8.0f);  // longest wavelength > 8192: divided by factor
  bool smoothed = false;                   // some frequency in between is interpolated
  for (size_t i = 0; i < f0.size(); ++i) {
    if (f3[i] < f0[i] * 0.99f && f3[i] > f0[i] / 8.0f * 1.01f) smoothed = true;
  }
  EXPECT_TRUE(smoothed);
}

TEST(ConfigTest, RejectsUnknownModelTypesAndBadFieldsByName) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"model_type":"gpt2","vocab_size":10})", "unsupported model_type \"gpt2\""},
      {R"({"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
          "num_hidden_layers":1})",
       "num_attention_heads"},
      {R"({"model_type":"llama","vocab_size":"10","hidden_size":8})", "vocab_size"},
      {R"({"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
          "num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":3})",
       "num_key_value_heads"},
      {R"({"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
          "num_hidden_layers":1,"num_attention_heads":2,"rope_scaling":{"type":"yarn"}})",
       "yarn"},
      {R"({"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
          "num_hidden_layers":1,"num_attention_heads":2,"hidden_act":"gelu"})",
       "hidden_act"},
      {"{not json", "not valid JSON"},
      {R"({"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
          "num_hidden_layers":1000000000,"num_attention_heads":2})",
       "\"num_hidden_layers\" out of range [1, 4096]: 1000000000"},
  };
  for (const auto& [text, needle] : cases) {
    auto c = ParseModelConfig(text);
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(c.status().message().find(needle), std::string::npos) << c.status().message();
  }
}

class LoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = dir_.path() + "/m";
    ASSERT_TRUE(WriteTinyModel(SmallOptions(), {}, model_).ok());
  }
  StatusOr<std::unique_ptr<ModelWeights>> Load() { return ModelWeights::Load(model_); }
  // Rewrites model.safetensors with `edit` applied to its tensors.
  void Rewrite(const std::function<void(std::vector<TensorToWrite>&)>& edit) {
    auto f = OpenSafetensors(model_ + "/model.safetensors");
    ASSERT_TRUE(f.ok());
    std::vector<TensorToWrite> ts;
    for (const auto& [name, t] : f->header.tensors) {
      const uint8_t* p = static_cast<const uint8_t*>(f->Data(t));
      ts.push_back({name, t.dtype, t.shape, std::vector<uint8_t>(p, p + (t.end - t.begin))});
    }
    edit(ts);
    f->file.reset();
    ASSERT_TRUE(WriteSafetensors(model_ + "/model.safetensors", ts).ok());
  }
  void ExpectError(StatusCode code, const std::string& needle) {
    auto w = Load();
    ASSERT_FALSE(w.ok()) << "loaded although it should not";
    EXPECT_EQ(w.status().code(), code) << w.status().ToString();
    EXPECT_NE(w.status().message().find(needle), std::string::npos) << w.status().message();
  }
  TempDir dir_;
  std::string model_;
};

TEST_F(LoadTest, LoadsTheTinyModelWithViewsOfTheRightShapes) {
  auto w = Load();
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  const ModelConfig& c = (*w)->config();
  EXPECT_EQ((*w)->layers().size(), 2u);
  EXPECT_EQ((*w)->layers()[1].k.rows, c.num_kv_heads * c.head_dim);
  EXPECT_EQ((*w)->lm_head().rows, c.vocab_size);
}

TEST_F(LoadTest, MissingDirectoryAndMissingWeightsAreNotFound) {
  auto a = ModelWeights::Load(dir_.path() + "/nope");
  EXPECT_EQ(a.status().code(), StatusCode::kNotFound);
  std::filesystem::remove(model_ + "/model.safetensors");
  ExpectError(StatusCode::kNotFound, "no model.safetensors");
}

TEST_F(LoadTest, TruncatedFileIsDataLossNamingTheTensor) {
  const std::string bytes = ReadFileOrEmpty(model_ + "/model.safetensors");
  WriteFile(model_ + "/model.safetensors", bytes.substr(0, bytes.size() - 100));
  ExpectError(StatusCode::kDataLoss, "\"model.norm.weight\" ends at byte");  // last in the file
}

TEST_F(LoadTest, OversizedHeaderLengthIsRejected) {
  std::string bytes = ReadFileOrEmpty(model_ + "/model.safetensors");
  bytes[6] = 0x7f;
  WriteFile(model_ + "/model.safetensors", bytes);
  ExpectError(StatusCode::kInvalidArgument, "exceeds the limit");
}

TEST_F(LoadTest, WrongShapeNamesTheTensorAndBothShapes) {
  Rewrite([](std::vector<TensorToWrite>& ts) {
    for (auto& t : ts) {
      if (t.name == "model.layers.0.mlp.up_proj.weight") t.shape = {64, 128};
    }
  });
  ExpectError(StatusCode::kInvalidArgument,
              "\"model.layers.0.mlp.up_proj.weight\" has shape [64, 128], config needs [128, 64]");
}

TEST_F(LoadTest, MissingAndExtraTensorsAreNamed) {
  Rewrite([](std::vector<TensorToWrite>& ts) {
    std::erase_if(ts, [](const TensorToWrite& t) { return t.name == "model.norm.weight"; });
  });
  ExpectError(StatusCode::kInvalidArgument, "missing tensor \"model.norm.weight\"");
  ASSERT_TRUE(WriteTinyModel(SmallOptions(), {}, model_).ok());
  Rewrite([](std::vector<TensorToWrite>& ts) {
    ts.push_back({"model.layers.7.mlp.extra", DType::kF32, {1}, std::vector<uint8_t>(4, 0)});
  });
  ExpectError(StatusCode::kInvalidArgument, "unexpected tensor \"model.layers.7.mlp.extra\"");
}

TEST_F(LoadTest, UnsupportedDtypeNamesTheTensor) {
  std::string bytes = ReadFileOrEmpty(model_ + "/model.safetensors");
  const size_t entry = bytes.find("\"model.norm.weight\":{");
  ASSERT_NE(entry, std::string::npos);
  const size_t at = bytes.find("\"dtype\":\"F32\"", entry);
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at + 9, 3, "I32");
  WriteFile(model_ + "/model.safetensors", bytes);
  ExpectError(StatusCode::kInvalidArgument, "\"model.norm.weight\" has unsupported dtype \"I32\"");
}

TEST_F(LoadTest, UnknownModelTypeIsRejected) {
  std::string cfg = ReadFileOrEmpty(model_ + "/config.json");
  const size_t at = cfg.find("\"llama\"");
  ASSERT_NE(at, std::string::npos);
  cfg.replace(at, 7, "\"falcon\"");
  WriteFile(model_ + "/config.json", cfg);
  ExpectError(StatusCode::kInvalidArgument, "unsupported model_type \"falcon\"");
}

TEST_F(LoadTest, ShardedCheckpointLoadsWithTheSameFingerprintAndWeights) {
  auto single = Load();
  ASSERT_TRUE(single.ok());
  const std::string fp = (*single)->fingerprint();
  std::vector<float> norm((*single)->layers()[1].post_norm.cols);
  kernels::ConvertToF32((*single)->layers()[1].post_norm.data, DType::kF32, norm.size(),
                        norm.data());
  single->reset();
  // Split into two shards by layer and write the index.
  auto f = OpenSafetensors(model_ + "/model.safetensors");
  ASSERT_TRUE(f.ok());
  std::vector<TensorToWrite> s1, s2;
  nlohmann::json wm = nlohmann::json::object();
  for (const auto& [name, t] : f->header.tensors) {
    const uint8_t* p = static_cast<const uint8_t*>(f->Data(t));
    TensorToWrite tw{name, t.dtype, t.shape, std::vector<uint8_t>(p, p + (t.end - t.begin))};
    const bool second = name.starts_with("model.layers.1.") || name == "lm_head.weight";
    (second ? s2 : s1).push_back(std::move(tw));
    wm[name] = second ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
  }
  f->file.reset();
  ASSERT_TRUE(WriteSafetensors(model_ + "/model-00001-of-00002.safetensors", s1).ok());
  ASSERT_TRUE(WriteSafetensors(model_ + "/model-00002-of-00002.safetensors", s2).ok());
  WriteFile(model_ + "/model.safetensors.index.json",
            nlohmann::json{{"metadata", nlohmann::json::object()}, {"weight_map", wm}}.dump());
  std::filesystem::remove(model_ + "/model.safetensors");
  auto sharded = Load();
  ASSERT_TRUE(sharded.ok()) << sharded.status().ToString();
  EXPECT_EQ((*sharded)->fingerprint(), fp);
  std::vector<float> norm2(norm.size());
  kernels::ConvertToF32((*sharded)->layers()[1].post_norm.data, DType::kF32, norm2.size(),
                        norm2.data());
  EXPECT_EQ(norm, norm2);
  // An index naming a tensor no shard has is an error naming it.
  wm["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors";
  WriteFile(model_ + "/model.safetensors.index.json", nlohmann::json{{"weight_map", wm}}.dump());
  ExpectError(StatusCode::kInvalidArgument, "model.layers.9.mlp.up_proj.weight");
}

}  // namespace
}  // namespace ragserve::engine
