// The BERT encoder's contract beyond the numpy reference (tests/engine/bert_ref_test.py): config,
// pooling and tokenizer parsing errors, malformed checkpoints rejected with a clear error, batch
// invariance, normalisation, and the RefOps/FastOps backends agreeing.
#include "services/engine/bert.h"

#include <cmath>
#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "services/engine/safetensors.h"
#include "services/engine/tiny_bert.h"
#include "tests/engine/engine_test_util.h"

namespace ragserve::engine {
namespace {

using testing::TempDir;

constexpr char kGoodConfig[] = R"({"model_type": "bert", "vocab_size": 100, "hidden_size": 32,
  "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
  "max_position_embeddings": 64, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
  "hidden_act": "gelu"})";

std::string WithKey(const std::string& key, const std::string& value) {
  auto j = nlohmann::json::parse(kGoodConfig);
  j[key] = nlohmann::json::parse(value);
  return j.dump();
}

TEST(BertConfigTest, ParsesSizes) {
  auto c = ParseBertConfig(kGoodConfig);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->num_layers, 2);
  EXPECT_EQ(c->max_position_embeddings, 64);
}

TEST(BertConfigTest, RejectsBadValuesNamingTheKey) {
  struct Case {
    std::string key, value, expect;
  };
  for (const Case& c : std::vector<Case>{
           {"hidden_size", "30", "multiple of num_attention_heads"},
           {"hidden_act", "\"relu\"", "hidden_act"},
           {"model_type", "\"llama\"", "model_type"},
           {"vocab_size", "-3", "vocab_size"},
           {"num_hidden_layers", "100000", "num_hidden_layers"},
           {"intermediate_size", "\"64\"", "intermediate_size"},
           {"layer_norm_eps", "-1", "layer_norm_eps"},
           {"max_position_embeddings", "1e30", "max_position_embeddings"},
           {"position_embedding_type", "\"relative_key\"", "position_embedding_type"}}) {
    auto r = ParseBertConfig(WithKey(c.key, c.value));
    ASSERT_FALSE(r.ok()) << c.key << "=" << c.value;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.expect), std::string::npos) << r.status().ToString();
  }
  EXPECT_FALSE(ParseBertConfig("not json").ok());
  EXPECT_FALSE(ParseBertConfig("[1, 2]").ok());
  EXPECT_FALSE(ParseBertConfig(R"({"hidden_size": 32})").ok());
}

TEST(BertConfigTest, PoolingConfig) {
  EXPECT_EQ(*ParsePoolingConfig(R"({"pooling_mode_cls_token": true})"), Pooling::kCls);
  EXPECT_EQ(
      *ParsePoolingConfig(R"({"pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true})"),
      Pooling::kMean);
  EXPECT_FALSE(ParsePoolingConfig(R"({"pooling_mode_max_tokens": true})").ok());
  EXPECT_FALSE(ParsePoolingConfig(R"({})").ok());
  EXPECT_FALSE(
      ParsePoolingConfig(R"({"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true})")
          .ok());
  EXPECT_FALSE(ParsePoolingName("max").ok());
}

TEST(WordPieceTest, GreedyLongestMatchWithContinuations) {
  auto t = WordPieceTokenizer::FromJson(R"({"normalizer": {"type": "BertNormalizer"},
    "pre_tokenizer": {"type": "BertPreTokenizer"},
    "model": {"type": "WordPiece", "unk_token": "[UNK]", "max_input_chars_per_word": 10,
              "vocab": {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "un": 3, "##aff": 4, "##able": 5,
                        "!": 6, "cafe": 7, "##a": 8}}})");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  // "unaffable" -> un ##aff ##able; "Café!" -> cafe ! (accent stripped, lowercased);
  // "unx" has no match for "x" -> [UNK]; an 11-character word -> [UNK].
  EXPECT_EQ((*t)->Encode("UnAffable Café! unx aaaaaaaaaaa", 64),
            (std::vector<int32_t>{1, 3, 4, 5, 7, 6, 0, 0, 2}));
  // Truncation keeps [CLS] first and [SEP] last.
  EXPECT_EQ((*t)->Encode("unaffable unaffable", 4), (std::vector<int32_t>{1, 3, 4, 2}));
  EXPECT_EQ((*t)->Encode("", 8), (std::vector<int32_t>{1, 2}));
}

