// A bounded thread pool for slow work, so gRPC threads never block (STYLE.md #8).
//
// Thread safety: all methods may be called from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "services/common/mutex.h"
#include "services/common/status.h"

namespace ragserve {

// Runs `fn` and returns its status; an exception escaping it becomes a status instead of
// terminating the process: std::bad_alloc / std::length_error -> ResourceExhausted, any other
// exception -> Internal (naming `what`). For task and stream boundaries (a library we call may
// throw; no exception crosses into gRPC or the executor).
Status CallCatchingExceptions(const char* what, const std::function<Status()>& fn);

// The caller's deadline `seconds_left` from now (steady clock; max() for an infinite one, now for
// one already past).
std::chrono::steady_clock::time_point SteadyDeadlineIn(double seconds_left);

// How long queued work waits for one of several servers (executor threads, decoder slots), for
// deadline admission: an EWMA (weight 1/8, about the last eight items) of the time finished items
// held a server, starting at the first one's. Not thread-safe: used under its owner's lock.
class ServiceTimeEstimate {
 public:
  // An item left its server after `seconds`.
  void Record(double seconds);
  // The wait of an item with `ahead` items queued before it while all `servers` are busy, the
  // most recently started one for `youngest_s` so far; estimated low: ahead / servers x the
  // larger of the average and youngest_s (a flood of slow work is known before its first item
  // ends). It leaves out what the busy servers still need and the item's own time.
  double WaitSeconds(size_t ahead, int servers, double youngest_s) const;

 private:
  double mean_s_ = 0;
  bool measured_ = false;
};

// The options that size a BoundedExecutor, as its refusals name them.
struct ExecutorFlagNames {
  std::string threads = "--executor-threads";
  std::string queue = "--executor-queue";
  std::string bytes = "--executor-queue-mb";
};

class BoundedExecutor {
 public:
  // `threads` workers (0 = hardware concurrency) and at most `queue_capacity` waiting tasks.
  // With `byte_budget` > 0, the bytes tasks declare (the request messages they keep alive) are
  // bounded too: queued and running tasks hold at most byte_budget bytes, except that one task
  // is always admitted when no other holds any (so a request larger than the budget still runs,
  // alone).
  // `flags` names the options that set these, quoted in the refusals' messages.
  BoundedExecutor(int threads, int queue_capacity, int64_t byte_budget = 0,
                  ExecutorFlagNames flags = ExecutorFlagNames());
  ~BoundedExecutor();  // Shutdown(), then join.

  static constexpr double kNoDeadline = std::numeric_limits<double>::infinity();

  // Called instead of a task that was dropped from the queue, with the reason (off the executor's
  // lock, on its shedding thread).
  using ShedFn = std::function<void(const Status&)>;

  // Queues `task`, which holds `bytes` (of request it keeps alive) until it has run;
  // ResourceExhausted when the queue is full, the bytes would pass the byte budget, or the task
  // would wait in the queue longer than `seconds_left` (its caller's deadline; see
  // ExpectedWaitSeconds): nothing is queued then. Unavailable after Shutdown(). An exception
  // escaping a task is logged and counted (uncaught_exceptions()); the worker lives on. Tasks
  // that answer a call run their work through CallCatchingExceptions so the caller hears about
  // it.
  // With `shed` and a deadline, the task is also dropped while queued, and `shed` called with
  // ResourceExhausted instead, as soon as the queue ahead of it is expected to outlast its
  // deadline (the estimate of Submit's refusal, re-checked every kShedIntervalSeconds against
  // how long the running tasks have run: admitted when nothing had been measured, a call of a
  // flood of slow work is answered when its wait becomes known, not at its deadline), or when
  // its deadline has passed.
  Status Submit(std::function<void()> task, int64_t bytes = 0, double seconds_left = kNoDeadline,
                ShedFn shed = nullptr);
  static constexpr double kShedIntervalSeconds = 0.1;
  // Takes `bytes` of the byte budget for requests that have not arrived yet (a client stream's
  // messages before they are read), under Submit's rule: ResourceExhausted when they would pass
  // the budget (admitted when nothing else is held). Held until Unreserve.
  Status Reserve(int64_t bytes);
  void Unreserve(int64_t bytes);
  // Takes `bytes` of the budget without a check, for memory that exists already (a call's answer
  // waiting to be sent); given back by Unreserve. Later tasks and reservations see it.
  void Charge(int64_t bytes);
  // Stops accepting tasks; queued tasks still run. Returns immediately; the destructor joins.
  void Shutdown();
  // Blocks until the queue is empty and no task is running, or `timeout_s` passed; true if idle.
  bool WaitIdle(double timeout_s);

