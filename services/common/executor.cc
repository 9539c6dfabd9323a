#include "services/common/executor.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <new>
#include <stdexcept>
#include <utility>

#include "services/common/logging.h"

namespace ragserve {

Status CallCatchingExceptions(const char* what, const std::function<Status()>& fn) {
  try {
    return fn();
  } catch (const std::bad_alloc& e) {
    return ResourceExhausted(StrCat(what, ": out of memory (", e.what(), ")"));
  } catch (const std::length_error& e) {
    return ResourceExhausted(StrCat(what, ": size limit exceeded (", e.what(), ")"));
  } catch (const std::exception& e) {
    return Internal(StrCat(what, ": unexpected exception: ", e.what()));
  } catch (...) {
    return Internal(StrCat(what, ": unexpected exception of unknown type"));
  }
}

std::chrono::steady_clock::time_point SteadyDeadlineIn(double seconds_left) {
  using Clock = std::chrono::steady_clock;
  if (seconds_left >= BoundedExecutor::kNoDeadline) return Clock::time_point::max();
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(
                            std::chrono::duration<double>(std::max(seconds_left, 0.0)));
}

void ServiceTimeEstimate::Record(double seconds) {
  mean_s_ = measured_ ? mean_s_ + (seconds - mean_s_) / 8 : seconds;
  measured_ = true;
}

double ServiceTimeEstimate::WaitSeconds(size_t ahead, int servers, double youngest_s) const {
  return static_cast<double>(ahead) / static_cast<double>(servers) * std::max(mean_s_, youngest_s);
}

BoundedExecutor::BoundedExecutor(int threads, int queue_capacity, int64_t byte_budget,
                                 ExecutorFlagNames flags)
    : capacity_(queue_capacity), byte_budget_(byte_budget), flags_(std::move(flags)) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  {
    MutexLock lock(mu_);
    started_.assign(threads, Clock::time_point::max());
  }
  workers_.reserve(threads);
  for (int i = 0; i < threads; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
  shedder_ = std::thread([this] { ShedLoop(); });
}

BoundedExecutor::~BoundedExecutor() {
  Shutdown();
  for (auto& t : workers_) t.join();
  shedder_.join();
}

Status BoundedExecutor::CheckBudget(int64_t bytes) const {
  if (byte_budget_ > 0 && bytes > 0 && bytes_held_ > 0 && bytes > byte_budget_ - bytes_held_) {
    return ResourceExhausted(StrCat("request memory budget: ", bytes_held_,
                                    " bytes of requests are queued, running or being read,"
                                    " this one needs ",
                                    bytes, "; the limit is ", byte_budget_, " (", flags_.bytes,
                                    "); retry later"));
  }
  return OkStatus();
}

double BoundedExecutor::ExpectedWaitLocked(Clock::time_point now, size_t ahead) const {
  Clock::time_point youngest = Clock::time_point::min();
  for (const Clock::time_point& t : started_) {
    if (t == Clock::time_point::max()) return 0;  // a worker is free
    youngest = std::max(youngest, t);
  }
  return task_time_.WaitSeconds(ahead, static_cast<int>(started_.size()),
                                std::chrono::duration<double>(now - youngest).count());
}

double BoundedExecutor::ExpectedWaitSeconds() const {
  MutexLock lock(mu_);
  return ExpectedWaitLocked(Clock::now(), queue_.size());
}

Status BoundedExecutor::Overloaded(size_t ahead, double wait_s, double seconds_left) const {
  return ResourceExhausted(
      StrCat("overloaded: ", ahead, " tasks are queued ahead of this call on ", started_.size(),
             " threads, about ", static_cast<int64_t>(wait_s * 1000),
             " ms of waiting, and its deadline is in ", static_cast<int64_t>(seconds_left * 1000),
             " ms; retry later or with a longer deadline (", flags_.threads, " sets the threads)"));
}

Status BoundedExecutor::Submit(std::function<void()> task, int64_t bytes, double seconds_left,
                               ShedFn shed) {
  bytes = std::max<int64_t>(bytes, 0);
  bool sheddable = false;
  {
    MutexLock lock(mu_);
    if (stopping_) return Unavailable("executor is shutting down");
    if (static_cast<int>(queue_.size()) >= capacity_) {
      return ResourceExhausted(StrCat("work queue is full (", capacity_, " tasks waiting, ",
                                      flags_.queue, "); retry later"));
    }
    RS_RETURN_IF_ERROR(CheckBudget(bytes));
    Task t{std::move(task), bytes};
    sheddable = shed != nullptr && seconds_left < kNoDeadline;
    if (seconds_left < kNoDeadline) {
      const double wait_s = ExpectedWaitLocked(Clock::now(), queue_.size());
      if (wait_s > seconds_left) return Overloaded(queue_.size(), wait_s, seconds_left);
      if (sheddable) {
        t.deadline = SteadyDeadlineIn(seconds_left);
        t.shed = std::move(shed);
        ++sheddable_;
      }
    }
    bytes_held_ += bytes;
    queue_.push_back(std::move(t));
  }
  cv_.notify_one();
  if (sheddable) shed_cv_.notify_one();
  return OkStatus();
}

void BoundedExecutor::ShedLocked(Clock::time_point now,
                                 std::vector<std::pair<ShedFn, Status>>* out) {
  std::deque<Task> kept;
  for (Task& t : queue_) {
    if (t.shed != nullptr) {
      const double left = std::chrono::duration<double>(t.deadline - now).count();
      const double wait_s = ExpectedWaitLocked(now, kept.size());
      if (left <= 0 || wait_s > left) {
        out->emplace_back(std::move(t.shed),
                          left <= 0 ? DeadlineExceeded("its deadline passed while it was queued")
                                    : Overloaded(kept.size(), wait_s, left));
        bytes_held_ -= t.bytes;
        --sheddable_;
        continue;
      }
    }
    kept.push_back(std::move(t));
  }
  queue_.swap(kept);
}

void BoundedExecutor::ShedLoop() {
  const auto interval = std::chrono::duration<double>(kShedIntervalSeconds);
  for (;;) {
    std::vector<std::pair<ShedFn, Status>> shed;
    {
      MutexLock lock(mu_);
      lock.Wait(shed_cv_, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || sheddable_ > 0;
      });
      if (stopping_) return;  // queued tasks still run (Shutdown)
      lock.WaitFor(shed_cv_, interval,
                   [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; });
      if (stopping_) return;
      ShedLocked(Clock::now(), &shed);
    }
    if (!shed.empty()) idle_cv_.notify_all();
    for (auto& item : shed) {
      const Status st = CallCatchingExceptions("shed task", [&item] {
        item.first(item.second);
        return OkStatus();
      });
      if (!st.ok()) RS_LOG(error, "{}", st.ToString());
    }
  }
}

