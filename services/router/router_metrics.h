// Request-level serving metrics of the router, as its clients see them (the decoders export the
// worker-side ones, services/decoder/serving_metrics.h), plus per-worker routing counters. All
// labelled model_name (router --served-model-name):
//   ragserve_router_num_requests_running          gauge: queries being answered
//   ragserve_router_num_requests_waiting          gauge: queries queued for a query thread
//   ragserve_router_time_to_first_token_seconds   histogram: query arrival -> first answer token
//   ragserve_router_time_per_output_token_seconds histogram: (end - first token) / (tokens - 1),
//                                                 observed once per token after the first
//   ragserve_router_e2e_request_latency_seconds   histogram: arrival -> stats (answered queries)
//   ragserve_router_prompt_tokens_total           counter: prompt tokens of answered queries
//   ragserve_router_generation_tokens_total       counter: answer tokens of answered queries
//   ragserve_router_request_success_total         counter by finished_reason: stop, length
//   ragserve_router_requests_routed_total         counter by worker: generate calls sent to it
//                                                 (a failover counts once per worker tried)
//   ragserve_router_worker_errors_total           counter by worker: those calls that failed
//
// Thread safety: all methods may be called from any thread.
#pragma once

#include <string>

#include "ragserve/v1/rag.pb.h"
#include "services/common/executor.h"
#include "services/common/metrics.h"

namespace ragserve::router {

class RouterMetrics {
 public:
  // Registers the series in `registry` and a collector reading the queue length of `queries`
  // (the query executor); both must outlive this object.
  RouterMetrics(MetricsRegistry* registry, const std::string& model_name,
                const BoundedExecutor* queries);
  ~RouterMetrics();
  RouterMetrics(const RouterMetrics&) = delete;
  RouterMetrics& operator=(const RouterMetrics&) = delete;

  // A query started / ended running (every QueryStarted is followed by one QueryEnded).
  void QueryStarted();
  void QueryEnded();
  // A query was answered; `stats` is the stats event sent to the client.
  void Answered(const v1::QueryStats& stats);
  // A generate call went to `worker`; it failed (not counting the client's own cancel).
  void Routed(const std::string& worker);
  void WorkerError(const std::string& worker);

 private:
  Counter& PerWorker(const char* name, const char* help, const std::string& worker);

  MetricsRegistry* registry_;
  const Labels labels_;
  const BoundedExecutor* queries_;
  Gauge& running_;
  Gauge& waiting_;
  Histogram& ttft_;
  Histogram& tpot_;
  Histogram& e2e_;
  Counter& prompt_tokens_;
  Counter& generation_tokens_;
  int collector_id_ = -1;
};

}  // namespace ragserve::router
