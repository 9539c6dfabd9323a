// make-tiny-model's library: a complete, loadable, deterministic HF-layout model directory.
#include "services/engine/tiny_model.h"

#include <cstdlib>
#include <fstream>

#include "gtest/gtest.h"
#include "services/engine/generate.h"
#include "services/engine/tokenizer.h"
#include "tests/engine/engine_test_util.h"
#include "tests/support/process.h"

namespace ragserve::engine {
namespace {

using ragserve::testing::ReadFileOrEmpty;

std::string CorpusPath() {
  const char* src = std::getenv("RAGSERVE_SOURCE_DIR");
  return std::string(src != nullptr ? src : ".") + "/data/corpus/passages.jsonl";
}

TEST(TinyModelTest, WritesALoadableModelWithATokenizerTrainedOnTheCorpus) {
  auto texts = ReadCorpusTexts(CorpusPath());
  ASSERT_TRUE(texts.ok()) << texts.status().ToString();
  ASSERT_GE(texts->size(), 100u);
  testing::TempDir dir;
  TinyModelOptions o = testing::SmallOptions();
  o.vocab_size = 400;
  ASSERT_TRUE(WriteTinyModel(o, *texts, dir.path() + "/m").ok());
  auto tok = Tokenizer::FromFile(dir.path() + "/m/tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_EQ((*tok)->vocab_size(), 400);
  EXPECT_EQ((*tok)->bos_id(), 0);
  EXPECT_EQ((*tok)->eos_id(), 1);
  auto m = Model::Load(dir.path() + "/m");
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ((*m)->config().bos_token_id, 0);
  EXPECT_EQ((*m)->config().eos_token_ids, std::vector<int32_t>{1});
  EXPECT_EQ((*m)->config().vocab_size, 400);
  // Text in, text out through the whole stack.
  const std::vector<int32_t> ids = (*tok)->Encode("The lighthouse keeper", /*add_bos=*/true);
  ASSERT_GT(ids.size(), 1u);
  EXPECT_EQ(ids[0], 0);
  GenerateOptions go;
  go.stop.max_tokens = 8;
  go.stop.eos_ids = {-1};
  auto r = Generate(**m, tok->get(), ids, go);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->tokens.size(), 8u);
  EXPECT_EQ(r->text, (*tok)->Decode(r->tokens));
}

TEST(TinyModelTest, SameSeedSameBytesOtherSeedOtherWeights) {
  testing::TempDir dir;
  TinyModelOptions o = testing::SmallOptions();
  ASSERT_TRUE(WriteTinyModel(o, {}, dir.path() + "/a").ok());
  ASSERT_TRUE(WriteTinyModel(o, {}, dir.path() + "/b").ok());
  o.seed = 6;
  ASSERT_TRUE(WriteTinyModel(o, {}, dir.path() + "/c").ok());
  const std::string a = ReadFileOrEmpty(dir.path() + "/a/model.safetensors");
  EXPECT_GT(a.size(), 100000u);
  EXPECT_EQ(a, ReadFileOrEmpty(dir.path() + "/b/model.safetensors"));
  EXPECT_NE(a, ReadFileOrEmpty(dir.path() + "/c/model.safetensors"));
  EXPECT_EQ(ReadFileOrEmpty(dir.path() + "/a/config.json"),
            ReadFileOrEmpty(dir.path() + "/c/config.json"));
}

TEST(TinyModelTest, RejectsInconsistentSizesByName) {
  testing::TempDir dir;
  TinyModelOptions o = testing::SmallOptions();
  o.num_kv_heads = 3;
  Status s = WriteTinyModel(o, {}, dir.path() + "/x");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("num_kv_heads 3"), std::string::npos) << s.message();
  o = testing::SmallOptions();
  o.model_type = "gpt2";
  EXPECT_NE(WriteTinyModel(o, {}, dir.path() + "/x").message().find("gpt2"), std::string::npos);
  EXPECT_EQ(ReadCorpusTexts(dir.path() + "/none.jsonl").status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace ragserve::engine