TEST(WordPieceTest, RejectsMalformedTokenizers) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{", "not a JSON object"},
      {R"({"model": {"type": "BPE", "vocab": {}}})", "WordPiece"},
      {R"({"model": {"type": "WordPiece", "vocab": {"[CLS]": 0, "[SEP]": 1}}})", "unk"},
      {R"({"model": {"type": "WordPiece", "vocab": {"[UNK]": 0, "[SEP]": 1}}})", "[CLS]"},
      {R"({"model": {"type": "WordPiece", "vocab": {"[UNK]": 0, "[CLS]": 0, "[SEP]": 1}}})",
       "repeats"},
      {R"({"model": {"type": "WordPiece", "vocab": {"[UNK]": -1}}})", "outside"},
      {R"({"model": {"type": "WordPiece", "vocab": {"[UNK]": 99999999999}}})", "outside"},
      {R"({"model": {"type": "WordPiece", "vocab": {"[UNK]": "0"}}})", "integer"},
      {R"({"normalizer": {"type": "NFC"}, "model": {"type": "WordPiece", "vocab": {}}})",
       "normalizer"},
  };
  for (const auto& [json, expect] : cases) {
    auto t = WordPieceTokenizer::FromJson(json);
    ASSERT_FALSE(t.ok()) << json;
    EXPECT_NE(t.status().message().find(expect), std::string::npos) << t.status().ToString();
  }
}

class BertEncoderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_.path() + "/bert";
    ASSERT_TRUE(WriteTinyBert(TinyBertOptions{}, dir_).ok());
  }
  TempDir tmp_;
  std::string dir_;
};

TEST_F(BertEncoderTest, EmbeddingsAreUnitLengthAndBatchInvariant) {
  BertEncoderOptions o;
  o.batch_tokens = 7;  // several forward passes
  auto e = BertEncoder::Load(dir_, o);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  const int d = (*e)->dim();
  EXPECT_EQ(d, 32);
  EXPECT_EQ((*e)->pooling(), Pooling::kMean);
  const std::vector<std::string> texts = {"the river", "a bridge of light", "island",
                                          "the light of the island river bridge"};
  std::vector<float> all(texts.size() * d);
  ASSERT_TRUE((*e)->Encode(texts, all.data()).ok());
  for (size_t i = 0; i < texts.size(); ++i) {
    std::vector<float> one(d);
    ASSERT_TRUE((*e)->Encode({texts[i]}, one.data()).ok());
    double norm = 0;
    for (int j = 0; j < d; ++j) {
      EXPECT_NEAR(one[j], all[i * d + j], 1e-5) << texts[i];
      norm += one[j] * one[j];
    }
    EXPECT_NEAR(norm, 1.0, 1e-5);
  }
  // Different texts embed differently.
  float dot = 0;
  for (int j = 0; j < d; ++j) dot += all[j] * all[d + j];
  EXPECT_LT(dot, 0.999f);
}

TEST_F(BertEncoderTest, RefAndFastBackendsAgree) {
  BertEncoderOptions ref, fast;
  ref.ops = &kernels::RefOps();
  fast.ops = &kernels::FastOps();
  fast.pooling = Pooling::kCls;
  ref.pooling = Pooling::kCls;
  auto a = BertEncoder::Load(dir_, ref);
  auto b = BertEncoder::Load(dir_, fast);
  ASSERT_TRUE(a.ok() && b.ok());
  const std::vector<std::string> texts = {"the river bridge", std::string(200, 'a')};
  std::vector<float> ea(2 * 32), eb(2 * 32);
  ASSERT_TRUE((*a)->Encode(texts, ea.data()).ok());
  ASSERT_TRUE((*b)->Encode(texts, eb.data()).ok());
  for (size_t j = 0; j < ea.size(); ++j) EXPECT_NEAR(ea[j], eb[j], 1e-4);
}

