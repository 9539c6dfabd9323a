#include "services/common/metrics.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <regex>
#include <sstream>

#include "httplib.h"

namespace ragserve {
namespace {

bool ValidMetricName(const std::string& s) {
  static const std::regex re("[a-zA-Z_:][a-zA-Z0-9_:]*");
  return std::regex_match(s, re);
}
bool ValidLabelName(const std::string& s) {
  static const std::regex re("[a-zA-Z_][a-zA-Z0-9_]*");
  return std::regex_match(s, re) && s.rfind("__", 0) != 0;
}

[[noreturn]] void Die(const std::string& msg) {
  std::fprintf(stderr, "metrics: %s\n", msg.c_str());
  std::abort();
}

// Label values escape backslash, double quote and newline; HELP text escapes backslash, newline.
std::string Escape(const std::string& s, bool quote) {
  std::string out;
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (quote && c == '"') {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  // Shortest text that reads back as the same double (0.1, not 0.10000000000000001).
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, res.ptr);
}

std::string FormatLabels(const Labels& labels, const std::string& extra_name = "",
                         const std::string& extra_value = "") {
  if (labels.empty() && extra_name.empty()) return "";
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) out += ",";
    first = false;
    out += k + "=\"" + Escape(v, true) + "\"";
  }
  if (!extra_name.empty()) {
    if (!first) out += ",";
    out += extra_name + "=\"" + extra_value + "\"";
  }
  return out + "}";
}

}  // namespace

void Counter::Inc(double v) {
  if (v < 0 || std::isnan(v)) return;
  value_.fetch_add(v, std::memory_order_relaxed);
}

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)) {
  for (size_t i = 1; i < bounds_.size(); ++i) {
    if (!(bounds_[i] > bounds_[i - 1])) Die("histogram bounds must be strictly increasing");
  }
  counts_.assign(bounds_.size() + 1, 0);
}

void Histogram::Observe(double v) {
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  MutexLock lock(mu_);
  ++counts_[i];
  sum_ += v;
  ++count_;
}

void Histogram::Observe(double v, uint64_t n) {
  if (n == 0) return;
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  MutexLock lock(mu_);
  counts_[i] += n;
  sum_ += v * static_cast<double>(n);
  count_ += n;
}

void Histogram::Snapshot(std::vector<uint64_t>* cumulative, double* sum, uint64_t* count) const {
  MutexLock lock(mu_);
  cumulative->resize(counts_.size());
  uint64_t acc = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    acc += counts_[i];
    (*cumulative)[i] = acc;
  }
  *sum = sum_;
  *count = count_;
}

std::vector<double> LatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
          0.1,    0.25,    0.5,    1.0,   2.5,    5.0,   10.0, 30.0,  60.0};
}

std::vector<double> TimeToFirstTokenBuckets() {
  return {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25, 0.5,  0.75,
          1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160., 640., 2560.};
}

std::vector<double> TimePerOutputTokenBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,  0.15, 0.2,  0.3,
          0.4,   0.5,    0.75,  1.0,  2.5,   5.0,  7.5,   10.0, 20.0, 40.0, 80.0};
}

std::vector<double> RequestLatencyBuckets() {
  return {0.01, 0.025, 0.05, 0.1,  0.3,  0.5,  0.8,  1.0,  1.5,  2.0,  2.5,   5.0,  10.0,
          15.0, 20.0,  30.0, 40.0, 50.0, 60.0, 120., 240., 480., 960., 1920., 7680.};
}

MetricsRegistry::Family& MetricsRegistry::FamilyFor(const std::string& name,
                                                    const std::string& help, Type type,
                                                    const Labels& labels) {
  if (!ValidMetricName(name)) Die("bad metric name '" + name + "'");
  for (const auto& [k, v] : labels) {
    if (!ValidLabelName(k) || k == "le") Die("bad label name '" + k + "' on " + name);
  }
  auto [it, inserted] = families_.try_emplace(name);
  if (inserted) {
    it->second.type = type;
    it->second.help = help;
  } else if (it->second.type != type) {
    Die("metric '" + name + "' registered twice with different types");
  }
  return it->second;
}

