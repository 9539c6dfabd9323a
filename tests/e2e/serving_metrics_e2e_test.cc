// Serving metrics of a real decoder and router (services/decoder/serving_metrics.h,
// services/router/router_metrics.h), scraped from their /metrics while queries run: the gauges
// follow a long answer, a queued one and a cancel; the counters and histograms equal what the
// answers' own stats say; promtool accepts both expositions; and the Grafana dashboard and the
// autoscaler's adapter rule under deploy/ name only series the services export. The router is
// configured through a --config file (services/common/config.h), whose model name shows up in
// its labels.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "ragserve/v1/rag.grpc.pb.h"
#include "tests/e2e/cluster.h"

namespace ragserve {
namespace {

constexpr char kDecoderModel[] = "model_name=\"model\"";    // the tiny model's folder name
constexpr char kRouterModel[] = "model_name=\"tiny-rag\"";  // from the router's config file

using testing::Ctx;

// The value of one series ("name{labels}") in an exposition; -1 when absent.
double Sample(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return -1;
}

// The metric families (# TYPE lines) of an exposition.
std::set<std::string> Families(const std::string& text) {
  std::set<std::string> names;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("# TYPE ", 0) == 0) names.insert(line.substr(7, line.find(' ', 7) - 7));
  }
  return names;
}

// Every ragserve_* name in `text`, with a histogram's _bucket/_sum/_count suffix removed.
std::set<std::string> ReferencedNames(const std::string& text) {
  std::set<std::string> names;
  static const std::regex re("ragserve_[a-z0-9_]+");
  static const std::regex suffix("_(bucket|sum|count)$");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator();
       ++it) {
    names.insert(std::regex_replace(it->str(), suffix, ""));
  }
  return names;
}

