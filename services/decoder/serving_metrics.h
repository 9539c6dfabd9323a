// Serving metrics of a decode worker, named and shaped like vLLM's (vllm:<name> there,
// ragserve_<name> here: promtool's lint rejects ':' in exported names, which Prometheus reserves
// for recording rules), so dashboards written for vLLM fit with the prefix swapped. Every series is
// labelled model_name:
//   ragserve_num_requests_running          gauge: sequences in the batch (admitted, unfinished)
//   ragserve_num_requests_waiting          gauge: requests in the admission queue
//   ragserve_kv_cache_usage_perc           gauge: reserved KV / --kv-budget-mb, 0..1
//   ragserve_prompt_tokens_total           counter: prompt tokens of finished requests (passages
//                                          included)
//   ragserve_generation_tokens_total       counter: tokens generated, counted as they are emitted
//   ragserve_time_to_first_token_seconds   histogram: arrival of the call -> first token
//   ragserve_time_per_output_token_seconds histogram: one observation per token after the first
//                                          (the gap since the previous token)
//   ragserve_e2e_request_latency_seconds   histogram: arrival -> finished (successful requests)
//   ragserve_request_success_total         counter by finished_reason: stop (EOS or a stop
//                                          string), length, abort (cancelled)
//   ragserve_request_failure_total         counter by code: requests that ended with an error
//                                          or were refused (bad arguments, queue full)
//
// Thread safety: a RequestMetrics is used by one request's callbacks, which the generator calls
// one at a time; ServingMetrics may be used from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "services/common/metrics.h"
#include "services/common/status.h"
#include "services/decoder/generator.h"

namespace ragserve::decoder {

// The metrics of one request, fed by its generator callbacks.
class RequestMetrics {
 public:
  using Clock = std::chrono::steady_clock;
  struct Series;  // the registry's series (shared by all requests of a ServingMetrics)
  RequestMetrics(std::shared_ptr<const Series> series, Clock::time_point arrival);
  // `n` tokens were emitted now (on_delta with token ids).
  void OnTokens(size_t n);
  // The request ended (on_done).
  void OnDone(const Status& st, const GenerateStats& stats);

 private:
  std::shared_ptr<const Series> series_;
  Clock::time_point arrival_;
  Clock::time_point last_token_;
  bool got_first_ = false;
};

class ServingMetrics {
 public:
  // Registers the series in `registry` and a collector that reads `generator`'s load into the
  // gauges on every scrape. registry and generator must outlive this object, whose destructor
  // unregisters the collector. kv_budget_bytes > 0.
  ServingMetrics(MetricsRegistry* registry, const std::string& model_name,
                 const Generator* generator, int64_t kv_budget_bytes);
  ~ServingMetrics();
  ServingMetrics(const ServingMetrics&) = delete;
  ServingMetrics& operator=(const ServingMetrics&) = delete;

  // The metrics of a request that arrived now.
  std::shared_ptr<RequestMetrics> StartRequest() const;
  // Sets the gauges from the generator's load (what the collector does).
  void Collect() const;

 private:
  MetricsRegistry* registry_;
  const Generator* generator_;
  const int64_t kv_budget_bytes_;
  std::shared_ptr<const RequestMetrics::Series> series_;
  int collector_id_ = -1;
};

// The model name a decoder reports when none is configured: the model directory's last path
// component ("data/models/reader/" -> "reader").
std::string DefaultModelName(const std::string& model_dir);

}  // namespace ragserve::decoder
