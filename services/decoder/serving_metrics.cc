#include "services/decoder/serving_metrics.h"

#include <algorithm>

namespace ragserve::decoder {

struct RequestMetrics::Series {
  MetricsRegistry* registry = nullptr;
  Labels labels;  // {model_name}
  Gauge* running = nullptr;
  Gauge* waiting = nullptr;
  Gauge* kv_usage = nullptr;
  Counter* prompt_tokens = nullptr;
  Counter* generation_tokens = nullptr;
  Histogram* ttft = nullptr;
  Histogram* tpot = nullptr;
  Histogram* e2e = nullptr;
  Counter* success_stop = nullptr;
  Counter* success_length = nullptr;
  Counter* success_abort = nullptr;

  Counter& Failure(StatusCode code) const {
    Labels l = labels;
    l.emplace_back("code", std::string(StatusCodeName(code)));
    return registry->GetCounter("ragserve_request_failure_total",
                                "Requests that ended with an error, by status code", l);
  }
};

namespace {

double SecondsBetween(RequestMetrics::Clock::time_point a, RequestMetrics::Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::shared_ptr<RequestMetrics::Series> MakeSeries(MetricsRegistry* reg,
                                                   const std::string& model_name) {
  auto s = std::make_shared<RequestMetrics::Series>();
  s->registry = reg;
  s->labels = {{"model_name", model_name}};
  const Labels& l = s->labels;
  s->running = &reg->GetGauge("ragserve_num_requests_running",
                              "Requests in the decode batch (admitted, not finished)", l);
  s->waiting = &reg->GetGauge("ragserve_num_requests_waiting",
                              "Requests in the admission queue, waiting for a batch slot", l);
  s->kv_usage = &reg->GetGauge("ragserve_kv_cache_usage_perc",
                               "KV cache reserved by admitted requests, fraction of the budget", l);
  s->prompt_tokens = &reg->GetCounter("ragserve_prompt_tokens_total",
                                      "Prompt tokens (passages included) of finished requests", l);
  s->generation_tokens =
      &reg->GetCounter("ragserve_generation_tokens_total", "Tokens generated", l);
  s->ttft = &reg->GetHistogram("ragserve_time_to_first_token_seconds",
                               "Time from the request's arrival to its first token",
                               TimeToFirstTokenBuckets(), l);
  s->tpot = &reg->GetHistogram("ragserve_time_per_output_token_seconds",
                               "Time between consecutive output tokens of a request",
                               TimePerOutputTokenBuckets(), l);
  s->e2e = &reg->GetHistogram("ragserve_e2e_request_latency_seconds",
                              "Time from the request's arrival to its end (successful requests)",
                              RequestLatencyBuckets(), l);
  auto success = [&](const char* reason) {
    Labels lr = l;
    lr.emplace_back("finished_reason", reason);
    return &reg->GetCounter("ragserve_request_success_total",
                            "Requests finished, by reason: stop (EOS or a stop string), length, "
                            "abort (cancelled)",
                            lr);
  };
  s->success_stop = success("stop");
  s->success_length = success("length");
  s->success_abort = success("abort");
  return s;
}

}  // namespace

RequestMetrics::RequestMetrics(std::shared_ptr<const Series> series, Clock::time_point arrival)
    : series_(std::move(series)), arrival_(arrival) {}

void RequestMetrics::OnTokens(size_t n) {
  if (n == 0) return;
  const Clock::time_point now = Clock::now();
  series_->generation_tokens->Inc(static_cast<double>(n));
  size_t gaps = n;
  if (!got_first_) {
    got_first_ = true;
    series_->ttft->Observe(SecondsBetween(arrival_, now));
    gaps = n - 1;  // tokens after the first in this delta
    last_token_ = now;
  }
  if (gaps > 0) series_->tpot->Observe(SecondsBetween(last_token_, now) / gaps, gaps);
  last_token_ = now;
}

void RequestMetrics::OnDone(const Status& st, const GenerateStats& stats) {
  series_->prompt_tokens->Inc(stats.prompt_tokens);
  if (st.code() == StatusCode::kCancelled) {
    series_->success_abort->Inc();
    return;
  }
  if (!st.ok()) {
    series_->Failure(st.code()).Inc();
    return;
  }
  series_->e2e->Observe(SecondsBetween(arrival_, Clock::now()));
  (stats.finish_reason == "length" ? series_->success_length : series_->success_stop)->Inc();
}

ServingMetrics::ServingMetrics(MetricsRegistry* registry, const std::string& model_name,
                               const Generator* generator, int64_t kv_budget_bytes)
    : registry_(registry),
      generator_(generator),
      kv_budget_bytes_(std::max<int64_t>(1, kv_budget_bytes)),
      series_(MakeSeries(registry, model_name)) {
  Collect();
  collector_id_ = registry_->AddCollector([this] { Collect(); });
}

ServingMetrics::~ServingMetrics() { registry_->RemoveCollector(collector_id_); }

std::shared_ptr<RequestMetrics> ServingMetrics::StartRequest() const {
  return std::make_shared<RequestMetrics>(series_, RequestMetrics::Clock::now());
}

void ServingMetrics::Collect() const {
  const LoadSnapshot load = generator_->Load();
  series_->running->Set(load.active);
  series_->waiting->Set(load.queued);
  const double free = static_cast<double>(std::max<int64_t>(0, load.kv_bytes_free));
  series_->kv_usage->Set(std::clamp(1.0 - free / static_cast<double>(kv_budget_bytes_), 0.0, 1.0));
}

std::string DefaultModelName(const std::string& model_dir) {
  std::string dir = model_dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  const size_t slash = dir.rfind('/');
  std::string name = slash == std::string::npos ? dir : dir.substr(slash + 1);
  return name.empty() ? "unknown" : name;
}

}  // namespace ragserve::decoder