class ServingMetricsE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = testing::MakeTempDir("metrics-e2e");
    cluster_ = new testing::Cluster(dir);
    // A context long enough that the long answer below cannot end before it is cancelled (its
    // last thousands of tokens each attend to over 10K keys: tens of seconds on a CPU).
    const std::string model = dir + "/model";
    std::string out;
    ASSERT_EQ(testing::RunCommand(testing::BinPath("make-tiny-model") + " --out " + model +
                                      " --max-positions 16384 --corpus " + testing::SourceDir() +
                                      "/data/corpus/passages.jsonl",
                                  &out),
              0)
        << out;
    std::string err;
    ASSERT_TRUE(cluster_->Start("index", "index", {"--data-dir", dir + "/index-data"}, &err))
        << err;
    // One sequence at a time: a second request waits in the queue.
    ASSERT_TRUE(cluster_->Start(
        "decoder", "decoder",
        {"--model", model, "--max-active", "1", "--context-mode", "sequential"}, &err))
        << err;
    const std::string config = dir + "/router.toml";
    std::ofstream(config) << "# router settings\n"
                          << "index-addr = \"" << cluster_->Get("index")->addr() << "\"\n"
                          << "decoders = \"" << cluster_->Get("decoder")->addr() << "\"\n"
                          << "served_model_name = \"tiny-rag\"\n"
                          << "poll-interval = 0.2\n";
    ASSERT_TRUE(cluster_->Start("router", "router", {"--config", config}, &err)) << err;
    auto ch = MakeChannel(cluster_->Get("router")->addr());
    ASSERT_TRUE(ch.ok());
    router_ = v1::RagService::NewStub(*ch).release();
    IngestDocs();
  }
  static void TearDownTestSuite() {
    delete router_;
    delete cluster_;
  }

  static void IngestDocs() {
    auto ctx = Ctx();
    const grpc::Status st = testing::IngestSampleDocs(router_, ctx.get());
    ASSERT_TRUE(st.ok()) << st.error_message();
  }

  static std::string Scrape(const std::string& service) {
    std::string body;
    EXPECT_EQ(testing::HttpGet(cluster_->Get(service)->metrics_port, "/metrics", &body), 200);
    return body;
  }

  static double Decoder(const std::string& name, const std::string& extra = "") {
    return Sample(Scrape("decoder"),
                  name + "{" + kDecoderModel + (extra.empty() ? "" : "," + extra) + "}");
  }

  static v1::QueryRequest Question(int max_tokens) {
    v1::QueryRequest q;
    q.set_collection("docs");
    q.set_question("How long is the Nawerk River?");
    q.set_top_k(1);
    q.mutable_sampling()->set_max_tokens(max_tokens);
    q.mutable_sampling()->set_ignore_eos(true);
    return q;
  }

  // Reads a query's stream up to its first answer token; returns the tokens read so far.
  static int ReadToFirstToken(grpc::ClientReader<v1::QueryEvent>* reader) {
    v1::QueryEvent ev;
    while (reader->Read(&ev)) {
      if (ev.has_delta() && ev.delta().token_ids_size() > 0) return ev.delta().token_ids_size();
    }
    return 0;
  }

  static v1::QueryStats ReadToEnd(grpc::ClientReader<v1::QueryEvent>* reader) {
    v1::QueryStats stats;
    v1::QueryEvent ev;
    while (reader->Read(&ev)) {
      if (ev.has_stats()) stats = ev.stats();
    }
    const grpc::Status st = reader->Finish();
    EXPECT_TRUE(st.ok()) << st.error_message();
    return stats;
  }

  // Polls (up to 20 s) until the decoder and router report nothing running or waiting.
  static bool WaitIdle() {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < until) {
      const std::string d = Scrape("decoder"), r = Scrape("router");
      const std::string dl = std::string("{") + kDecoderModel + "}";
      const std::string rl = std::string("{") + kRouterModel + "}";
      if (Sample(d, "ragserve_num_requests_running" + dl) == 0 &&
          Sample(d, "ragserve_num_requests_waiting" + dl) == 0 &&
          Sample(r, "ragserve_router_num_requests_running" + rl) == 0) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  // A query the decoder refuses (top_p out of range): INVALID_ARGUMENT through the router.
  static grpc::StatusCode RefusedQuery() {
    v1::QueryRequest q = Question(4);
    q.mutable_sampling()->set_top_p(2);
    auto ctx = Ctx();
    auto reader = router_->Query(ctx.get(), q);
    v1::QueryEvent ev;
    while (reader->Read(&ev)) {
    }
    return reader->Finish().error_code();
  }

  static testing::Cluster* cluster_;
  static v1::RagService::Stub* router_;
};

testing::Cluster* ServingMetricsE2eTest::cluster_ = nullptr;
v1::RagService::Stub* ServingMetricsE2eTest::router_ = nullptr;

