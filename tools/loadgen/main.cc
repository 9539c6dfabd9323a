// loadgen: drives RagService.Query and reports throughput, TTFT and time per output token.
//   loadgen --questions data/corpus/questions.jsonl --concurrency 4 --requests 200
//   loadgen --open-loop --qps 20 --requests 500 --zipf 1.1 --json out.json
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>

#include "tools/loadgen/loadgen.h"

int main(int argc, char** argv) {
  CLI::App app("loadgen: load against a ragserve router", "loadgen");
  ragserve::loadgen::LoadOptions o;
  std::string questions = "data/corpus/questions.jsonl";
  std::string json_out;
  app.add_option("--addr", o.addr, "Router host:port")->capture_default_str();
  app.add_option("--token", o.token, "Bearer token")->envname("RAGSERVE_AUTH_TOKEN");
  app.add_option("--collection", o.collection, "Collection")->capture_default_str();
  app.add_option("--questions", questions, "JSONL ({\"question\"}) or one question per line")
      ->capture_default_str();
  app.add_option("--zipf", o.zipf_s, "Zipf exponent of question popularity (0 = uniform)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--open-loop", o.open_loop, "Poisson arrivals at --qps (else closed loop)");
  app.add_option("--qps", o.qps, "Open-loop arrival rate")->check(CLI::PositiveNumber);
  app.add_option("--concurrency", o.concurrency, "Closed-loop clients / open-loop max in flight")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_option("--requests", o.requests, "Requests measured")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000000));
  app.add_option("--warmup", o.warmup, "Requests sent first, not measured")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-tokens", o.max_tokens, "Answer tokens per request")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--top-k", o.top_k, "Passages per query")->check(CLI::Range(1, 64));
  app.add_option("--context-cache", o.use_context_cache, "Use pre-encoded passage KV");
  app.add_option("--seed", o.seed, "Question draw and arrival seed");
  app.add_option("--timeout", o.timeout_s, "Per-request deadline (s)")->check(CLI::PositiveNumber);
  app.add_option("--json", json_out, "Write the report as JSON to this file (- = stdout)");
  CLI11_PARSE(app, argc, argv);

  auto qs = ragserve::loadgen::ReadQuestions(questions);
  if (!qs.ok()) {
    std::fprintf(stderr, "loadgen: %s\n", qs.status().ToString().c_str());
    return 1;
  }
  o.questions = std::move(*qs);
  auto report = ragserve::loadgen::RunLoad(o);
  if (!report.ok()) {
    std::fprintf(stderr, "loadgen: %s\n", report.status().ToString().c_str());
    return 1;
  }
  if (json_out == "-") {
    std::printf("%s\n", report->ToJson().c_str());
  } else {
    std::printf("%s", report->ToText().c_str());
    if (!json_out.empty()) std::ofstream(json_out) << report->ToJson() << "\n";
  }
  return report->ok == report->requests ? 0 : 2;
}
