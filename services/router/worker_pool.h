// The router's view of its decode workers: discovery, health, load, routing policy, circuit
// breaking.
//
// Workers come from a static list of host:port and/or a DNS name (e.g. a headless Kubernetes
// Service "decoder.ns.svc:50055") re-resolved every `resolve_interval_s`. A poller thread calls
// GetLoad on every worker every `poll_interval_s`; a worker that fails it is unhealthy until it
// answers again. Policies:
//   round_robin  next healthy worker in turn;
//   least_load   fewest (in flight + active + queued requests), then fewest queued tokens;
//   cache_aware  cost = prompt tokens the worker would have to prefill (passages whose cache keys
//                it does not report as resident) + load_weight * its load, among workers whose
//                in-flight count is within max_imbalance of the least loaded one (so a worker
//                holding the hot passages is preferred but never flooded, and none is starved).
// A worker whose health (grpc.health.v1, service "ragserve.v1.DecoderService") is NOT_SERVING
// is draining: it finishes its calls but is picked for no new one.
// Circuit breaker: `breaker_failures` consecutive worker faults (see ClassifyWorkerCall) open it
// for `breaker_cooldown_s`; then one trial call is let through (half-open). A busy worker
// (RESOURCE_EXHAUSTED), a CANCELLED call or a caller that gave up neither counts nor resets it.
// Thread safety: all methods may be called from any thread.
#pragma once

#include <grpcpp/channel.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "ragserve/v1/decoder.grpc.pb.h"
#include "services/common/client.h"
#include "services/common/mutex.h"
#include "services/common/status.h"

namespace ragserve::router {

enum class Policy { kRoundRobin, kLeastLoad, kCacheAware };

// How one call to a worker ended, for failover and the circuit breaker.
enum class CallOutcome {
  kAnswered,     // OK, or an error about the request itself: no failover; resets the breaker
  kWorkerFault,  // the worker failed or did not answer in time: fail over; counts for the breaker
  // RESOURCE_EXHAUSTED (queue or KV budget full), or CANCELLED while the client's call still
  // looked alive (a client cancel propagated to the worker call can win that race): fail over;
  // the breaker is untouched.
  kTryElsewhere,
  kCallerGaveUp  // the client cancelled or its deadline passed: stop; breaker untouched
};
// `caller_done`: the client's own call was cancelled or is past its deadline (then CANCELLED and
// DEADLINE_EXCEEDED are the caller's doing, not the worker's).
CallOutcome ClassifyWorkerCall(grpc::StatusCode code, bool caller_done);
// kWorkerFault and kTryElsewhere: the request may move to another worker.
bool ShouldFailOver(CallOutcome outcome);
StatusOr<Policy> ParsePolicy(const std::string& name);  // "round_robin" | "least_load" | ...

struct WorkerPoolOptions {
  std::vector<std::string> addresses;  // static host:port list
  std::string dns;                     // host:port re-resolved to all its A/AAAA records
  double resolve_interval_s = 5;
  double poll_interval_s = 1;
  int max_inflight_per_worker = 32;  // beyond: the worker is not picked
  int max_imbalance = 4;             // cache_aware: in-flight spread allowed
  double load_weight = 64;           // cache_aware: tokens of prefill one unit of load costs
  int breaker_failures = 3;
  double breaker_cooldown_s = 5;
  // Longest a Generate call may run when the client allows longer (or set no deadline): a worker
  // that accepts a call and never answers releases the router thread after this.
  double call_timeout_s = 300;
  std::string token;  // Bearer token for the workers
  ChannelOptions channel;
};

class Worker {
 public:
  Worker(std::string address, std::shared_ptr<grpc::Channel> channel);
  const std::string& address() const { return address_; }
  v1::DecoderService::Stub* stub() { return stub_.get(); }
  int inflight() const { return inflight_.load(); }

 private:
  friend class WorkerPool;
  friend class WorkerLease;
  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::DecoderService::Stub> stub_;
  std::atomic<int> inflight_{0};
  // Guarded by WorkerPool::mu_ (a comment only: an annotation cannot name another object's
  // mutex; WorkerPool's own fields are checked):
  bool healthy = false;
  bool draining = false;  // health says NOT_SERVING: no new calls
  bool in_dns = false;
  v1::LoadReport load;
  std::set<std::string> cached_keys;
  std::map<std::string, std::chrono::steady_clock::time_point> routed_keys;  // key -> routed at
  int consecutive_failures = 0;
  std::chrono::steady_clock::time_point open_until{};
  bool trial_in_flight = false;
};

// A picked worker; Release() (or the destructor) returns the in-flight slot.
class WorkerLease {
 public:
  WorkerLease() = default;
  WorkerLease(std::shared_ptr<Worker> w) : w_(std::move(w)) {}
  WorkerLease(WorkerLease&& o) noexcept : w_(std::move(o.w_)) {}
  WorkerLease& operator=(WorkerLease&& o) noexcept;
  ~WorkerLease() { Release(); }
  void Release();
  Worker* operator->() const { return w_.get(); }
  explicit operator bool() const { return w_ != nullptr; }
  const std::shared_ptr<Worker>& get() const { return w_; }

 private:
  std::shared_ptr<Worker> w_;
};

struct PickHint {
  std::vector<int64_t> passage_tokens;  // passages' estimated prompt tokens
  std::vector<std::string> cache_keys;  // their context-cache keys (hex), when known
  int64_t other_tokens = 0;             // question + template tokens (never cached)
  std::set<std::string> exclude;        // addresses already tried for this request
};

class WorkerPool {
 public:
  static StatusOr<std::unique_ptr<WorkerPool>> Create(WorkerPoolOptions opts);
  ~WorkerPool();

  // A healthy worker by `policy`, its in-flight slot taken. Unavailable when no worker is known
  // or healthy; ResourceExhausted when every healthy worker is at max_inflight_per_worker.
  StatusOr<WorkerLease> Pick(Policy policy, const PickHint& hint);
  // Outcome of a call on a worker (feeds the circuit breaker and health).
  void Report(const Worker& w, CallOutcome outcome, const grpc::Status& st);
  // The same, classified with caller_done = false.
  void Report(const Worker& w, const grpc::Status& st);
  // Runs one discovery + poll round now (tests, startup).
  void RefreshNow();

  const WorkerPoolOptions& options() const { return opts_; }

 private:
  explicit WorkerPool(WorkerPoolOptions opts);
  StatusOr<WorkerLease> PickOnce(Policy policy, const PickHint& hint);
  void PollLoop();
  void Resolve();
  void Poll();
  // GetLoad (load, cached keys) and health (draining) of one worker.
  void PollWorker(const std::shared_ptr<Worker>& w);
  std::shared_ptr<Worker> AddWorker(const std::string& address) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  WorkerPoolOptions opts_;
  mutable Mutex mu_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<Worker>> workers_ ABSL_GUARDED_BY(mu_);
  size_t rr_next_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::chrono::steady_clock::time_point next_resolve_{};
  std::thread poller_;
};

}  // namespace ragserve::router