// A long answer runs while a second query waits for the single batch slot; cancelling the long
// one lets the second run; afterwards nothing is running or waiting.
TEST_F(ServingMetricsE2eTest, GaugesFollowRunningQueuedAndCancelledRequests) {
  ASSERT_TRUE(WaitIdle());
  EXPECT_EQ(Decoder("ragserve_kv_cache_usage_perc"), 0);
  const double aborted0 = Decoder("ragserve_request_success_total", "finished_reason=\"abort\"");
  const double generated0 = Decoder("ragserve_generation_tokens_total");

  // A: as long as the model's context allows (16K tokens); cancelled below.
  auto ctx_a = Ctx();
  auto a = router_->Query(ctx_a.get(), Question(16000));
  const int a_seen = ReadToFirstToken(a.get());
  ASSERT_GT(a_seen, 0);
  // B: queued behind A on the decoder (--max-active 1).
  auto ctx_b = Ctx();
  auto b = router_->Query(ctx_b.get(), Question(8));
  // The gauges are refreshed once per generator step: poll until B has reached the decoder's
  // queue and A's step is done. The state is stable from then on until A is cancelled.
  const std::string dl = std::string("{") + kDecoderModel + "}";
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  std::string d, r;
  do {
    d = Scrape("decoder");
    r = Scrape("router");
  } while ((Sample(d, "ragserve_num_requests_waiting" + dl) < 1 ||
            Sample(d, "ragserve_num_requests_running" + dl) < 1) &&
           std::chrono::steady_clock::now() < until);
  EXPECT_EQ(Sample(d, "ragserve_num_requests_running" + dl), 1) << d;
  EXPECT_EQ(Sample(d, "ragserve_num_requests_waiting" + dl), 1) << d;
  const double kv = Sample(d, "ragserve_kv_cache_usage_perc" + dl);
  EXPECT_GT(kv, 0) << d;
  EXPECT_LE(kv, 1) << d;
  EXPECT_GE(Sample(d, "ragserve_generation_tokens_total" + dl), generated0 + a_seen) << d;
  EXPECT_EQ(Sample(r, std::string("ragserve_router_num_requests_running{") + kRouterModel + "}"), 2)
      << r;

  ctx_a->TryCancel();
  EXPECT_EQ(a->Finish().error_code(), grpc::StatusCode::CANCELLED);
  const v1::QueryStats b_stats = ReadToEnd(b.get());
  EXPECT_EQ(b_stats.generated_tokens(), 8);
  ASSERT_TRUE(WaitIdle()) << Scrape("decoder") << Scrape("router");
  EXPECT_EQ(Decoder("ragserve_kv_cache_usage_perc"), 0);
  EXPECT_EQ(Decoder("ragserve_request_success_total", "finished_reason=\"abort\""), aborted0 + 1);
}

// Counters and histograms move by exactly what the answers' stats report.
TEST_F(ServingMetricsE2eTest, TokenCountersAndHistogramsMatchTheAnswers) {
  ASSERT_TRUE(WaitIdle());
  const std::string rl = std::string("{") + kRouterModel + "}";
  const std::string dl = std::string("{") + kDecoderModel + "}";
  const std::string d0 = Scrape("decoder"), r0 = Scrape("router");
  int prompt = 0, generated = 0, later_tokens = 0;
  for (int max_tokens : {5, 9, 14}) {
    auto ctx = Ctx();
    auto reader = router_->Query(ctx.get(), Question(max_tokens));
    const v1::QueryStats s = ReadToEnd(reader.get());
    ASSERT_EQ(s.generated_tokens(), max_tokens);
    prompt += s.prompt_tokens();
    generated += s.generated_tokens();
    later_tokens += s.generated_tokens() - 1;
  }
  ASSERT_TRUE(WaitIdle());
  const std::string d1 = Scrape("decoder"), r1 = Scrape("router");
  auto moved = [](const std::string& before, const std::string& after, const std::string& s) {
    return Sample(after, s) - std::max(0.0, Sample(before, s));
  };
  for (const auto& [before, after, prefix, labels] :
       {std::tuple{d0, d1, std::string("ragserve_"), dl},
        std::tuple{r0, r1, std::string("ragserve_router_"), rl}}) {
    EXPECT_EQ(moved(before, after, prefix + "prompt_tokens_total" + labels), prompt) << after;
    EXPECT_EQ(moved(before, after, prefix + "generation_tokens_total" + labels), generated)
        << after;
    EXPECT_EQ(moved(before, after, prefix + "time_to_first_token_seconds_count" + labels), 3);
    EXPECT_EQ(moved(before, after, prefix + "e2e_request_latency_seconds_count" + labels), 3);
    EXPECT_EQ(moved(before, after, prefix + "time_per_output_token_seconds_count" + labels),
              later_tokens);
    EXPECT_GT(moved(before, after, prefix + "e2e_request_latency_seconds_sum" + labels), 0);
    const std::string length = labels.substr(0, labels.size() - 1) + ",finished_reason=\"length\"}";
    EXPECT_EQ(moved(before, after, prefix + "request_success_total" + length), 3) << after;
  }
  const std::string worker = cluster_->Get("decoder")->addr();
  EXPECT_EQ(moved(r0, r1,
                  "ragserve_router_requests_routed_total{" + std::string(kRouterModel) +
                      ",worker=\"" + worker + "\"}"),
            3)
      << r1;
}

