#include "tools/loadgen/loadgen.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "ragserve/v1/rag.grpc.pb.h"
#include "services/common/auth.h"
#include "services/common/client.h"
#include "services/common/mutex.h"

namespace ragserve::loadgen {

namespace {

using Clock = std::chrono::steady_clock;

using Sample = QueryOutcome;

// Picks question indices: uniform, or Zipf(s) over ranks 1..n via the inverse CDF.
class QuestionPicker {
 public:
  QuestionPicker(size_t n, double s, uint64_t seed) : rng_(seed) {
    cdf_.resize(n);
    double acc = 0;
    for (size_t i = 0; i < n; ++i) {
      acc += s > 0 ? 1.0 / std::pow(static_cast<double>(i + 1), s) : 1.0;
      cdf_[i] = acc;
    }
    for (double& c : cdf_) c /= acc;
  }
  size_t Next() {
    MutexLock lock(mu_);
    const double u = std::uniform_real_distribution<double>(0, 1)(rng_);
    return std::min<size_t>(std::lower_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin(),
                            cdf_.size() - 1);
  }

 private:
  Mutex mu_;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  std::vector<double> cdf_;
};

Sample RunOne(v1::RagService::Stub* stub, const LoadOptions& o, const std::string& question,
              Clock::time_point scheduled) {
  Sample s;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000)));
  AttachToken(&ctx, o.token);
  v1::QueryRequest req;
  req.set_collection(o.collection);
  req.set_question(question);
  req.set_top_k(o.top_k);
  req.set_use_context_cache(o.use_context_cache);
  req.mutable_sampling()->set_max_tokens(o.max_tokens);
  req.mutable_sampling()->set_ignore_eos(true);
  auto reader = stub->Query(&ctx, req);
  v1::QueryEvent ev;
  Clock::time_point first{};
  while (reader->Read(&ev)) {
    if (ev.has_delta() && !ev.delta().token_ids().empty()) {
      if (first == Clock::time_point{}) first = Clock::now();
      s.tokens += ev.delta().token_ids_size();
      s.token_ids.insert(s.token_ids.end(), ev.delta().token_ids().begin(),
                         ev.delta().token_ids().end());
    } else if (ev.has_stats()) {
      s.retries = ev.stats().retries();
      s.prompt_tokens = ev.stats().prompt_tokens();
      s.cached_tokens = ev.stats().cached_prompt_tokens();
      s.worker = ev.stats().worker_id();
    }
  }
  const grpc::Status st = reader->Finish();
  const auto end = Clock::now();
  s.ok = st.ok();
  s.code = std::string(StatusCodeName(static_cast<StatusCode>(st.error_code())));
  if (!st.ok()) s.message = st.error_message();
  s.total_ms = std::chrono::duration<double, std::milli>(end - scheduled).count();
  if (first != Clock::time_point{}) {
    s.ttft_ms = std::chrono::duration<double, std::milli>(first - scheduled).count();
    if (s.tokens > 1) {
      s.tpot_ms = std::chrono::duration<double, std::milli>(end - first).count() / (s.tokens - 1);
    }
  }
  return s;
}

nlohmann::json PercentilesJson(const Percentiles& p) {
  return {{"p50", p.p50}, {"p90", p.p90}, {"p99", p.p99}, {"mean", p.mean}, {"max", p.max}};
}

}  // namespace

QueryOutcome QueryOnce(const std::shared_ptr<grpc::Channel>& channel, const LoadOptions& o,
                       const std::string& question, Clock::time_point scheduled) {
  auto stub = v1::RagService::NewStub(channel);
  return RunOne(stub.get(), o, question, scheduled);
}

Percentiles ComputePercentiles(std::vector<double> v) {
  Percentiles p;
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  auto at = [&](double q) {  // nearest rank
    const size_t idx = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size()))) - 1;
    return v[std::min(idx, v.size() - 1)];
  };
  p.p50 = at(0.50);
  p.p90 = at(0.90);
  p.p99 = at(0.99);
  double sum = 0;
  for (double x : v) sum += x;
  p.mean = sum / static_cast<double>(v.size());
  p.max = v.back();
  return p;
}

StatusOr<std::vector<std::string>> ReadQuestions(const std::string& path) {
  std::ifstream f(path);
  if (!f) return NotFound(StrCat("cannot read questions file ", path));
  std::vector<std::string> out;
  std::string line;
  int n = 0;
  while (std::getline(f, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    if (line[0] == '{') {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.contains("question") || !j["question"].is_string()) {
        return InvalidArgument(StrCat(path, ":", n, ": expected {\"question\": string}"));
      }
      out.push_back(j["question"].get<std::string>());
    } else {
      out.push_back(line);
    }
  }
  if (out.empty()) return InvalidArgument(StrCat(path, ": no questions"));
  return out;
}

