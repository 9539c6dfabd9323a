// Cancels streaming client calls whose peer stops sending mid-stream (a hung or SIGSTOPped
// decode worker): the router's Generate streams otherwise wait for the client's deadline, since
// a stopped process keeps its TCP connection open and keepalive takes 30 s + 20 s to notice.
//
// Thread safety: all methods are thread-safe. One background thread checks every watched call
// a few times per idle period; it holds the watchdog's mutex only to scan and cancel
// (ClientContext::TryCancel does not block).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <set>
#include <thread>

#include "services/common/mutex.h"

namespace grpc {
class ClientContext;
}

namespace ragserve::router {

class StallWatchdog {
 public:
  class Watch;

  // `idle` > 0: how long an armed call may go without a message before it is cancelled.
  explicit StallWatchdog(std::chrono::milliseconds idle);
  ~StallWatchdog();  // stops the thread; every Watch must be gone
  StallWatchdog(const StallWatchdog&) = delete;
  StallWatchdog& operator=(const StallWatchdog&) = delete;

  // Watches the call of `ctx`, which must outlive the returned Watch. The call is not watched
  // until the first Touch() (a peer may take long for its first message: a long prefill).
  std::unique_ptr<Watch> Start(grpc::ClientContext* ctx);
  std::chrono::milliseconds idle() const { return idle_; }

 private:
  void Run();
  void Remove(Watch* w);

  const std::chrono::milliseconds idle_;
  Mutex mu_;
  std::condition_variable cv_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::set<Watch*> watches_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;  // last: starts after the fields above exist
};

class StallWatchdog::Watch {
 public:
  ~Watch();  // stops watching: no cancel reaches the context after this
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;

  // A message arrived: the idle period (re)starts now.
  void Touch();
  // The watchdog cancelled the call because it was idle for longer than idle().
  bool fired() const { return fired_.load(); }

 private:
  friend class StallWatchdog;
  Watch(StallWatchdog* dog, grpc::ClientContext* ctx) : dog_(dog), ctx_(ctx) {}

  StallWatchdog* const dog_;
  grpc::ClientContext* const ctx_;
  std::atomic<int64_t> last_ns_{0};  // steady clock of the last Touch(); 0 = not armed yet
  std::atomic<bool> fired_{false};
};

}  // namespace ragserve::router
