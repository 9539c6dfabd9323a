// Chat requests on a decode worker (services/decoder/chat_prompt.h, DecoderService::MakeJob): a
// model with a chat template gets the conversation rendered with it, passages in a system message
// (or before the last user message); a model without one (like the trained demo reader) keeps the
// RAG prompt it was trained on, so a chat equals the same question asked plainly.
#include "services/decoder/chat_prompt.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "services/decoder/decoder_service.h"
#include "services/engine/tokenizer.h"
#include "services/engine/tokenizer_config.h"
#include "tests/support/process.h"

namespace ragserve::decoder {
namespace {

namespace fs = std::filesystem;

google::protobuf::RepeatedPtrField<v1::ChatMessage> Messages(
    const std::vector<std::pair<std::string, std::string>>& turns) {
  google::protobuf::RepeatedPtrField<v1::ChatMessage> out;
  for (const auto& [role, content] : turns) {
    auto* m = out.Add();
    m->set_role(role);
    m->set_content(content);
  }
  return out;
}

TEST(ChatConversationTest, PassagesBecomeAFirstSystemMessage) {
  RagChatOptions opts;
  auto conv = ChatConversation(Messages({{"user", "Where?"}}), {"P one.", "P two."}, opts);
  ASSERT_TRUE(conv.ok()) << conv.status().ToString();
  ASSERT_EQ(conv->size(), 2u);
  EXPECT_EQ((*conv)[0]["role"], "system");
  EXPECT_EQ((*conv)[0]["content"], std::string(kRagPrefix) + "P one.\n\nP two.\n\n");
  EXPECT_EQ((*conv)[1]["content"], "Where?");
}

TEST(ChatConversationTest, AnExistingSystemMessageGetsThePassagesAppended) {
  RagChatOptions opts;
  opts.instruction = "Context:\n";
  auto conv = ChatConversation(Messages({{"system", "Be brief."}, {"user", "Q"}}), {"P"}, opts);
  ASSERT_TRUE(conv.ok());
  ASSERT_EQ(conv->size(), 2u);
  EXPECT_EQ((*conv)[0]["content"], "Be brief.\n\nContext:\nP\n\n");
}

TEST(ChatConversationTest, UserRolePutsPassagesBeforeTheLastUserMessage) {
  RagChatOptions opts;
  opts.role = "user";
  auto conv = ChatConversation(
      Messages({{"user", "first"}, {"assistant", "ok"}, {"user", "second"}}), {"P"}, opts);
  ASSERT_TRUE(conv.ok());
  ASSERT_EQ(conv->size(), 3u);
  EXPECT_EQ((*conv)[0]["content"], "first");
  EXPECT_EQ((*conv)[2]["content"], std::string(kRagPrefix) + "P\n\nsecond");
  EXPECT_FALSE(ChatConversation(Messages({{"system", "s"}}), {"P"}, opts).ok());
}

TEST(ChatConversationTest, WithoutPassagesTheConversationIsUnchanged) {
  auto conv = ChatConversation(Messages({{"user", "a"}, {"assistant", ""}}), {}, {});
  ASSERT_TRUE(conv.ok());
  EXPECT_EQ(conv->dump(), R"([{"role":"user","content":"a"},{"role":"assistant","content":""}])");
}

TEST(ChatConversationTest, BadMessagesAreInvalidArgument) {
  EXPECT_FALSE(CheckChatMessages(Messages({{"", "x"}})).ok());
  EXPECT_FALSE(CheckChatMessages(Messages({{"user", std::string(kMaxChatBytes, 'x')}})).ok());
  EXPECT_TRUE(CheckChatMessages(Messages({{"user", "x"}})).ok());
  EXPECT_FALSE(LastUserContent(Messages({{"system", "x"}})).ok());
  EXPECT_EQ(*LastUserContent(Messages({{"user", "a"}, {"user", "b"}, {"assistant", "c"}})), "b");
  RagChatOptions bad;
  bad.role = "tool";
  EXPECT_FALSE(CheckRagChatOptions(bad).ok());
}

// A tiny random model, with the chat template of a real model copied in when `template_file` is
// set (tests/engine/chat_templates/<file> holds that model's tokenizer_config.json fields).
class DecoderChatTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTempDir("decoder-chat"));
    std::string error;
    ASSERT_FALSE(testing::MakeTinyModel(*dir_, &error).empty()) << error;
  }
  static void TearDownTestSuite() { delete dir_; }

  static std::unique_ptr<DecoderService> Worker(const std::string& template_file,
                                                RagChatOptions rag = {}) {
    std::string model = *dir_ + "/model";
    if (!template_file.empty()) {
      model = *dir_ + "/model-" + template_file;
      if (!fs::exists(model)) {
        fs::copy(*dir_ + "/model", model, fs::copy_options::recursive);
        fs::copy_file(testing::SourceDir() + "/tests/engine/chat_templates/" + template_file,
                      model + "/tokenizer_config.json");
      }
    }
    DecoderOptions opts;
    opts.model_dir = model;
    opts.worker_id = "chat-test";
    opts.context_mode = "sequential";
    opts.rag_chat = std::move(rag);
    auto svc = DecoderService::Create(nullptr, opts);
    EXPECT_TRUE(svc.ok()) << svc.status().ToString();
    return svc.ok() ? std::move(*svc) : nullptr;
  }

  static v1::GenerateRequest Chat(const std::vector<std::pair<std::string, std::string>>& turns,
                                  const std::vector<std::string>& passages) {
    v1::GenerateRequest req;
    *req.mutable_messages() = Messages(turns);
    for (const auto& p : passages) req.add_passages()->set_text(p);
    req.mutable_sampling()->set_max_tokens(4);
    return req;
  }

  static std::vector<int32_t> Rendered(const std::string& template_file,
                                       const nlohmann::ordered_json& conv) {
    auto t = engine::LoadChatTemplate(*dir_ + "/model-" + template_file);
    EXPECT_TRUE(t.ok() && *t);
    auto text = (*t)->Render(conv, /*add_generation_prompt=*/true);
    EXPECT_TRUE(text.ok()) << text.status().ToString();
    auto tok = engine::Tokenizer::FromFile(*dir_ + "/model/tokenizer.json");
    return (*tok)->Encode(*text, /*add_bos=*/false, /*allow_special=*/true);
  }

  static std::string* dir_;
};
std::string* DecoderChatTest::dir_ = nullptr;

