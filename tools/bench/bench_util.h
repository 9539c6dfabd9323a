// Shared pieces of the benchmark programs: the machine line every table starts with.
#pragma once

#include <fstream>
#include <string>

namespace ragserve::bench {

// "<cpu model>, <n> cpus, loadavg <1 5 15>" from /proc (what the numbers were measured on).
inline std::string MachineLine() {
  std::ifstream f("/proc/cpuinfo");
  std::string line, model = "unknown cpu";
  int cpus = 0;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      ++cpus;
    }
  }
  std::ifstream l("/proc/loadavg");
  std::string load;
  std::getline(l, load);
  return model + ", " + std::to_string(cpus) + " cpus, loadavg " + load.substr(0, 14);
}

}  // namespace ragserve::bench