Status BoundedExecutor::Reserve(int64_t bytes) {
  bytes = std::max<int64_t>(bytes, 0);
  MutexLock lock(mu_);
  if (stopping_) return Unavailable("executor is shutting down");
  RS_RETURN_IF_ERROR(CheckBudget(bytes));
  bytes_held_ += bytes;
  return OkStatus();
}

void BoundedExecutor::Charge(int64_t bytes) {
  MutexLock lock(mu_);
  bytes_held_ += std::max<int64_t>(bytes, 0);
}

void BoundedExecutor::Unreserve(int64_t bytes) {
  MutexLock lock(mu_);
  bytes_held_ -= std::max<int64_t>(bytes, 0);
}

void BoundedExecutor::Shutdown() {
  {
    MutexLock lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  shed_cv_.notify_all();
}

bool BoundedExecutor::WaitIdle(double timeout_s) {
  MutexLock lock(mu_);
  return lock.WaitFor(
      idle_cv_, std::chrono::duration<double>(timeout_s),
      [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return queue_.empty() && AllIdleLocked(); });
}

bool BoundedExecutor::AllIdleLocked() const {
  return std::all_of(started_.begin(), started_.end(),
                     [](Clock::time_point t) { return t == Clock::time_point::max(); });
}

int BoundedExecutor::queued() const {
  MutexLock lock(mu_);
  return static_cast<int>(queue_.size());
}

int64_t BoundedExecutor::bytes_held() const {
  MutexLock lock(mu_);
  return bytes_held_;
}

int64_t BoundedExecutor::uncaught_exceptions() const {
  MutexLock lock(mu_);
  return uncaught_;
}

void BoundedExecutor::WorkerLoop(int worker) {
  for (;;) {
    Task task;
    {
      MutexLock lock(mu_);
      lock.Wait(cv_, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !queue_.empty();
      });
      if (queue_.empty()) return;  // stopping and drained
      task = std::move(queue_.front());
      queue_.pop_front();
      if (task.shed != nullptr) --sheddable_;
      started_[worker] = Clock::now();
    }
    const Status st = CallCatchingExceptions("executor task", [&task] {
      task.fn();
      return OkStatus();
    });
    if (!st.ok()) RS_LOG(error, "{}", st.ToString());
    task.fn = nullptr;  // frees what the task captured before its bytes are returned
    {
      MutexLock lock(mu_);
      task_time_.Record(std::chrono::duration<double>(Clock::now() - started_[worker]).count());
      started_[worker] = Clock::time_point::max();
      bytes_held_ -= task.bytes;
      if (!st.ok()) ++uncaught_;
    }
    idle_cv_.notify_all();
  }
}

}  // namespace ragserve