TEST_F(DecoderChatTest, TemplateModelRendersTheConversationWithPassagesInASystemMessage) {
  auto worker = Worker("qwen2-instruct.json");
  ASSERT_NE(worker, nullptr);
  auto job = worker->MakeJob(Chat({{"user", "How long is it?"}}, {"The river is 5 km."}));
  ASSERT_TRUE(job.ok()) << job.status().ToString();
  const nlohmann::ordered_json conv = nlohmann::ordered_json::array(
      {{{"role", "system"}, {"content", std::string(kRagPrefix) + "The river is 5 km.\n\n"}},
       {{"role", "user"}, {"content", "How long is it?"}}});
  EXPECT_EQ((*job)->prompt, Rendered("qwen2-instruct.json", conv));
  EXPECT_FALSE((*job)->ape.has_value());
}

TEST_F(DecoderChatTest, TemplateModelAsksAQuestionAsOneUserMessage) {
  auto worker = Worker("llama3-instruct.json");
  ASSERT_NE(worker, nullptr);
  v1::GenerateRequest req;
  req.set_question("How long is it?");
  req.add_passages()->set_text("The river is 5 km.");
  req.mutable_sampling()->set_max_tokens(4);
  auto job = worker->MakeJob(req);
  ASSERT_TRUE(job.ok()) << job.status().ToString();
  const nlohmann::ordered_json conv = nlohmann::ordered_json::array(
      {{{"role", "system"}, {"content", std::string(kRagPrefix) + "The river is 5 km.\n\n"}},
       {{"role", "user"}, {"content", "How long is it?"}}});
  EXPECT_EQ((*job)->prompt, Rendered("llama3-instruct.json", conv));
  // A raw prompt_override stays raw.
  v1::GenerateRequest raw;
  raw.set_prompt_override("Once upon");
  raw.mutable_sampling()->set_max_tokens(4);
  auto raw_job = worker->MakeJob(raw);
  ASSERT_TRUE(raw_job.ok());
  auto tok = engine::Tokenizer::FromFile(*dir_ + "/model/tokenizer.json");
  const std::vector<int32_t> text = (*tok)->Encode("Once upon");
  ASSERT_GE((*raw_job)->prompt.size(), text.size());
  EXPECT_TRUE(std::equal(text.rbegin(), text.rend(), (*raw_job)->prompt.rbegin()));
}

TEST_F(DecoderChatTest, RagChatRoleUserServesATemplateWithoutASystemRole) {
  auto refused = Worker("gemma-7b-it.json");
  ASSERT_NE(refused, nullptr);
  auto job = refused->MakeJob(Chat({{"user", "Q?"}}, {"P."}));
  ASSERT_FALSE(job.ok());
  EXPECT_NE(job.status().message().find("System role not supported"), std::string::npos)
      << job.status().message();
  RagChatOptions rag;
  rag.role = "user";
  auto worker = Worker("gemma-7b-it.json", rag);
  job = worker->MakeJob(Chat({{"user", "Q?"}}, {"P."}));
  ASSERT_TRUE(job.ok()) << job.status().ToString();
  const nlohmann::ordered_json conv = nlohmann::ordered_json::array(
      {{{"role", "user"}, {"content", std::string(kRagPrefix) + "P.\n\nQ?"}}});
  EXPECT_EQ((*job)->prompt, Rendered("gemma-7b-it.json", conv));
}

TEST_F(DecoderChatTest, ModelWithoutTemplateAnswersTheLastUserMessageLikeAQuestion) {
  auto worker = Worker("");
  ASSERT_NE(worker, nullptr);
  v1::GenerateRequest plain;
  plain.set_question("How long is it?");
  plain.add_passages()->set_text("The river is 5 km.");
  plain.mutable_sampling()->set_max_tokens(4);
  auto want = worker->MakeJob(plain);
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  auto job = worker->MakeJob(Chat({{"system", "ignored by the RAG prompt"},
                                   {"user", "earlier"},
                                   {"assistant", "reply"},
                                   {"user", "How long is it?"}},
                                  {"The river is 5 km."}));
  ASSERT_TRUE(job.ok()) << job.status().ToString();
  EXPECT_EQ((*job)->prompt, (*want)->prompt);
  EXPECT_FALSE(worker->MakeJob(Chat({{"system", "no user turn"}}, {})).ok());
}

TEST_F(DecoderChatTest, PromptOverrideAndMessagesAreExclusive) {
  auto worker = Worker("");
  ASSERT_NE(worker, nullptr);
  v1::GenerateRequest req = Chat({{"user", "q"}}, {});
  req.set_prompt_override("raw");
  auto job = worker->MakeJob(req);
  ASSERT_FALSE(job.ok());
  EXPECT_EQ(job.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ragserve::decoder
