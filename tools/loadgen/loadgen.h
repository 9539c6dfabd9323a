// Load generation against RagService.Query: closed loop (N clients back to back) or open loop
// (Poisson arrivals at a target QPS, latency measured from the scheduled arrival so a slow server
// cannot hide queueing: no coordinated omission). Questions are drawn from a list uniformly or
// with a Zipf distribution (popular questions repeat, as RAG traffic does).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "services/common/status.h"

namespace grpc {
class Channel;
}  // namespace grpc

namespace ragserve::loadgen {

struct LoadOptions {
  std::string addr = "127.0.0.1:50051";
  std::string token;
  std::string collection = "docs";
  std::vector<std::string> questions;
  double zipf_s = 0;  // 0: uniform; > 0: Zipf exponent over the question list
  bool open_loop = false;
  int concurrency = 4;  // closed loop: clients; open loop: max requests in flight
  double qps = 10;      // open loop arrival rate
  int requests = 100;   // total requests (after warmup)
  int warmup = 0;       // requests sent first and not counted
  int max_tokens = 32;
  int top_k = 4;
  bool use_context_cache = true;
  uint64_t seed = 1;
  double timeout_s = 120;
};

struct Percentiles {
  double p50 = 0, p90 = 0, p99 = 0, mean = 0, max = 0;
};

struct LoadReport {
  int requests = 0;
  int ok = 0;
  std::map<std::string, int> errors;  // gRPC code name -> count
  double duration_s = 0;
  double throughput_rps = 0;  // completed OK requests per second
  double output_tokens_per_s = 0;
  Percentiles ttft_ms, tpot_ms, total_ms;
  int64_t prompt_tokens = 0;
  int64_t cached_prompt_tokens = 0;
  std::map<std::string, int> per_worker;  // worker id -> OK requests
  std::string ToJson() const;
  std::string ToText() const;
};

// Reads questions from JSONL ({"question": ...} per line) or plain text (one per line).
StatusOr<std::vector<std::string>> ReadQuestions(const std::string& path);

StatusOr<LoadReport> RunLoad(const LoadOptions& opts);

Percentiles ComputePercentiles(std::vector<double> v);

// One Query call as RunLoad sends it (greedy unless the options say otherwise: temperature 0,
// ignore_eos, o.max_tokens), with what came back: the answer's token ids in order, the status and
// timings measured from `scheduled`. Used by tools/chaos, which compares answers token by token.
struct QueryOutcome {
  bool ok = false;
  std::string code;     // gRPC code name ("OK", "UNAVAILABLE", ...)
  std::string message;  // the status message when not OK
  double ttft_ms = 0, tpot_ms = 0, total_ms = 0;
  int tokens = 0;
  std::vector<int32_t> token_ids;
  int prompt_tokens = 0, cached_tokens = 0;
  int retries = 0;  // router failovers to another worker (QueryStats.retries)
  std::string worker;
};
QueryOutcome QueryOnce(const std::shared_ptr<grpc::Channel>& channel, const LoadOptions& o,
                       const std::string& question,
                       std::chrono::steady_clock::time_point scheduled);

}  // namespace ragserve::loadgen
