// Metrics registry (counter, gauge, histogram with labels) rendered in the Prometheus text
// exposition format (version 0.0.4), and a small HTTP server for /metrics.
//
// Thread safety: the registry and every metric are safe to use from any thread. Metric objects
// live as long as their registry; looking one up again with the same name and labels returns the
// same object, so hot paths can cache the reference.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "services/common/mutex.h"
#include "services/common/status.h"

namespace httplib {
class Server;
}

namespace ragserve {

using Labels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  // Adds v (must be >= 0; negative values are ignored: a counter never goes down).
  void Inc(double v = 1.0);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double v) { value_.fetch_add(v, std::memory_order_relaxed); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Histogram {
 public:
  // `bounds`: strictly increasing upper bounds; +Inf is implicit.
  explicit Histogram(std::vector<double> bounds);
  void Observe(double v);
  // n observations of v at once (a request's n output tokens at their mean interval).
  void Observe(double v, uint64_t n);
  // Cumulative counts per bound (+Inf last), sum and count, read consistently.
  void Snapshot(std::vector<uint64_t>* cumulative, double* sum, uint64_t* count) const;
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  std::vector<double> bounds_;
  mutable Mutex mu_;
  std::vector<uint64_t> counts_ ABSL_GUARDED_BY(mu_);  // one per bound + one for +Inf
  double sum_ ABSL_GUARDED_BY(mu_) = 0.0;
  uint64_t count_ ABSL_GUARDED_BY(mu_) = 0;
};

// Default latency buckets in seconds (100 us .. 60 s).
std::vector<double> LatencyBuckets();
// Buckets of the serving histograms (decoder and router), in seconds: vLLM's, with finer ones
// below its smallest added for CPU decoding.
std::vector<double> TimeToFirstTokenBuckets();    // 1 ms .. 2560 s
std::vector<double> TimePerOutputTokenBuckets();  // 1 ms .. 80 s
std::vector<double> RequestLatencyBuckets();      // 10 ms .. 7680 s

class MetricsRegistry {
 public:
  // Finds or creates a metric. Names must match [a-zA-Z_:][a-zA-Z0-9_:]* and label names
  // [a-zA-Z_][a-zA-Z0-9_]*; a name reused with another type or a bad name is a programming error
  // and aborts with a message.
  Counter& GetCounter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge& GetGauge(const std::string& name, const std::string& help, const Labels& labels = {});
  Histogram& GetHistogram(const std::string& name, const std::string& help,
                          const std::vector<double>& bounds, const Labels& labels = {});

  // The whole registry in the Prometheus text format, families sorted by name. Runs the
  // collectors first.
  std::string RenderText() const;

  // Registers `collect`, run on the scraping thread at the start of every RenderText to refresh
  // values kept elsewhere (a queue length read into a gauge). It must not add or remove
  // collectors. Returns the id for RemoveCollector.
  int AddCollector(std::function<void()> collect);
  // Unregisters a collector; waits for a collection in progress, so what the collector reads may
  // be freed as soon as this returns.
  void RemoveCollector(int id);

  // The process-wide registry that services and libraries report into.
  static MetricsRegistry& Default();

 private:
  enum class Type { kCounter, kGauge, kHistogram };
  struct Family {
    Type type;
    std::string help;
    std::map<Labels, std::unique_ptr<Counter>> counters;
    std::map<Labels, std::unique_ptr<Gauge>> gauges;
    std::map<Labels, std::unique_ptr<Histogram>> histograms;
  };
  Family& FamilyFor(const std::string& name, const std::string& help, Type type,
                    const Labels& labels) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable Mutex mu_;
  std::map<std::string, Family> families_ ABSL_GUARDED_BY(mu_);
  // Taken before mu_ (a collector sets metrics), never after it.
  mutable Mutex collect_mu_;
  std::map<int, std::function<void()>> collectors_ ABSL_GUARDED_BY(collect_mu_);
  int next_collector_ ABSL_GUARDED_BY(collect_mu_) = 0;
};

// Serves GET /metrics (the registry's text) and GET /healthz ("ok") on its own thread.
class MetricsHttpServer {
 public:
  explicit MetricsHttpServer(MetricsRegistry* registry);
  ~MetricsHttpServer();
  // Binds host:port (port 0 = any free port) and starts serving; returns the bound port.
  StatusOr<int> Start(const std::string& host, int port);
  void Stop();

 private:
  MetricsRegistry* registry_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

}  // namespace ragserve
