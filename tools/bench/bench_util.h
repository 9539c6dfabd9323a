// Shared pieces of the benchmark programs: what the machine was when the numbers were taken.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "services/common/status.h"

// A benchmark program stops at the first failed step, saying where.
#define CHECK_OK(expr)                                                                 \
  do {                                                                                 \
    const ::ragserve::Status st_ = (expr);                                             \
    if (!st_.ok()) {                                                                   \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, st_.ToString().c_str()); \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

namespace ragserve::bench {

// The value of v, or exit(1) naming `what`.
template <typename T>
T Must(StatusOr<T> v, const char* what) {
  if (!v.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, v.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(*v);
}

// The first "model name" of /proc/cpuinfo ("unknown cpu" when there is none).
inline std::string CpuModel() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown cpu";
}

// Logical CPUs listed in /proc/cpuinfo.
inline int CpuCount() {
  std::ifstream f("/proc/cpuinfo");
  int n = 0;
  for (std::string line; std::getline(f, line);) n += line.rfind("processor", 0) == 0;
  return n;
}

// The 1, 5 and 15 minute load averages: "0.12 0.30 0.41".
inline std::string LoadAvg() {
  std::ifstream l("/proc/loadavg");
  std::string a, b, c;
  l >> a >> b >> c;
  return a + " " + b + " " + c;
}

// "<cpu model>, <n> cpus, loadavg <1 5 15>": the machine line every bench table starts with.
inline std::string MachineLine() {
  return CpuModel() + ", " + std::to_string(CpuCount()) + " cpus, loadavg " + LoadAvg();
}

// Next-token logits -> probabilities (double, max-subtracted).
inline std::vector<double> Softmax(const std::vector<float>& logits) {
  const float mx = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double s = 0;
  for (size_t i = 0; i < logits.size(); ++i) s += p[i] = std::exp(double{logits[i]} - mx);
  for (double& x : p) x /= s;
  return p;
}

// KL(p || q) in nats.
inline double Kl(const std::vector<double>& p, const std::vector<double>& q) {
  double kl = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] > 0) kl += p[i] * (std::log(p[i]) - std::log(std::max(q[i], 1e-300)));
  }
  return kl;
}

}  // namespace ragserve::bench