Counter& MetricsRegistry::GetCounter(const std::string& name, const std::string& help,
                                     const Labels& labels) {
  MutexLock lock(mu_);
  auto& slot = FamilyFor(name, help, Type::kCounter, labels).counters[labels];
  if (!slot) slot = std::make_unique<Counter>();
  return *slot;
}

Gauge& MetricsRegistry::GetGauge(const std::string& name, const std::string& help,
                                 const Labels& labels) {
  MutexLock lock(mu_);
  auto& slot = FamilyFor(name, help, Type::kGauge, labels).gauges[labels];
  if (!slot) slot = std::make_unique<Gauge>();
  return *slot;
}

Histogram& MetricsRegistry::GetHistogram(const std::string& name, const std::string& help,
                                         const std::vector<double>& bounds, const Labels& labels) {
  MutexLock lock(mu_);
  auto& slot = FamilyFor(name, help, Type::kHistogram, labels).histograms[labels];
  if (!slot) slot = std::make_unique<Histogram>(bounds);
  return *slot;
}

int MetricsRegistry::AddCollector(std::function<void()> collect) {
  MutexLock lock(collect_mu_);
  const int id = next_collector_++;
  collectors_.emplace(id, std::move(collect));
  return id;
}

void MetricsRegistry::RemoveCollector(int id) {
  MutexLock lock(collect_mu_);
  collectors_.erase(id);
}

std::string MetricsRegistry::RenderText() const {
  {
    MutexLock collect(collect_mu_);
    for (const auto& [id, collect_fn] : collectors_) collect_fn();
  }
  MutexLock lock(mu_);
  std::ostringstream out;
  for (const auto& [name, fam] : families_) {
    static const char* kTypeNames[] = {"counter", "gauge", "histogram"};
    out << "# HELP " << name << " " << Escape(fam.help, false) << "\n";
    out << "# TYPE " << name << " " << kTypeNames[static_cast<int>(fam.type)] << "\n";
    for (const auto& [labels, c] : fam.counters) {
      out << name << FormatLabels(labels) << " " << FormatValue(c->Value()) << "\n";
    }
    for (const auto& [labels, g] : fam.gauges) {
      out << name << FormatLabels(labels) << " " << FormatValue(g->Value()) << "\n";
    }
    for (const auto& [labels, h] : fam.histograms) {
      std::vector<uint64_t> cum;
      double sum;
      uint64_t count;
      h->Snapshot(&cum, &sum, &count);
      for (size_t i = 0; i < h->bounds().size(); ++i) {
        out << name << "_bucket" << FormatLabels(labels, "le", FormatValue(h->bounds()[i])) << " "
            << cum[i] << "\n";
      }
      out << name << "_bucket" << FormatLabels(labels, "le", "+Inf") << " " << cum.back() << "\n";
      out << name << "_sum" << FormatLabels(labels) << " " << FormatValue(sum) << "\n";
      out << name << "_count" << FormatLabels(labels) << " " << count << "\n";
    }
  }
  return out.str();
}

MetricsRegistry& MetricsRegistry::Default() {
  static MetricsRegistry* registry = new MetricsRegistry();  // never destroyed: used at exit
  return *registry;
}

MetricsHttpServer::MetricsHttpServer(MetricsRegistry* registry) : registry_(registry) {}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

StatusOr<int> MetricsHttpServer::Start(const std::string& host, int port) {
  server_ = std::make_unique<httplib::Server>();
  server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(registry_->RenderText(), "text/plain; version=0.0.4; charset=utf-8");
  });
  server_->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  int bound = port;
  if (port == 0) {
    bound = server_->bind_to_any_port(host);
    if (bound < 0) bound = 0;
  } else if (!server_->bind_to_port(host, port)) {
    bound = 0;
  }
  if (bound <= 0) {
    server_.reset();
    return Unavailable(StrCat("metrics server cannot listen on ", host, ":", port,
                              " (address in use or not available)"));
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  // The socket is already bound and listening (connections queue in the backlog), so the port is
  // usable as soon as we return; is_running() turns true once the accept loop has started.
  for (int i = 0; i < 2000 && !server_->is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return bound;
}

void MetricsHttpServer::Stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
  server_.reset();
}

}  // namespace ragserve