TEST_F(ServingMetricsE2eTest, FailuresAreCountedByCodeAndWorker) {
  const std::string failed = std::string("ragserve_request_failure_total{") + kDecoderModel +
                             ",code=\"INVALID_ARGUMENT\"}";
  const std::string worker =
      std::string("{") + kRouterModel + ",worker=\"" + cluster_->Get("decoder")->addr() + "\"}";
  const std::string d0 = Scrape("decoder"), r0 = Scrape("router");
  ASSERT_EQ(RefusedQuery(), grpc::StatusCode::INVALID_ARGUMENT);
  const std::string d1 = Scrape("decoder"), r1 = Scrape("router");
  EXPECT_EQ(Sample(d1, failed) - std::max(0.0, Sample(d0, failed)), 1) << d1;
  for (const char* name :
       {"ragserve_router_requests_routed_total", "ragserve_router_worker_errors_total"}) {
    EXPECT_EQ(Sample(r1, name + worker) - std::max(0.0, Sample(r0, name + worker)), 1)
        << name << "\n"
        << r1;
  }
}

TEST_F(ServingMetricsE2eTest, PromtoolAcceptsBothExpositions) {
  const std::string dir = cluster_->dir();
  for (const char* service : {"decoder", "router"}) {
    const std::string path = dir + "/" + service + ".metrics";
    std::ofstream(path) << Scrape(service);
    std::string out;
    EXPECT_EQ(testing::RunCommand("promtool check metrics < " + path, &out), 0)
        << service << ": " << out;
  }
}

// deploy/ must chart and scale on series that exist: every ragserve_* name in the dashboard and
// in the autoscaler's prometheus-adapter rule is a family of the decoder's or router's exposition.
TEST_F(ServingMetricsE2eTest, DashboardAndAutoscalerNameOnlyExportedSeries) {
  // Series that exist once something failed and something was answered.
  ASSERT_EQ(RefusedQuery(), grpc::StatusCode::INVALID_ARGUMENT);
  auto ctx = Ctx();
  auto reader = router_->Query(ctx.get(), Question(2));
  ReadToEnd(reader.get());
  std::set<std::string> exported = Families(Scrape("decoder"));
  for (const auto& f : Families(Scrape("router"))) exported.insert(f);
  for (const char* file :
       {"deploy/grafana/ragserve-dashboard.json", "deploy/k8s/overlays/gpu/decoder-hpa.yaml",
        "deploy/k8s/overlays/gpu/prometheus-adapter-rules.yaml"}) {
    const std::string text = testing::ReadFileOrEmpty(testing::SourceDir() + "/" + file);
    ASSERT_FALSE(text.empty()) << file;
    const std::set<std::string> names = ReferencedNames(text);
    EXPECT_GE(names.size(), 1u) << file;
    for (const auto& n : names) {
      EXPECT_TRUE(exported.count(n)) << file << " names " << n << ", which no service exports";
    }
  }
  // The serving metrics the dashboard is built around are all charted.
  const std::set<std::string> charted = ReferencedNames(
      testing::ReadFileOrEmpty(testing::SourceDir() + "/deploy/grafana/ragserve-dashboard.json"));
  for (const char* n :
       {"ragserve_num_requests_running", "ragserve_num_requests_waiting",
        "ragserve_kv_cache_usage_perc", "ragserve_prompt_tokens_total",
        "ragserve_generation_tokens_total", "ragserve_time_to_first_token_seconds",
        "ragserve_time_per_output_token_seconds", "ragserve_e2e_request_latency_seconds",
        "ragserve_request_success_total", "ragserve_router_e2e_request_latency_seconds",
        "ragserve_router_requests_routed_total"}) {
    EXPECT_TRUE(charted.count(n)) << "the dashboard does not chart " << n;
  }
}

}  // namespace
}  // namespace ragserve
