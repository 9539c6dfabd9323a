#include "services/router/stall_watchdog.h"

#include <grpcpp/client_context.h>

#include <algorithm>

namespace ragserve::router {

namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

StallWatchdog::StallWatchdog(std::chrono::milliseconds idle)
    : idle_(std::max(idle, std::chrono::milliseconds(1))), thread_([this] { Run(); }) {}

StallWatchdog::~StallWatchdog() {
  {
    MutexLock lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::unique_ptr<StallWatchdog::Watch> StallWatchdog::Start(grpc::ClientContext* ctx) {
  std::unique_ptr<Watch> w(new Watch(this, ctx));
  MutexLock lock(mu_);
  watches_.insert(w.get());
  return w;
}

void StallWatchdog::Remove(Watch* w) {
  MutexLock lock(mu_);
  watches_.erase(w);
}

void StallWatchdog::Run() {
  // A stalled call is cancelled between idle and idle + period after its last message.
  const auto period =
      std::clamp(idle_ / 4, std::chrono::milliseconds(10), std::chrono::milliseconds(1000));
  const int64_t idle_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(idle_).count();
  MutexLock lock(mu_);
  while (
      !lock.WaitFor(cv_, period, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; })) {
    const int64_t now = NowNs();
    for (Watch* w : watches_) {
      const int64_t last = w->last_ns_.load();
      if (last != 0 && now - last > idle_ns && !w->fired_.exchange(true)) w->ctx_->TryCancel();
    }
  }
}

StallWatchdog::Watch::~Watch() { dog_->Remove(this); }

void StallWatchdog::Watch::Touch() { last_ns_.store(NowNs()); }

}  // namespace ragserve::router
