// router_bench: routing policies on a local cluster (index + 2 decode workers + router, real
// binaries on loopback, the tiny model), in one run:
//   round_robin vs cache_aware on a workload whose questions (hence passages) repeat with a Zipf
//   distribution: throughput, p50/p99 TTFT, passage-cache hit rate (cached / prompt tokens),
//   requests per worker (starvation check);
//   the router's own added latency: the same request through the router vs sent to the worker
//   directly (minus the index search the router does).
// Usage: router_bench [--requests N] [--concurrency C] [--zipf S] [--max-tokens T]
//        (run from the repository root; binaries from $RAGSERVE_BIN_DIR or ./build/bin)
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ragserve/v1/decoder.grpc.pb.h"
#include "ragserve/v1/rag.grpc.pb.h"
#include "services/common/client.h"
#include "tests/support/process.h"
#include "tools/loadgen/loadgen.h"

namespace {

using ragserve::testing::Process;

struct Svc {
  std::unique_ptr<Process> p = std::make_unique<Process>();
  int port = 0;
  std::string addr() const { return "127.0.0.1:" + std::to_string(port); }
};

bool Start(const std::string& dir, const std::string& bin, const std::string& name,
           std::vector<std::string> args, Svc* s) {
  const std::string ready = dir + "/" + name + ".ready";
  std::vector<std::string> all = {"--port", "0", "--metrics-port", "0", "--ready-file", ready};
  all.insert(all.end(), args.begin(), args.end());
  if (!s->p->Start(ragserve::testing::BinPath(bin), all, dir + "/" + name + ".log", {}, dir)) {
    std::fprintf(stderr, "cannot start %s\n", ragserve::testing::BinPath(bin).c_str());
    return false;
  }
  int mport = 0;
  if (!ragserve::testing::WaitForReadyFile(ready, 60, &s->port, &mport)) {
    std::fprintf(stderr, "%s did not start:\n%s\n", name.c_str(),
                 ragserve::testing::ReadFileOrEmpty(dir + "/" + name + ".log").c_str());
    return false;
  }
  return true;
}

void Stop(Svc* s) {
  s->p->Signal(SIGTERM);
  int code;
  s->p->Wait(20, &code);
}

bool Ingest(const std::string& router) {
  const std::string cmd = ragserve::testing::BinPath("ragctl") + " --addr " + router +
                          " ingest data/corpus/passages.jsonl --collection docs --create";
  std::string out;
  if (ragserve::testing::RunCommand(cmd, &out) != 0) {
    std::fprintf(stderr, "ingest failed: %s\n", out.c_str());
    return false;
  }
  return true;
}

// Median latency (ms) of n identical requests: through the router, and to a worker directly.
void RouterOverhead(const std::string& router, const std::string& worker, int n) {
  auto rch = ragserve::MakeChannel(router);
  auto wch = ragserve::MakeChannel(worker);
  auto rs = ragserve::v1::RagService::NewStub(*rch);
  auto ws = ragserve::v1::DecoderService::NewStub(*wch);
  ragserve::v1::QueryRequest q;
  q.set_collection("docs");
  q.set_question("How long is the Nawerk River in kilometres?");
  q.set_top_k(4);
  q.set_use_context_cache(true);
  q.mutable_sampling()->set_max_tokens(4);
  q.mutable_sampling()->set_ignore_eos(true);
  ragserve::v1::GenerateRequest g;
  g.set_question(q.question());
  g.mutable_sampling()->set_max_tokens(4);
  g.mutable_sampling()->set_ignore_eos(true);
  std::vector<double> routed, direct, search;
  for (int i = 0; i < n + 3; ++i) {
    grpc::ClientContext ctx;
    const auto t0 = std::chrono::steady_clock::now();
    auto r = rs->Query(&ctx, q);
    ragserve::v1::QueryEvent ev;
    double s_ms = 0;
    while (r->Read(&ev)) {
      if (ev.has_passages() && g.passages_size() == 0) {
        for (const auto& p : ev.passages().passages()) {
          auto* cp = g.add_passages();
          cp->set_id(p.id());
          cp->set_text(p.text());
        }
      }
      if (ev.has_stats()) s_ms = ev.stats().timings().search_ms();
    }
    r->Finish();
    const double t_routed =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    grpc::ClientContext wctx;
    const auto t1 = std::chrono::steady_clock::now();
    auto w = ws->Generate(&wctx, g);
    ragserve::v1::GenerateEvent gev;
    while (w->Read(&gev)) {
    }
    w->Finish();
    const double t_direct =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count();
    if (i >= 3) {  // warm: passages cached on the workers
      routed.push_back(t_routed);
      direct.push_back(t_direct);
      search.push_back(s_ms);
    }
  }
  const auto pr = ragserve::loadgen::ComputePercentiles(routed);
  const auto pd = ragserve::loadgen::ComputePercentiles(direct);
  const auto ps = ragserve::loadgen::ComputePercentiles(search);
  std::printf("\n| path (4-token answer, warm caches, %d requests) | p50 ms | p90 ms |\n", n);
  std::printf("|---|---|---|\n");
  std::printf("| client -> router -> index + worker | %.2f | %.2f |\n", pr.p50, pr.p90);
  std::printf("| client -> worker directly | %.2f | %.2f |\n", pd.p50, pd.p90);
  std::printf("| index search inside the router path | %.2f | %.2f |\n", ps.p50, ps.p90);
  std::printf("| router's own added latency (p50 routed - direct - search) | %.2f | |\n",
              pr.p50 - pd.p50 - ps.p50);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("router_bench: routing policies and router overhead on a local cluster");
  ragserve::loadgen::LoadOptions lo;
  lo.requests = 200;
  lo.concurrency = 4;
  lo.zipf_s = 1.1;
  lo.max_tokens = 16;
  lo.top_k = 4;
  int overhead_n = 50;
  std::string cache_mb = "4";
  app.add_option("--requests", lo.requests, "Requests per policy")->capture_default_str();
  app.add_option("--concurrency", lo.concurrency, "Closed-loop clients")->capture_default_str();
  app.add_option("--zipf", lo.zipf_s, "Zipf exponent of question popularity")
      ->capture_default_str();
  app.add_option("--max-tokens", lo.max_tokens, "Answer tokens")->capture_default_str();
  app.add_option("--passage-cache-mb", cache_mb,
                 "Each worker's passage cache (small: the hot set must be routed, not replicated)")
      ->capture_default_str();
  app.add_option("--overhead-requests", overhead_n, "Requests for the overhead table")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (getenv("RAGSERVE_BIN_DIR") == nullptr) {
    // Absolute: the services are started in their own working directory.
    setenv("RAGSERVE_BIN_DIR", std::filesystem::absolute("build/bin").c_str(), 1);
  }

  const std::string dir = ragserve::testing::MakeTempDir("router-bench");
  std::string out;
  if (ragserve::testing::RunCommand(ragserve::testing::BinPath("make-tiny-model") + " --out " +
                                        dir + "/model --corpus data/corpus/passages.jsonl",
                                    &out) != 0) {
    std::fprintf(stderr, "make-tiny-model failed: %s\n", out.c_str());
    return 1;
  }
  auto qs = ragserve::loadgen::ReadQuestions("data/corpus/questions.jsonl");
  if (!qs.ok()) {
    std::fprintf(stderr, "%s (run from the repository root)\n", qs.status().ToString().c_str());
    return 1;
  }
  lo.questions = *qs;
  lo.use_context_cache = true;

  Svc index;
  if (!Start(dir, "ragserve-index", "index", {"--data-dir", dir + "/index"}, &index)) return 1;
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  std::printf(
      "router_bench on %s, %ld cores; %d requests per policy, %d clients, Zipf %.2f over "
      "%zu questions, %d answer tokens, passage cache %s MiB per worker\n\n",
      host, sysconf(_SC_NPROCESSORS_ONLN), lo.requests, lo.concurrency, lo.zipf_s,
      lo.questions.size(), lo.max_tokens, cache_mb.c_str());
  std::printf("| policy | req/s | TTFT p50 ms | TTFT p99 ms | cache hit rate | per worker |\n");
  std::printf("|---|---|---|---|---|---|\n");
  bool ingested = false;
  std::string last_router, last_worker;
  for (const std::string policy : {"round_robin", "cache_aware"}) {
    Svc d0, d1, router;
    const std::vector<std::string> dargs = {"--model", dir + "/model", "--passage-cache-mb",
                                            cache_mb};
    auto with_id = [&](const char* id) {
      auto a = dargs;
      a.push_back("--worker-id");
      a.push_back(id);
      return a;
    };
    if (!Start(dir, "ragserve-decoder", policy + "-d0", with_id("w0"), &d0) ||
        !Start(dir, "ragserve-decoder", policy + "-d1", with_id("w1"), &d1) ||
        !Start(dir, "ragserve-router", policy + "-router",
               {"--index-addr", index.addr(), "--decoders", d0.addr() + "," + d1.addr(), "--policy",
                policy, "--poll-interval", "0.1"},
               &router)) {
      return 1;
    }
    if (!ingested && !Ingest(router.addr())) return 1;
    ingested = true;
    lo.addr = router.addr();
    auto r = ragserve::loadgen::RunLoad(lo);
    if (!r.ok()) {
      std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
      return 1;
    }
    std::string workers;
    for (const auto& [w, n] : r->per_worker) workers += w + ":" + std::to_string(n) + " ";
    const double hit = r->prompt_tokens > 0
                           ? static_cast<double>(r->cached_prompt_tokens) / r->prompt_tokens
                           : 0.0;
    std::printf("| %s | %.2f | %.1f | %.1f | %.1f%% | %s|\n", policy.c_str(), r->throughput_rps,
                r->ttft_ms.p50, r->ttft_ms.p99, 100 * hit, workers.c_str());
    std::fflush(stdout);
    if (policy == "cache_aware") RouterOverhead(router.addr(), d0.addr(), overhead_n);
    Stop(&router);
    Stop(&d0);
    Stop(&d1);
  }
  Stop(&index);
  return 0;
}