  // How long a task submitted now would wait before it starts, estimated low so that a call
  // refused on it would almost surely have reached its deadline in the queue: 0 while a worker
  // is free; else (tasks queued ahead / threads) x the time a task takes, the larger of an
  // average of recent tasks' run times (an EWMA from the first finished task's) and the time the
  // youngest running task has run so far (a flood of slow work is known before its first task
  // ends). It leaves out what the running tasks still need and the task's own run time.
  double ExpectedWaitSeconds() const;

  int threads() const { return static_cast<int>(workers_.size()); }
  int queued() const;
  int capacity() const { return capacity_; }
  // Bytes held by queued and running tasks and by reservations now, and the budget (0 = none).
  int64_t bytes_held() const;
  int64_t byte_budget() const { return byte_budget_; }
  // Exceptions that escaped tasks so far (each one a bug: tasks should not throw).
  int64_t uncaught_exceptions() const;

 private:
  using Clock = std::chrono::steady_clock;

  void WorkerLoop(int worker);
  // Every kShedIntervalSeconds while sheddable tasks are queued: drops those ShedLocked picks.
  void ShedLoop();
  // ResourceExhausted when `bytes` more would pass the budget (see the constructor).
  Status CheckBudget(int64_t bytes) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The wait of a task with `ahead` tasks queued before it (see ExpectedWaitSeconds).
  double ExpectedWaitLocked(Clock::time_point now, size_t ahead) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes from the queue the sheddable tasks whose expected wait passes their deadline (or
  // whose deadline passed); their shed functions and statuses go to `out`.
  void ShedLocked(Clock::time_point now, std::vector<std::pair<ShedFn, Status>>* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The refusal of a call whose wait (`ahead` tasks queued before it) passes its deadline.
  Status Overloaded(size_t ahead, double wait_s, double seconds_left) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  struct Task {
    std::function<void()> fn;
    int64_t bytes = 0;
    Clock::time_point deadline = Clock::time_point::max();
    ShedFn shed;  // set: the task may be dropped while queued (Submit)
  };

  bool AllIdleLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int capacity_;
  const int64_t byte_budget_;
  const ExecutorFlagNames flags_;
  mutable Mutex mu_;
  std::condition_variable cv_;       // signals workers: a task arrived or shutdown
  std::condition_variable idle_cv_;  // signals WaitIdle: a task finished
  std::condition_variable shed_cv_;  // signals ShedLoop: a sheddable task arrived or shutdown
  std::deque<Task> queue_ ABSL_GUARDED_BY(mu_);
  int64_t bytes_held_ ABSL_GUARDED_BY(mu_) = 0;  // queued + running tasks' bytes + reservations
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int64_t uncaught_ ABSL_GUARDED_BY(mu_) = 0;
  // When each worker's task started (Clock::time_point::max() while it is idle): also which
  // workers are running a task.
  std::vector<Clock::time_point> started_ ABSL_GUARDED_BY(mu_);
  ServiceTimeEstimate task_time_ ABSL_GUARDED_BY(mu_);  // run times of finished tasks
  int sheddable_ ABSL_GUARDED_BY(mu_) = 0;              // queued tasks with a shed function
  std::vector<std::thread> workers_;
  std::thread shedder_;
};

}  // namespace ragserve
