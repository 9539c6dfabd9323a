#include "services/router/router_metrics.h"

namespace ragserve::router {

namespace {

Labels With(Labels labels, const char* name, const std::string& value) {
  labels.emplace_back(name, value);
  return labels;
}

}  // namespace

RouterMetrics::RouterMetrics(MetricsRegistry* registry, const std::string& model_name,
                             const BoundedExecutor* queries)
    : registry_(registry),
      labels_{{"model_name", model_name}},
      queries_(queries),
      running_(registry->GetGauge("ragserve_router_num_requests_running",
                                  "Queries being answered by the router", labels_)),
      waiting_(registry->GetGauge("ragserve_router_num_requests_waiting",
                                  "Queries queued for a router query thread", labels_)),
      ttft_(registry->GetHistogram("ragserve_router_time_to_first_token_seconds",
                                   "Query arrival to the first answer token, at the router",
                                   TimeToFirstTokenBuckets(), labels_)),
      tpot_(registry->GetHistogram("ragserve_router_time_per_output_token_seconds",
                                   "Mean time per answer token after the first, at the router",
                                   TimePerOutputTokenBuckets(), labels_)),
      e2e_(registry->GetHistogram("ragserve_router_e2e_request_latency_seconds",
                                  "Query arrival to its end, answered queries, at the router",
                                  RequestLatencyBuckets(), labels_)),
      prompt_tokens_(registry->GetCounter("ragserve_router_prompt_tokens_total",
                                          "Prompt tokens of answered queries", labels_)),
      generation_tokens_(registry->GetCounter("ragserve_router_generation_tokens_total",
                                              "Answer tokens of answered queries", labels_)) {
  collector_id_ =
      registry_->AddCollector([this] { waiting_.Set(static_cast<double>(queries_->queued())); });
}

RouterMetrics::~RouterMetrics() { registry_->RemoveCollector(collector_id_); }

void RouterMetrics::QueryStarted() { running_.Add(1); }

void RouterMetrics::QueryEnded() { running_.Add(-1); }

void RouterMetrics::Answered(const v1::QueryStats& stats) {
  const double ttft_s = stats.timings().ttft_ms() / 1000;
  const double total_s = stats.timings().total_ms() / 1000;
  const int tokens = stats.generated_tokens();
  if (tokens > 0) ttft_.Observe(ttft_s);
  if (tokens > 1)
    tpot_.Observe((total_s - ttft_s) / (tokens - 1), static_cast<uint64_t>(tokens - 1));
  e2e_.Observe(total_s);
  prompt_tokens_.Inc(stats.prompt_tokens());
  generation_tokens_.Inc(tokens);
  const std::string reason = stats.finish_reason() == "length" ? "length" : "stop";
  registry_
      ->GetCounter("ragserve_router_request_success_total",
                   "Answered queries, by reason: stop (EOS or a stop string), length",
                   With(labels_, "finished_reason", reason))
      .Inc();
}

Counter& RouterMetrics::PerWorker(const char* name, const char* help, const std::string& worker) {
  return registry_->GetCounter(name, help, With(labels_, "worker", worker));
}

void RouterMetrics::Routed(const std::string& worker) {
  PerWorker("ragserve_router_requests_routed_total", "Generate calls sent to a decode worker",
            worker)
      .Inc();
}

void RouterMetrics::WorkerError(const std::string& worker) {
  PerWorker("ragserve_router_worker_errors_total", "Generate calls to a decode worker that failed",
            worker)
      .Inc();
}

}  // namespace ragserve::router
