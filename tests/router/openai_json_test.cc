// OpenAI request parsing and response shapes (services/router/openai_json.h): what reaches the
// RagService from each field, the 400/404 errors naming the field, and the objects SDKs expect.
#include "services/router/openai_json.h"

#include <gtest/gtest.h>

#include <string>

namespace ragserve::router::openai {
namespace {

using json = nlohmann::json;

const ModelNames kModels = {"m"};

json Chat() { return {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}}; }

ApiError ChatError(const json& body) {
  GenerationCall call;
  ApiError err;
  EXPECT_FALSE(ParseChatRequest(body.dump(), kModels, &call, &err)) << body.dump();
  return err;
}

TEST(OpenAiJsonTest, ChatFieldsReachTheQuery) {
  json body = Chat();
  body["messages"] = {
      {{"role", "developer"}, {"content", "be brief"}},
      {{"role", "user"},
       {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}},
      {{"role", "assistant"}, {"content", nullptr}}};
  body["max_completion_tokens"] = 7;
  body["temperature"] = 0.5;
  body["top_p"] = 0.9;
  body["seed"] = -1;
  body["stop"] = "\n";
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  body["rag"] = {
      {"collection", "docs"}, {"top_k", 3}, {"filter", {{"topic", "rivers"}, {"year", 3}}}};
  body["some_future_field"] = {1, 2};  // unknown fields are ignored
  GenerationCall call;
  ApiError err;
  ASSERT_TRUE(ParseChatRequest(body.dump(), kModels, &call, &err)) << err.message;
  const v1::QueryRequest& q = call.query;
  ASSERT_EQ(q.messages_size(), 3);
  EXPECT_EQ(q.messages(0).role(), "system");
  EXPECT_EQ(q.messages(1).content(), "a\nb");
  EXPECT_EQ(q.messages(2).content(), "");
  EXPECT_EQ(q.sampling().max_tokens(), 7);
  EXPECT_FLOAT_EQ(q.sampling().temperature(), 0.5f);
  EXPECT_FLOAT_EQ(q.sampling().top_p(), 0.9f);
  EXPECT_EQ(q.sampling().seed(), ~uint64_t{0});
  ASSERT_EQ(q.sampling().stop_size(), 1);
  EXPECT_EQ(q.sampling().stop(0), "\n");
  EXPECT_TRUE(call.stream && call.include_usage && call.rag);
  EXPECT_EQ(q.collection(), "docs");
  EXPECT_EQ(q.top_k(), 3);
  EXPECT_EQ(q.filter().equals().at("topic"), "\"rivers\"");
  EXPECT_EQ(q.filter().equals().at("year"), "3");
}

TEST(OpenAiJsonTest, WrongTypesAndUnsupportedFeaturesName400Fields) {
  struct Case {
    const char* field;
    json value;
    std::string param;
  };
  const Case cases[] = {
      {"messages", "hi", "messages"},
      {"messages", json::array(), "messages"},
      {"max_tokens", "5", "max_tokens"},
      {"max_tokens", 0, "max_tokens"},
      {"temperature", 3, "temperature"},
      {"top_p", "x", "top_p"},
      {"seed", 1.5, "seed"},
      {"stop", json::array({"a", 1}), "stop"},
      {"n", 2, "n"},
      {"stream", "yes", "stream"},
      {"stream_options", {{"include_usage", 1}}, "stream_options.include_usage"},
      {"logprobs", true, "logprobs"},
      {"tools", json::array({{{"type", "function"}}}), "tools"},
      {"rag", {{"top_k", 1}}, "rag.collection"},
      {"rag", {{"collection", "c"}, {"filter", {{"k", json::array({1})}}}}, "rag.filter"},
  };
  for (const Case& c : cases) {
    json body = Chat();
    body[c.field] = c.value;
    const ApiError err = ChatError(body);
    EXPECT_EQ(err.http_status, 400) << body.dump();
    EXPECT_EQ(err.param, c.param) << body.dump() << ": " << err.message;
    EXPECT_FALSE(err.message.empty());
  }
  json bad_role = Chat();
  bad_role["messages"][0].erase("role");
  EXPECT_EQ(ChatError(bad_role).param, "messages[0].role");
  EXPECT_EQ(ChatError(json::array()).http_status, 400);
  GenerationCall call;
  ApiError err;
  EXPECT_FALSE(ParseChatRequest("{\"model\": \"m\",", kModels, &call, &err));
  EXPECT_EQ(err.http_status, 400);
}

TEST(OpenAiJsonTest, UnknownModelIs404ModelNotFound) {
  json body = Chat();
  body["model"] = "gpt-4";
  const ApiError err = ChatError(body);
  EXPECT_EQ(err.http_status, 404);
  EXPECT_EQ(err.code, "model_not_found");
  body.erase("model");
  EXPECT_EQ(ChatError(body).http_status, 400);
}

TEST(OpenAiJsonTest, CompletionTakesOneRawPromptAndNoRag) {
  GenerationCall call;
  ApiError err;
  ASSERT_TRUE(ParseCompletionRequest(R"({"model": "m", "prompt": ["Once"], "max_tokens": 3})",
                                     kModels, &call, &err))
      << err.message;
  EXPECT_EQ(call.query.prompt(), "Once");
  EXPECT_EQ(call.query.messages_size(), 0);
  EXPECT_FALSE(
      ParseCompletionRequest(R"({"model": "m", "prompt": ["a", "b"]})", kModels, &call, &err));
  EXPECT_EQ(err.param, "prompt");
  EXPECT_FALSE(ParseCompletionRequest(R"({"model": "m", "prompt": [1, 2]})", kModels, &call, &err));
  EXPECT_FALSE(ParseCompletionRequest(
      R"({"model": "m", "prompt": "a", "rag": {"collection": "c"}})", kModels, &call, &err));
  EXPECT_EQ(err.param, "rag");
}

TEST(OpenAiJsonTest, ErrorsMapStatusCodesToHttp) {
  EXPECT_EQ(ErrorFromStatus(InvalidArgument("x")).http_status, 400);
  EXPECT_EQ(ErrorFromStatus(NotFound("x")).http_status, 404);
  EXPECT_EQ(ErrorFromStatus(ResourceExhausted("x")).http_status, 429);
  EXPECT_EQ(ErrorFromStatus(Unavailable("x")).http_status, 503);
  EXPECT_EQ(ErrorFromStatus(Unauthenticated("x")).http_status, 401);
  const json body = json::parse(ErrorBody(ErrorFromStatus(Unavailable("no worker"))));
  EXPECT_EQ(body["error"]["message"], "no worker");
  EXPECT_EQ(body["error"]["type"], "server_error");
  EXPECT_TRUE(body["error"]["param"].is_null());
}

TEST(OpenAiJsonTest, ResponsesHaveTheOpenAiShape) {
  v1::QueryStats stats;
  stats.set_prompt_tokens(10);
  stats.set_generated_tokens(4);
  stats.set_finish_reason("eos");
  const ResponseMeta meta{"chatcmpl-1", 123, "m"};
  const json c = ChatCompletion(meta, "hello", stats, nullptr);
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["choices"][0]["message"]["content"], "hello");
  EXPECT_EQ(c["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(c["usage"]["total_tokens"], 14);
  EXPECT_FALSE(c.contains("rag"));
  const json chunk = ChatChunk(meta, {{"content", "he"}}, "");
  EXPECT_EQ(chunk["object"], "chat.completion.chunk");
  EXPECT_TRUE(chunk["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(UsageChunk(meta, "chat.completion.chunk", stats)["choices"].size(), 0u);
  v1::RetrievedPassages ps;
  auto* p = ps.add_passages();
  p->set_id("d1");
  p->set_text("t");
  p->set_metadata_json(R"({"topic": "rivers"})");
  EXPECT_EQ(RagJson(ps)["passages"][0]["metadata"]["topic"], "rivers");
  EmbeddingCall call;
  call.model = "docs";
  call.base64 = true;
  v1::EmbedResponse er;
  er.add_embeddings()->add_vector(1.0f);  // 00 00 80 3f
  EXPECT_EQ(EmbeddingList(call, er)["data"][0]["embedding"], "AACAPw==");
}

}  // namespace
}  // namespace ragserve::router::openai
