#include "services/common/executor.h"

#include <chrono>

namespace ragserve {

BoundedExecutor::BoundedExecutor(int threads, int queue_capacity) : capacity_(queue_capacity) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  workers_.reserve(threads);
  for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

BoundedExecutor::~BoundedExecutor() {
  Shutdown();
  for (auto& t : workers_) t.join();
}

Status BoundedExecutor::Submit(std::function<void()> task) {
  {
    MutexLock lock(mu_);
    if (stopping_) return Unavailable("executor is shutting down");
    if (static_cast<int>(queue_.size()) >= capacity_) {
      return ResourceExhausted(StrCat("work queue is full (", capacity_, " tasks waiting)"));
    }
    queue_.push_back(std::move(task));
  }
  cv_.notify_one();
  return OkStatus();
}

void BoundedExecutor::Shutdown() {
  {
    MutexLock lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
}

bool BoundedExecutor::WaitIdle(double timeout_s) {
  MutexLock lock(mu_);
  return lock.WaitFor(
      idle_cv_, std::chrono::duration<double>(timeout_s),
      [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return queue_.empty() && running_ == 0; });
}

int BoundedExecutor::queued() const {
  MutexLock lock(mu_);
  return static_cast<int>(queue_.size());
}

void BoundedExecutor::WorkerLoop() {
  for (;;) {
    std::function<void()> task;
    {
      MutexLock lock(mu_);
      lock.Wait(cv_, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !queue_.empty();
      });
      if (queue_.empty()) return;  // stopping and drained
      task = std::move(queue_.front());
      queue_.pop_front();
      ++running_;
    }
    task();
    {
      MutexLock lock(mu_);
      --running_;
    }
    idle_cv_.notify_all();
  }
}

}  // namespace ragserve
