// The router's OpenAI-compatible HTTP API on a real cluster (index, one decoder with the tiny
// model, router with --http-port), auth on everywhere: the official `openai` npm SDK drives chat
// completions (plain and RAG, streamed and not) and must get the same text as gRPC Query; curl
// shows the raw SSE framing; a client that disconnects mid-stream frees the decoder's sequence;
// bad requests get OpenAI error objects with the right status and the router keeps serving.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "httplib.h"
#include "ragserve/v1/decoder.grpc.pb.h"
#include "ragserve/v1/rag.grpc.pb.h"
#include "tests/e2e/cluster.h"

namespace ragserve {
namespace {

using json = nlohmann::json;

constexpr char kToken[] = "http-e2e-token";  // public: the router's clients
constexpr char kInternal[] = "http-e2e-internal";
constexpr char kAdmin[] = "http-e2e-admin";
constexpr char kModel[] = "tiny-reader";
constexpr char kQuestion[] = "How long is the Nawerk River in kilometres?";
constexpr int kMaxTokens = 12;
constexpr int kTopK = 2;

std::unique_ptr<grpc::ClientContext> AuthorizedCtx(const char* token = kToken) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  ctx->AddMetadata("authorization", std::string("Bearer ") + token);
  return ctx;
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

class OpenAiHttpE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = testing::MakeTempDir("openai-http-e2e");
    cluster_ = new testing::Cluster(dir);
    const std::string model = testing::Cluster::MakeModel(dir);
    ASSERT_FALSE(model.empty()) << "make-tiny-model failed";
    std::string err;
    const std::vector<std::string> auth = {"--internal-token", kInternal, "--admin-token", kAdmin};
    std::vector<std::string> args = {"--data-dir", dir + "/index-data"};
    args.insert(args.end(), auth.begin(), auth.end());
    ASSERT_TRUE(cluster_->Start("index", "index", args, &err)) << err;
    args = {"--model", model, "--worker-id", "decoder0"};
    args.insert(args.end(), auth.begin(), auth.end());
    ASSERT_TRUE(cluster_->Start("decoder", "decoder0", args, &err)) << err;
    http_port_ = testing::FreePort();
    args = {"--index-addr",        cluster_->Get("index")->addr(),
            "--decoders",          cluster_->Get("decoder0")->addr(),
            "--auth-token",        kToken,
            "--http-port",         std::to_string(http_port_),
            "--served-model-name", kModel};
    args.insert(args.end(), auth.begin(), auth.end());
    ASSERT_TRUE(cluster_->Start("router", "router", args, &err)) << err;
    auto ch = MakeChannel(cluster_->Get("router")->addr());
    ASSERT_TRUE(ch.ok());
    channel_ = new std::shared_ptr<grpc::Channel>(*ch);
    router_ = v1::RagService::NewStub(*ch).release();
    Ingest();
  }
  static void TearDownTestSuite() {
    delete router_;
    delete channel_;
    delete cluster_;
  }

  // The first 60 passages of the sample corpus into collection "docs".
  static void Ingest() {
    std::ifstream f(testing::SourceDir() + "/data/corpus/passages.jsonl");
    auto ctx = AuthorizedCtx(kAdmin);  // it creates the collection
    v1::IngestResponse resp;
    auto writer = router_->Ingest(ctx.get(), &resp);
    v1::IngestRequest req;
    req.set_collection("docs");
    req.mutable_create_spec()->set_name("docs");
    req.mutable_create_spec()->set_dimension(256);
    req.mutable_create_spec()->set_metric(v1::METRIC_COSINE);
    std::string line;
    for (int n = 0; n < 60 && std::getline(f, line); ++n) {
      auto j = json::parse(line);
      auto* d = req.add_documents();
      d->set_id(j["id"].get<std::string>());
      d->set_text(j["text"].get<std::string>());
    }
    ASSERT_TRUE(writer->Write(req));
    writer->WritesDone();
    const grpc::Status st = writer->Finish();
    ASSERT_TRUE(st.ok()) << st.error_message();
  }