StatusOr<LoadReport> RunLoad(const LoadOptions& o) {
  RS_CHECK_ARG(!o.questions.empty(), "no questions");
  RS_CHECK_ARG(o.concurrency >= 1, "concurrency must be >= 1");
  RS_CHECK_ARG(o.requests >= 1, "requests must be >= 1");
  RS_CHECK_ARG(!o.open_loop || o.qps > 0, "open loop needs qps > 0");
  RS_ASSIGN_OR_RETURN(auto channel, MakeChannel(o.addr));
  auto stub = v1::RagService::NewStub(channel);
  QuestionPicker picker(o.questions.size(), o.zipf_s, o.seed);

  // Warmup, closed loop, not counted.
  for (int i = 0; i < o.warmup; ++i) {
    RunOne(stub.get(), o, o.questions[picker.Next()], Clock::now());
  }

  std::vector<Sample> samples(static_cast<size_t>(o.requests));
  const auto t0 = Clock::now();
  if (!o.open_loop) {
    std::atomic<int> next{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < o.concurrency; ++c) {
      clients.emplace_back([&] {
        for (int i = next++; i < o.requests; i = next++) {
          samples[i] = RunOne(stub.get(), o, o.questions[picker.Next()], Clock::now());
        }
      });
    }
    for (auto& t : clients) t.join();
  } else {
    // Arrivals are scheduled up front (exponential gaps); `concurrency` senders take them in
    // order and measure from the scheduled time.
    std::mt19937_64 rng(o.seed ^ 0x9e3779b97f4a7c15ull);
    std::exponential_distribution<double> gap(o.qps);
    std::vector<Clock::time_point> at(samples.size());
    double t = 0;
    for (auto& a : at) {
      t += gap(rng);
      a = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(t));
    }
    std::atomic<int> next{0};
    std::vector<std::thread> senders;
    for (int c = 0; c < o.concurrency; ++c) {
      senders.emplace_back([&] {
        for (int i = next++; i < o.requests; i = next++) {
          std::this_thread::sleep_until(at[i]);
          samples[i] = RunOne(stub.get(), o, o.questions[picker.Next()], at[i]);
        }
      });
    }
    for (auto& th : senders) th.join();
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();

  LoadReport r;
  r.requests = o.requests;
  r.duration_s = secs;
  std::vector<double> ttft, tpot, total;
  int64_t tokens = 0;
  for (const auto& s : samples) {
    if (!s.ok) {
      ++r.errors[s.code];
      continue;
    }
    ++r.ok;
    ttft.push_back(s.ttft_ms);
    if (s.tokens > 1) tpot.push_back(s.tpot_ms);
    total.push_back(s.total_ms);
    tokens += s.tokens;
    r.prompt_tokens += s.prompt_tokens;
    r.cached_prompt_tokens += s.cached_tokens;
    ++r.per_worker[s.worker];
  }
  r.throughput_rps = r.ok / secs;
  r.output_tokens_per_s = static_cast<double>(tokens) / secs;
  r.ttft_ms = ComputePercentiles(ttft);
  r.tpot_ms = ComputePercentiles(tpot);
  r.total_ms = ComputePercentiles(total);
  return r;
}

std::string LoadReport::ToJson() const {
  nlohmann::json j;
  j["requests"] = requests;
  j["ok"] = ok;
  j["errors"] = errors;
  j["duration_s"] = duration_s;
  j["throughput_rps"] = throughput_rps;
  j["output_tokens_per_s"] = output_tokens_per_s;
  j["ttft_ms"] = PercentilesJson(ttft_ms);
  j["tpot_ms"] = PercentilesJson(tpot_ms);
  j["total_ms"] = PercentilesJson(total_ms);
  j["prompt_tokens"] = prompt_tokens;
  j["cached_prompt_tokens"] = cached_prompt_tokens;
  j["cache_hit_rate"] =
      prompt_tokens > 0 ? static_cast<double>(cached_prompt_tokens) / prompt_tokens : 0.0;
  j["per_worker"] = per_worker;
  return j.dump(2);
}

std::string LoadReport::ToText() const {
  std::ostringstream os;
  char buf[256];
  std::snprintf(buf, sizeof(buf), "requests %d, ok %d, %.2f req/s, %.1f output tok/s over %.1f s\n",
                requests, ok, throughput_rps, output_tokens_per_s, duration_s);
  os << buf;
  auto line = [&](const char* name, const Percentiles& p) {
    std::snprintf(buf, sizeof(buf), "%-6s p50 %8.1f ms  p90 %8.1f ms  p99 %8.1f ms  max %8.1f ms\n",
                  name, p.p50, p.p90, p.p99, p.max);
    os << buf;
  };
  line("TTFT", ttft_ms);
  line("TPOT", tpot_ms);
  line("total", total_ms);
  for (const auto& [code, n] : errors) os << "error " << code << ": " << n << "\n";
  for (const auto& [w, n] : per_worker) os << "worker " << w << ": " << n << " requests\n";
  return os.str();
}

}  // namespace ragserve::loadgen
