// LoadModelDir exposes the model's chat template (tokenizer_config.json) beside the weights and
// tokenizer, and a template it cannot use never stops the model from loading.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "services/ctxcache/ape_encoder.h"
#include "services/engine/chat_template.h"
#include "services/engine/tiny_model.h"
#include "tests/support/process.h"

namespace ragserve::ctxcache {
namespace {

std::string SourceDir() {
  const char* src = std::getenv("RAGSERVE_SOURCE_DIR");
  return src != nullptr ? src : ".";
}

class LoadModelDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("load_model_dir") + "/model";
    engine::TinyModelOptions o;
    o.num_layers = 1;
    o.hidden_size = 64;
    o.num_heads = 4;
    o.num_kv_heads = 2;
    o.intermediate_size = 128;
    o.vocab_size = 300;
    ASSERT_TRUE(engine::WriteTinyModel(o, {"a small corpus for a small tokenizer"}, dir_).ok());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(LoadModelDirTest, NoTokenizerConfigMeansNoChatTemplate) {
  auto mt = LoadModelDir(dir_, "--model");
  ASSERT_TRUE(mt.ok()) << mt.status().ToString();
  EXPECT_NE(mt->model, nullptr);
  EXPECT_EQ(mt->chat_template, nullptr);
}

TEST_F(LoadModelDirTest, ExposesTheModelsChatTemplate) {
  std::filesystem::copy_file(SourceDir() + "/tests/engine/chat_templates/qwen2-instruct.json",
                             dir_ + "/tokenizer_config.json");
  auto mt = LoadModelDir(dir_, "--model");
  ASSERT_TRUE(mt.ok()) << mt.status().ToString();
  ASSERT_NE(mt->chat_template, nullptr);
  EXPECT_EQ(mt->chat_template->eos_token(), "<|im_end|>");
  nlohmann::ordered_json conv =
      nlohmann::ordered_json::array({{{"role", "user"}, {"content", "Hi"}}});
  EXPECT_EQ(mt->chat_template->Render(conv, true).value(),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi"
            "<|im_end|>\n<|im_start|>assistant\n");
}

TEST_F(LoadModelDirTest, UnusableTemplateStillLoadsTheModel) {
  std::ofstream(dir_ + "/tokenizer_config.json")
      << R"({"chat_template": "{% macro m() %}{% endmacro %}"})";
  auto mt = LoadModelDir(dir_, "--model");
  ASSERT_TRUE(mt.ok()) << mt.status().ToString();
  EXPECT_NE(mt->model, nullptr);
  EXPECT_EQ(mt->chat_template, nullptr);
}

}  // namespace
}  // namespace ragserve::ctxcache