  struct Answer {
    grpc::Status status;
    std::string text;
    std::vector<std::string> ids;
  };
  static Answer Query(const v1::QueryRequest& req) {
    auto ctx = AuthorizedCtx();
    auto reader = router_->Query(ctx.get(), req);
    Answer a;
    v1::QueryEvent ev;
    while (reader->Read(&ev)) {
      if (ev.has_delta()) a.text += ev.delta().text();
      for (const auto& p : ev.passages().passages()) a.ids.push_back(p.id());
    }
    a.status = reader->Finish();
    return a;
  }
  static v1::SamplingParams Greedy() {
    v1::SamplingParams sp;
    sp.set_max_tokens(kMaxTokens);
    sp.set_ignore_eos(true);
    return sp;
  }

  // Reads `read()` up to 200 times, `period` apart, until it returns `want`; the last value read.
  template <typename Read>
  static auto PollUntil(Read read, decltype(read()) want, std::chrono::milliseconds period) {
    auto got = read();
    for (int i = 0; i < 200 && got != want; ++i) {
      std::this_thread::sleep_for(period);
      got = read();
    }
    return got;
  }

  static int Active() {
    auto ch = MakeChannel(cluster_->Get("decoder0")->addr());
    auto stub = v1::DecoderService::NewStub(*ch);
    auto ctx = AuthorizedCtx(kInternal);
    v1::LoadReport load;
    if (!stub->GetLoad(ctx.get(), v1::LoadRequest(), &load).ok()) return -1;
    return load.active_sequences();
  }

  // The first sample on the decoder's /metrics page whose line starts with `prefix` and contains
  // every string of `parts`; `absent` when no line does, -1 when the page cannot be read.
  static double DecoderMetric(const std::string& prefix, const std::vector<std::string>& parts,
                              double absent) {
    std::string body;
    if (testing::HttpGet(cluster_->Get("decoder0")->metrics_port, "/metrics", &body) != 200) {
      return -1;
    }
    std::istringstream lines(body);
    for (std::string line; std::getline(lines, line);) {
      bool match = line.rfind(prefix, 0) == 0;
      for (const std::string& part : parts) match = match && line.find(part) != std::string::npos;
      if (match) return std::stod(line.substr(line.rfind(' ') + 1));
    }
    return absent;
  }

  // The decoder's count of Generate calls that ended CANCELLED (its gRPC request metric).
  static int CancelledGenerates() {
    return static_cast<int>(DecoderMetric("ragserve_grpc_requests_total{",
                                          {"DecoderService/Generate\"", "code=\"CANCELLED\""}, 0));
  }

  // The decoder's ragserve_num_requests_running gauge (its serving metrics); -1 when unreadable.
  static double RunningMetric() { return DecoderMetric("ragserve_num_requests_running{", {}, -1); }

  static httplib::Headers Auth() { return {{"Authorization", std::string("Bearer ") + kToken}}; }
  static json ChatBody(bool stream, int max_tokens = kMaxTokens) {
    return {{"model", kModel},          {"messages", {{{"role", "user"}, {"content", kQuestion}}}},
            {"max_tokens", max_tokens}, {"temperature", 0},
            {"ignore_eos", true},       {"stream", stream}};
  }
  std::string Url() const { return "http://127.0.0.1:" + std::to_string(http_port_); }

  static testing::Cluster* cluster_;
  static std::shared_ptr<grpc::Channel>* channel_;
  static v1::RagService::Stub* router_;
  static int http_port_;
};

testing::Cluster* OpenAiHttpE2eTest::cluster_ = nullptr;
std::shared_ptr<grpc::Channel>* OpenAiHttpE2eTest::channel_ = nullptr;
v1::RagService::Stub* OpenAiHttpE2eTest::router_ = nullptr;
int OpenAiHttpE2eTest::http_port_ = 0;

