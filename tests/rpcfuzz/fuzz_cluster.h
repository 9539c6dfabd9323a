// What rpc_fuzz and rpc_flood share: the five real service binaries on loopback (tests/e2e/
// cluster.h, tiny model), one raw call of any RPC by its path (grpc::GenericStub, serialized
// messages, cut short or read slowly as the case says), and the process checks (alive, no
// sanitizer report in the log, health SERVING, resident memory from /proc).
#pragma once

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tests/e2e/cluster.h"

namespace ragserve::rpcfuzz {

// The cluster names of the five services, in start order.
inline const char* const kServiceNames[] = {"index", "kvr", "ctxcache", "decoder", "router"};

// One call: the RPC, its request messages and how the call is cut short.
struct Case {
  std::string path;
  int64_t deadline_ms = 0;
  int cut_after_writes = -1;  // Client streams: cancel after this many messages (no half-close).
  int cut_after_reads = -1;   // Server streams: cancel after this many responses.
  int read_delay_ms = 0;      // Server streams: wait this long before each read (a slow reader).
  bool invalid_utf8 = false;
  int repeat = 1;  // Replay: send it this many times (a race needs a few tries to show).
  std::vector<std::string> messages;  // Serialized requests.
  // When set, sent instead of `messages`: the same bytes as reference-counted slices, so many
  // concurrent calls of one big request share one copy (rpc_flood).
  std::vector<grpc::Slice> slices;
};

// Fills c->slices from c->messages (one copy; calls then share it).
void ShareMessages(Case* c);

struct Outcome {
  grpc::Status status;
  bool hung = false;  // No completion by deadline + slack (then cancelled).
  int reads = 0;
  double wall_ms = 0;
};

// Sends `c` on `channel` and waits for its end (at most deadline + slack_ms, then cancels).
Outcome Execute(const std::shared_ptr<grpc::Channel>& channel, const Case& c, int64_t slack_ms);

// "RESOURCE_EXHAUSTED" for grpc::StatusCode::RESOURCE_EXHAUSTED, the number for unknown codes.
std::string StatusName(grpc::StatusCode code);

// Resident memory of a process from /proc/<pid>/status: VmRSS now and VmHWM (its peak since it
// started), in KiB; zeros when the process is gone.
struct ProcMemory {
  int64_t rss_kb = 0;
  int64_t hwm_kb = 0;
};
ProcMemory ReadProcMemory(pid_t pid);

// Extra command-line flags per service name ("kvr" -> {"--memory-limit-gib", "1"}), added after
// the defaults below (a later flag wins in CLI11).
using ServiceFlags = std::map<std::string, std::vector<std::string>>;

// index, kvr, ctxcache and one decoder with the tiny model, and the router wired to them, with
// small memory budgets (kvr --memory-limit-gib 1, ctxcache --ram-mb 256, decoder
// --kv-budget-mb 256).
class FuzzCluster {
 public:
  FuzzCluster() = default;

  bool Start(const std::string& dir, const std::string& model, std::string* error,
             const ServiceFlags& extra = {});

  const std::map<std::string, std::shared_ptr<grpc::Channel>>& channels() const {
    return channels_;
  }
  std::shared_ptr<grpc::Channel> channel(const std::string& service) const {
    return channels_.at(service);
  }
  std::string addr(const std::string& service) { return cluster_->Get(service)->addr(); }
  pid_t pid(const std::string& service) { return cluster_->Get(service)->proc->pid(); }
  const std::string& log_path(const std::string& service) { return cluster_->Get(service)->log; }

  // Cheap checks: every process alive, no sanitizer report (or std::terminate) in new log text.
  // "" when all is well; else the failure, and *service names the service at fault.
  std::string CheckProcessesAndLogs(std::string* service);

  // Health SERVING within health_timeout_s and VmRSS <= rss_limit_mb for every service;
  // max_rss_mb[i] (kServiceNames order) keeps the largest VmRSS seen.
  std::string CheckHealthAndMemory(int64_t* max_rss_mb, int64_t rss_limit_mb,
                                   double health_timeout_s = 10);

  // The last few lines of a service's log (where an abort or a sanitizer says why).
  std::string LogTail(const std::string& name);

 private:
  std::unique_ptr<testing::Cluster> cluster_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_;
  std::map<std::string, int64_t> log_offsets_;
};

}  // namespace ragserve::rpcfuzz
