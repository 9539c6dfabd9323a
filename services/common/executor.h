// A bounded thread pool for slow work, so gRPC threads never block (STYLE.md #8).
//
// Thread safety: all methods may be called from any thread.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "services/common/mutex.h"
#include "services/common/status.h"

namespace ragserve {

class BoundedExecutor {
 public:
  // `threads` workers (0 = hardware concurrency) and at most `queue_capacity` waiting tasks.
  BoundedExecutor(int threads, int queue_capacity);
  ~BoundedExecutor();  // Shutdown(), then join.

  // Queues `task`; ResourceExhausted when the queue is full, Unavailable after Shutdown().
  Status Submit(std::function<void()> task);
  // Stops accepting tasks; queued tasks still run. Returns immediately; the destructor joins.
  void Shutdown();
  // Blocks until the queue is empty and no task is running, or `timeout_s` passed; true if idle.
  bool WaitIdle(double timeout_s);

  int threads() const { return static_cast<int>(workers_.size()); }
  int queued() const;
  int capacity() const { return capacity_; }

 private:
  void WorkerLoop();

  const int capacity_;
  mutable Mutex mu_;
  std::condition_variable cv_;       // signals workers: a task arrived or shutdown
  std::condition_variable idle_cv_;  // signals WaitIdle: a task finished
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace ragserve