TEST_F(OpenAiHttpE2eTest, OfficialOpenAiSdkGetsTheGrpcAnswersPlainAndWithRag) {
  v1::QueryRequest plain;
  auto* m = plain.add_messages();
  m->set_role("user");
  m->set_content(kQuestion);
  *plain.mutable_sampling() = Greedy();
  const Answer want_plain = Query(plain);
  ASSERT_TRUE(want_plain.status.ok()) << want_plain.status.error_message();
  v1::QueryRequest rag;
  rag.set_collection("docs");
  rag.set_question(kQuestion);
  rag.set_top_k(kTopK);
  *rag.mutable_sampling() = Greedy();
  const Answer want_rag = Query(rag);
  ASSERT_TRUE(want_rag.status.ok()) << want_rag.status.error_message();
  ASSERT_FALSE(want_plain.text.empty());
  ASSERT_EQ(want_rag.ids.size(), static_cast<size_t>(kTopK));

  std::string ids;
  for (const auto& id : want_rag.ids) ids += (ids.empty() ? "" : ",") + id;
  const std::string node_dir = testing::SourceDir() + "/tests/clients/node";
  if (testing::RunCommand("command -v node", nullptr) != 0 ||
      testing::RunCommand("test -d " + ShellQuote(node_dir + "/node_modules/openai"), nullptr) !=
          0) {
    GTEST_SKIP() << "node or tests/clients/node/node_modules missing: run tools/setup-deps";
  }
  const std::string env = "RAGSERVE_HTTP_URL=" + ShellQuote(Url() + "/v1") +
                          " RAGSERVE_TOKEN=" + kToken + " RAGSERVE_MODEL=" + kModel +
                          " RAGSERVE_QUESTION=" + ShellQuote(kQuestion) +
                          " RAGSERVE_MAX_TOKENS=" + std::to_string(kMaxTokens) +
                          " RAGSERVE_EXPECT_PLAIN=" + ShellQuote(want_plain.text) +
                          " RAGSERVE_EXPECT_RAG=" + ShellQuote(want_rag.text) +
                          " RAGSERVE_EXPECT_IDS=" + ShellQuote(ids) +
                          " RAGSERVE_COLLECTION=docs RAGSERVE_TOP_K=" + std::to_string(kTopK);
  std::string out;
  const int rc = testing::RunCommand(
      "cd " + ShellQuote(node_dir) + " && " + env + " node --test openai_http.test.mjs 2>&1", &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("# pass 6"), std::string::npos) << "all six node tests ran:\n" << out;
}

TEST_F(OpenAiHttpE2eTest, CurlSeesServerSentEventsEndingWithDone) {
  v1::QueryRequest plain;
  auto* m = plain.add_messages();
  m->set_role("user");
  m->set_content(kQuestion);
  *plain.mutable_sampling() = Greedy();
  const Answer want = Query(plain);
  ASSERT_TRUE(want.status.ok());
  if (testing::RunCommand("command -v curl", nullptr) != 0) GTEST_SKIP() << "curl missing";
  std::string out;
  const int rc = testing::RunCommand(
      "curl -sS -N " + Url() + "/v1/chat/completions -H 'Authorization: Bearer " + kToken +
          "' -H 'Content-Type: application/json' -d " + ShellQuote(ChatBody(true).dump()),
      &out);
  ASSERT_EQ(rc, 0) << out;
  // Every event is "data: <payload>\n\n"; the last payload is [DONE]; the others are chunks.
  std::string text;
  size_t pos = 0, events = 0;
  std::string last;
  while (pos < out.size()) {
    ASSERT_EQ(out.compare(pos, 6, "data: "), 0) << "at byte " << pos << " of:\n" << out;
    const size_t end = out.find("\n\n", pos);
    ASSERT_NE(end, std::string::npos) << out;
    last = out.substr(pos + 6, end - pos - 6);
    ASSERT_EQ(last.find('\n'), std::string::npos) << "one line per event";
    if (last != "[DONE]") {
      const json chunk = json::parse(last);
      EXPECT_EQ(chunk["object"], "chat.completion.chunk");
      text += chunk["choices"][0]["delta"].value("content", "");
    }
    ++events;
    pos = end + 2;
  }
  EXPECT_EQ(last, "[DONE]");
  EXPECT_GE(events, 4u);
  EXPECT_EQ(text, want.text);
}

TEST_F(OpenAiHttpE2eTest, ClientThatDisconnectsMidStreamFreesTheSequence) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(http_port_));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const std::string body = ChatBody(true, 3000).dump();
  const std::string request =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: "
      "Bearer " +
      std::string(kToken) +
      "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
      "\r\n\r\n" + body;
  ASSERT_EQ(write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
  // Read until a few content chunks arrived: the answer is being generated.
  std::string got;
  char buf[4096];
  while (got.find("\"content\":\"", got.find("\"content\":\"") + 1) == std::string::npos) {
    const ssize_t n = read(fd, buf, sizeof(buf));
    ASSERT_GT(n, 0) << got;
    got.append(buf, static_cast<size_t>(n));
  }
  EXPECT_NE(got.find("200 OK"), std::string::npos) << got;
  // GetLoad and the running gauge are snapshots the decoder refreshes at the end of each decode
  // step, after that step's tokens went out: the first tokens can reach the client before the
  // snapshot counts their sequence (seen on a loaded machine: 0 right after two content chunks).
  ASSERT_EQ(PollUntil(Active, 1, std::chrono::milliseconds(10)), 1)
      << "the decoder should be generating the 3000-token answer";
  EXPECT_EQ(PollUntil(RunningMetric, 1.0, std::chrono::milliseconds(10)), 1);
  const int cancelled_before = CancelledGenerates();
  ASSERT_GE(cancelled_before, 0);
  close(fd);
  EXPECT_EQ(PollUntil(Active, 0, std::chrono::milliseconds(25)), 0)
      << "the decoder kept generating after the HTTP client went away";
  EXPECT_EQ(RunningMetric(), 0) << "ragserve_num_requests_running";
  // Freed by cancellation, not by finishing the answer: its Generate call ended CANCELLED.
  EXPECT_EQ(CancelledGenerates(), cancelled_before + 1);
}