TEST_F(BertEncoderTest, PoolingFileAndOverride) {
  TinyBertOptions o;
  o.pooling_file = "cls";
  const std::string cls_dir = tmp_.path() + "/cls";
  ASSERT_TRUE(WriteTinyBert(o, cls_dir).ok());
  auto e = BertEncoder::Load(cls_dir);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ((*e)->pooling(), Pooling::kCls);
  BertEncoderOptions mean;
  mean.pooling = Pooling::kMean;
  auto m = BertEncoder::Load(cls_dir, mean);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)->pooling(), Pooling::kMean);
}

TEST_F(BertEncoderTest, LongTextsAreTruncatedToMaxLength) {
  BertEncoderOptions o;
  o.max_length = 10;
  auto e = BertEncoder::Load(dir_, o);
  ASSERT_TRUE(e.ok());
  std::string long_text;
  for (int i = 0; i < 100; ++i) long_text += "river ";
  EXPECT_EQ((*e)->Tokenize(long_text).size(), 10u);
  std::vector<float> v(32);
  EXPECT_TRUE((*e)->Encode({long_text}, v.data()).ok());
  // Ids beyond the vocabulary or sequences beyond max_length are refused, not read out of range.
  EXPECT_EQ((*e)->EncodeIds({{2, 100000, 3}}, v.data()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*e)->EncodeIds({std::vector<int32_t>(11, 5)}, v.data()).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ((*e)->EncodeIds({{}}, v.data()).code(), StatusCode::kInvalidArgument);
}

// Rewrites model.safetensors without `drop` and with `reshape` given a wrong shape.
void RewriteWeights(const std::string& dir, const std::string& drop, const std::string& reshape) {
  std::vector<TensorToWrite> out;
  {
    auto f = OpenSafetensors(dir + "/model.safetensors");
    ASSERT_TRUE(f.ok());
    for (const auto& [name, t] : f->header.tensors) {
      if (name == drop) continue;
      TensorToWrite w{name, t.dtype, t.shape, {}};
      const auto* p = static_cast<const uint8_t*>(f->Data(t));
      w.bytes.assign(p, p + (t.end - t.begin));
      if (name == reshape) {  // same bytes, transposed shape
        std::swap(w.shape[0], w.shape[1]);
      }
      out.push_back(std::move(w));
    }
  }  // unmapped before the file is overwritten
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", out).ok());
}

TEST_F(BertEncoderTest, MissingTensorIsNamed) {
  RewriteWeights(dir_, "encoder.layer.1.output.dense.bias", "");
  auto e = BertEncoder::Load(dir_);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("encoder.layer.1.output.dense.bias"), std::string::npos);
}

TEST_F(BertEncoderTest, WrongShapeIsNamed) {
  RewriteWeights(dir_, "", "encoder.layer.0.intermediate.dense.weight");
  auto e = BertEncoder::Load(dir_);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("intermediate.dense.weight\" has shape [32, 64]"),
            std::string::npos)
      << e.status().ToString();
}

TEST_F(BertEncoderTest, TruncatedWeightsAreDataLoss) {
  const std::string p = dir_ + "/model.safetensors";
  std::filesystem::resize_file(p, std::filesystem::file_size(p) - 100);
  auto e = BertEncoder::Load(dir_);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kDataLoss) << e.status().ToString();
}

TEST_F(BertEncoderTest, TokenizerBeyondVocabIsRefused) {
  auto cfg = nlohmann::json::parse(std::ifstream(dir_ + "/config.json"));
  cfg["vocab_size"] = 20;  // the tokenizer has more ids
  std::ofstream(dir_ + "/config.json") << cfg.dump();
  auto e = BertEncoder::Load(dir_);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("beyond the model's vocab_size 20"), std::string::npos)
      << e.status().ToString();
}

TEST_F(BertEncoderTest, MissingFilesAreNotFound) {
  EXPECT_EQ(BertEncoder::Load(tmp_.path() + "/nope").status().code(), StatusCode::kNotFound);
  std::filesystem::remove(dir_ + "/tokenizer.json");
  EXPECT_EQ(BertEncoder::Load(dir_).status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace ragserve::engine