TEST_F(OpenAiHttpE2eTest, BadRequestsGetOpenAiErrorsAndTheRouterKeepsServing) {
  httplib::Client http("127.0.0.1", http_port_);
  http.set_read_timeout(60);
  struct Case {
    std::string what;
    std::string body;
    int status;
    std::string param;
    bool auth = true;
  };
  json wrong_messages = ChatBody(false);
  wrong_messages["messages"] = "hello";
  json wrong_max = ChatBody(false);
  wrong_max["max_tokens"] = "12";
  json wrong_temp = ChatBody(false);
  wrong_temp["temperature"] = "hot";
  json wrong_stop = ChatBody(false);
  wrong_stop["stop"] = json::array({1, 2});
  json n2 = ChatBody(false);
  n2["n"] = 2;
  json no_model = ChatBody(false);
  no_model["model"] = "gpt-4";
  json no_collection = ChatBody(true);
  no_collection["rag"] = {{"collection", "missing"}};
  json wrong_rag = ChatBody(false);
  wrong_rag["rag"] = {{"collection", "docs"}, {"top_k", "two"}};
  json bad_content = ChatBody(false);
  bad_content["messages"][0]["content"] = json::array({{{"type", "image_url"}}});
  const std::vector<Case> cases = {
      {"no token", ChatBody(false).dump(), 401, "", false},
      {"malformed JSON", "{\"model\": ", 400, ""},
      {"not an object", "[1, 2]", 400, ""},
      {"deep nesting", std::string(100000, '[') + std::string(100000, ']'), 400, ""},
      {"messages of the wrong type", wrong_messages.dump(), 400, "messages"},
      {"max_tokens of the wrong type", wrong_max.dump(), 400, "max_tokens"},
      {"temperature of the wrong type", wrong_temp.dump(), 400, "temperature"},
      {"stop of the wrong type", wrong_stop.dump(), 400, "stop"},
      {"n = 2", n2.dump(), 400, "n"},
      {"unknown model", no_model.dump(), 404, "model"},
      {"unknown collection (stream)", no_collection.dump(), 404, ""},
      {"rag.top_k of the wrong type", wrong_rag.dump(), 400, "rag.top_k"},
      {"image content", bad_content.dump(), 400, "messages[0].content"},
      {"huge body", std::string(9 << 20, ' '), 413, ""},
  };
  for (const Case& c : cases) {
    httplib::Headers headers = c.auth ? Auth() : httplib::Headers{};
    auto res = http.Post("/v1/chat/completions", headers, c.body, "application/json");
    ASSERT_TRUE(res) << c.what << ": " << httplib::to_string(res.error());
    EXPECT_EQ(res->status, c.status) << c.what << ": " << res->body;
    const json err = json::parse(res->body, nullptr, false);
    ASSERT_TRUE(err.is_object() && err.contains("error")) << c.what << ": " << res->body;
    EXPECT_TRUE(err["error"]["message"].is_string()) << c.what;
    EXPECT_TRUE(err["error"]["type"].is_string()) << c.what;
    EXPECT_TRUE(err["error"].contains("param") && err["error"].contains("code")) << c.what;
    if (!c.param.empty()) {
      EXPECT_EQ(err["error"]["param"], c.param) << c.what << ": " << res->body;
    }
  }
  // Valid bodies with random bytes overwritten, dropped or duplicated: every one gets an answer
  // (a completion, or an error object), never a dropped connection.
  std::mt19937 rng(7);
  json base = ChatBody(false, 2);
  base["rag"] = {{"collection", "docs"}, {"top_k", 1}, {"filter", {{"topic", "rivers"}}}};
  base["stop"] = json::array({"\n"});
  const std::string valid = base.dump();
  for (int i = 0; i < 150; ++i) {
    std::string body = valid;
    for (int edits = 1 + static_cast<int>(rng() % 4); edits > 0; --edits) {
      const size_t at = rng() % body.size();
      switch (rng() % 3) {
        case 0:
          body[at] = static_cast<char>(rng() % 256);
          break;
        case 1:
          body.erase(at, 1 + rng() % 8);
          break;
        default:
          body.insert(at, body.substr(at, 1 + rng() % 8));
          break;
      }
      if (body.empty()) body = "{";
    }
    auto res = http.Post("/v1/chat/completions", Auth(), body, "application/json");
    ASSERT_TRUE(res) << "no answer to: " << body;
    const json got = json::parse(res->body, nullptr, false);
    ASSERT_TRUE(got.is_object()) << res->status << " " << res->body << " for " << body;
    EXPECT_TRUE(res->status == 200 ? got.contains("choices") : got.contains("error"))
        << res->status << " " << res->body << " for " << body;
  }
  // The router survives all of it: health SERVING and a good request answered.
  const Status health = CheckHealth(*channel_, "ragserve.v1.RagService", 5);
  EXPECT_TRUE(health.ok()) << health.ToString();
  auto ok =
      http.Post("/v1/chat/completions", Auth(), ChatBody(false, 3).dump(), "application/json");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
}

TEST_F(OpenAiHttpE2eTest, NoReachableWorkerIs503AndTlsServesHttps) {
  // A second router whose only decoder address has nothing listening, serving HTTPS with the
  // same certificate as its gRPC port.
  const std::string dir = cluster_->dir();
  if (testing::RunCommand("command -v openssl && command -v curl", nullptr) != 0) {
    GTEST_SKIP() << "openssl or curl missing";
  }
  std::string out;
  ASSERT_EQ(testing::RunCommand("cd " + ShellQuote(dir) +
                                    " && openssl req -x509 -newkey rsa:2048 -nodes -keyout "
                                    "key.pem -out cert.pem -days 1 -subj /CN=localhost "
                                    "-addext subjectAltName=IP:127.0.0.1",
                                &out),
            0)
      << out;
  const int port = testing::FreePort();
  std::string err;
  ASSERT_TRUE(cluster_->Start(
      "router", "router-tls",
      {"--index-addr", cluster_->Get("index")->addr(), "--decoders",
       "127.0.0.1:" + std::to_string(testing::FreePort()), "--downstream-token", kToken,
       "--http-port", std::to_string(port), "--served-model-name", kModel, "--tls-cert",
       dir + "/cert.pem", "--tls-key", dir + "/key.pem", "--auth-token", kToken},
      &err))
      << err;
  const std::string curl = "curl -sS --cacert " + ShellQuote(dir + "/cert.pem") +
                           " -H 'Authorization: Bearer " + kToken + "' -w '\\n%{http_code}' ";
  const std::string url = "https://127.0.0.1:" + std::to_string(port);
  ASSERT_EQ(testing::RunCommand(curl + url + "/v1/models", &out), 0) << out;
  EXPECT_EQ(out.substr(out.rfind('\n') + 1), "200") << out;
  EXPECT_NE(out.find(kModel), std::string::npos) << out;
  ASSERT_EQ(testing::RunCommand(curl + "-H 'Content-Type: application/json' -d " +
                                    ShellQuote(ChatBody(false).dump()) + " " + url +
                                    "/v1/chat/completions",
                                &out),
            0)
      << out;
  EXPECT_EQ(out.substr(out.rfind('\n') + 1), "503") << out;
  const json body = json::parse(out.substr(0, out.rfind('\n')), nullptr, false);
  ASSERT_TRUE(body.is_object()) << out;
  EXPECT_EQ(body["error"]["type"], "server_error") << out;
  // Plain HTTP to the HTTPS port is refused, not served.
  EXPECT_NE(testing::RunCommand("curl -sS -m 5 http://127.0.0.1:" + std::to_string(port) +
                                    "/v1/models -o /dev/null -w '%{http_code}' | grep -qx 200",
                                &out),
            0);
}

}  // namespace
}  // namespace ragserve
