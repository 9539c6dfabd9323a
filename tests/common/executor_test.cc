#include "services/common/executor.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace ragserve {
namespace {

TEST(ExecutorTest, RunsEveryAcceptedTask) {
  BoundedExecutor ex(2, 1000);
  std::atomic<int> sum{0};
  for (int i = 1; i <= 100; ++i) {
    ASSERT_TRUE(ex.Submit([&sum, i] { sum += i; }).ok());
  }
  ASSERT_TRUE(ex.WaitIdle(30));
  EXPECT_EQ(sum.load(), 5050);
}

TEST(ExecutorTest, FullQueueIsResourceExhaustedAndShutdownIsUnavailable) {
  BoundedExecutor ex(1, 2);
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  bool started = false;
  auto block = [&] {
    std::unique_lock<std::mutex> lock(mu);
    started = true;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
  };
  ASSERT_TRUE(ex.Submit(block).ok());
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return started; });  // the worker is busy now
  }
  ASSERT_TRUE(ex.Submit([] {}).ok());
  ASSERT_TRUE(ex.Submit([] {}).ok());
  Status full = ex.Submit([] {});
  EXPECT_EQ(full.code(), StatusCode::kResourceExhausted) << full.ToString();
  EXPECT_EQ(ex.queued(), 2);
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  ASSERT_TRUE(ex.WaitIdle(30));
  ex.Shutdown();
  EXPECT_EQ(ex.Submit([] {}).code(), StatusCode::kUnavailable);
}

// The queue bound counts tasks; a flood of 64 MiB requests fills 1,024 slots with 64 GiB. The
// byte budget bounds what queued and running tasks hold: past it a task is refused (nothing
// queued), a task alone is admitted however large, and bytes come back when a task has run.
TEST(ExecutorTest, ByteBudgetRefusesPastItAndReturnsBytesAfterEachTask) {
  BoundedExecutor ex(1, 1000, /*byte_budget=*/100);
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  bool started = false;
  auto block = [&] {
    std::unique_lock<std::mutex> lock(mu);
    started = true;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
  };
  // Alone, a task over the whole budget runs.
  ASSERT_TRUE(ex.Submit(block, 150).ok());
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return started; });
  }
  EXPECT_EQ(ex.bytes_held(), 150);
  Status over = ex.Submit([] {}, 1);
  EXPECT_EQ(over.code(), StatusCode::kResourceExhausted) << over.ToString();
  EXPECT_NE(over.message().find("--executor-queue-mb"), std::string::npos) << over.ToString();
  EXPECT_TRUE(ex.Submit([] {}, 0).ok());  // a task holding nothing is only bound by the count
  EXPECT_EQ(ex.queued(), 1);
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  ASSERT_TRUE(ex.WaitIdle(30));
  EXPECT_EQ(ex.bytes_held(), 0);
  // Within the budget, several are queued; the next one past it is refused.
  started = false;
  release = false;
  ASSERT_TRUE(ex.Submit(block, 40).ok());
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return started; });
  }
  EXPECT_TRUE(ex.Submit([] {}, 30).ok());
  EXPECT_TRUE(ex.Submit([] {}, 30).ok());
  EXPECT_EQ(ex.Submit([] {}, 1).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(ex.bytes_held(), 100);
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  ASSERT_TRUE(ex.WaitIdle(30));
  EXPECT_EQ(ex.bytes_held(), 0);
  EXPECT_TRUE(ex.Submit([] {}, 100).ok());
}

// A client stream reserves its messages before they are read (StreamReadBudget): reservations
// count against the byte budget like queued requests, under the same rules.
TEST(ExecutorTest, ReservationsCountAgainstTheByteBudgetUntilGivenBack) {
  BoundedExecutor ex(1, 100, /*byte_budget=*/100);
  ASSERT_TRUE(ex.Reserve(60).ok());
  EXPECT_EQ(ex.bytes_held(), 60);
  const Status over = ex.Reserve(60);
  EXPECT_EQ(over.code(), StatusCode::kResourceExhausted) << over.ToString();
  EXPECT_NE(over.message().find("--executor-queue-mb"), std::string::npos) << over.ToString();
  EXPECT_EQ(ex.Submit([] {}, 41).code(), StatusCode::kResourceExhausted);
  ASSERT_TRUE(ex.Reserve(40).ok());
  EXPECT_EQ(ex.bytes_held(), 100);
  EXPECT_TRUE(ex.Submit([] {}, 0).ok());  // within a reservation a task holds nothing more
  ex.Unreserve(60);
  EXPECT_TRUE(ex.Submit([] {}, 60).ok());
  ASSERT_TRUE(ex.WaitIdle(30));
  EXPECT_EQ(ex.bytes_held(), 40);
  ex.Unreserve(40);
  // Alone, a reservation over the whole budget is admitted (as a task is).
  ASSERT_TRUE(ex.Reserve(500).ok());
  ex.Unreserve(500);
  EXPECT_EQ(ex.bytes_held(), 0);
}

TEST(ExecutorTest, AThrowingTaskIsCountedAndTheWorkersLiveOn) {
  BoundedExecutor ex(1, 100);
  std::atomic<int> ran{0};
  ASSERT_TRUE(ex.Submit([] { throw std::bad_alloc(); }).ok());
  ASSERT_TRUE(ex.Submit([] { throw std::runtime_error("boom"); }).ok());
  ASSERT_TRUE(ex.Submit([] { throw 42; }).ok());
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(ex.Submit([&ran] { ++ran; }).ok());
  ASSERT_TRUE(ex.WaitIdle(30));
  EXPECT_EQ(ran.load(), 10);
  EXPECT_EQ(ex.uncaught_exceptions(), 3);
}

// Holds all of an executor's workers until Open(); Hold returns once they run.
class Gate {
 public:
  void Hold(BoundedExecutor& ex) {
    for (int i = 0; i < ex.threads(); ++i) ASSERT_TRUE(ex.Submit([f = open_] { f.wait(); }).ok());
    while (ex.queued() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  void Open() {
    if (!opened_) promise_.set_value();
    opened_ = true;
  }
  ~Gate() { Open(); }

 private:
  std::promise<void> promise_;
  std::shared_future<void> open_ = promise_.get_future().share();
  bool opened_ = false;
};

// Under a flood of slow calls, queued work waited until its caller's deadline and then was
// dropped (DEADLINE_EXCEEDED after the whole wait). Now a task whose deadline comes before the
// queue's expected wait is refused at once, RESOURCE_EXHAUSTED naming the flag, and nothing is
// queued; with a long deadline, or none, it is admitted. Bounds: the running task has run at
// least 300 ms, so four queued tasks ahead on one thread are at least 1.2 s of expected wait.
TEST(ExecutorTest, ADeadlineShorterThanTheQueueWaitIsRefusedAtOnce) {
  BoundedExecutor ex(1, 100);
  Gate gate;
  ASSERT_NO_FATAL_FAILURE(gate.Hold(ex));
  std::atomic<int> ran{0};
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(ex.Submit([&ran] { ++ran; }).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_GE(ex.ExpectedWaitSeconds(), 1.2);

  const Status refused = ex.Submit([&ran] { ++ran; }, 0, /*seconds_left=*/0.5);
  EXPECT_EQ(refused.code(), StatusCode::kResourceExhausted) << refused.ToString();
  EXPECT_NE(refused.message().find("--executor-threads"), std::string::npos) << refused.ToString();
  EXPECT_EQ(ex.queued(), 4);

  EXPECT_TRUE(ex.Submit([&ran] { ++ran; }, 0, /*seconds_left=*/3600).ok());
  EXPECT_TRUE(ex.Submit([&ran] { ++ran; }).ok());  // no deadline: only the queue bounds apply
  gate.Open();
  ASSERT_TRUE(ex.WaitIdle(30));
  EXPECT_EQ(ran.load(), 6);
}

// An executor set by other options (the router's query queue: --query-threads, --query-queue)
// names those in its refusals, so an operator raises the right limit.
TEST(ExecutorTest, RefusalsNameTheFlagsThatSetTheExecutor) {
  BoundedExecutor ex(1, 1, /*byte_budget=*/100,
                     ExecutorFlagNames{"--query-threads", "--query-queue", "--budget-mb"});
  Gate gate;
  ASSERT_NO_FATAL_FAILURE(gate.Hold(ex));
  ASSERT_TRUE(ex.Submit([] {}).ok());  // the one queue slot
  const Status full = ex.Submit([] {});
  EXPECT_EQ(full.code(), StatusCode::kResourceExhausted) << full.ToString();
  EXPECT_NE(full.message().find("--query-queue"), std::string::npos) << full.ToString();
  EXPECT_EQ(full.message().find("--executor-queue"), std::string::npos) << full.ToString();
  const Status bytes = ex.Reserve(200);
  ASSERT_TRUE(bytes.ok()) << bytes.ToString();  // nothing else holds bytes: admitted alone
  const Status over = ex.Reserve(1);
  EXPECT_NE(over.message().find("--budget-mb"), std::string::npos) << over.ToString();
  ex.Unreserve(200);
  gate.Open();
  ASSERT_TRUE(ex.WaitIdle(30));
}

// Normal traffic is never refused on its deadline: while a worker is free, or while no task is
// queued ahead, the expected wait is 0 and any deadline is admitted.
TEST(ExecutorTest, NoTaskQueuedAheadAdmitsAnyDeadline) {
  BoundedExecutor ex(2, 100);
  EXPECT_EQ(ex.ExpectedWaitSeconds(), 0);
  std::atomic<int> ran{0};
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(ex.Submit([&ran] { ++ran; }, 0, /*seconds_left=*/1e-6).ok());
    ASSERT_TRUE(ex.WaitIdle(30));
  }
  Gate gate;
  ASSERT_NO_FATAL_FAILURE(gate.Hold(ex));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(ex.ExpectedWaitSeconds(), 0);  // every worker busy, but nothing queued ahead
  EXPECT_TRUE(ex.Submit([&ran] { ++ran; }, 0, /*seconds_left=*/1e-6).ok());
  gate.Open();
  ASSERT_TRUE(ex.WaitIdle(30));
  EXPECT_EQ(ran.load(), 21);
}

// The estimate remembers how long finished tasks took: after eight 50 ms tasks, ten tasks queued
// behind a task that has only just started are still a wait (the average starts at the first
// task's time and stays at least 50 ms: ten of them 0.5 s), and a 0.1 s deadline is refused.
TEST(ExecutorTest, TheWaitEstimateRemembersRecentTaskTimes) {
  BoundedExecutor ex(1, 100);
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(ex.Submit([] { std::this_thread::sleep_for(std::chrono::milliseconds(50)); }).ok());
  }
  ASSERT_TRUE(ex.WaitIdle(30));
  Gate gate;
  ASSERT_NO_FATAL_FAILURE(gate.Hold(ex));
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(ex.Submit([] {}).ok());
  EXPECT_GE(ex.ExpectedWaitSeconds(), 0.3);
  EXPECT_EQ(ex.Submit([] {}, 0, /*seconds_left=*/0.1).code(), StatusCode::kResourceExhausted);
  gate.Open();
  ASSERT_TRUE(ex.WaitIdle(30));
}

// A flood's first calls were admitted before any task had been measured (the expected wait was
// 0) and then waited out their whole deadline queued behind slow work: DEADLINE_EXCEEDED. A
// queued call is now dropped with RESOURCE_EXHAUSTED, its shed function called and its bytes
// given back, as soon as the running tasks' age shows the queue ahead of it outlasts its
// deadline; a call first in the queue waits (nothing is known to be ahead of it), and tasks
// without a shed function or a deadline are never dropped. Here the running task's age t makes
// the second queued call's wait t on one thread: dropped once t > 4 s - t, about 2 s in.
TEST(ExecutorTest, AQueuedCallWhoseWaitOutlastsItsDeadlineIsShedBeforeIt) {
  BoundedExecutor ex(1, 100, /*byte_budget=*/1 << 20);
  Gate gate;
  ASSERT_NO_FATAL_FAILURE(gate.Hold(ex));
  std::atomic<int> ran{0};
  std::promise<Status> shed_second;
  std::atomic<int> shed_others{0};
  ASSERT_TRUE(ex.Submit([&ran] { ++ran; }, 10, /*seconds_left=*/60,
                        [&shed_others](const Status&) { ++shed_others; })
                  .ok());
  ASSERT_TRUE(ex.Submit([&ran] { ++ran; }, 1000, /*seconds_left=*/4,
                        [&shed_second](const Status& st) { shed_second.set_value(st); })
                  .ok());
  ASSERT_TRUE(ex.Submit([&ran] { ++ran; }, 0, /*seconds_left=*/2).ok());  // no shed function
  ASSERT_TRUE(ex.Submit([&ran] { ++ran; }).ok());                         // no deadline
  EXPECT_EQ(ex.bytes_held(), 1010);

  std::future<Status> shed = shed_second.get_future();
  ASSERT_EQ(shed.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  const Status st = shed.get();
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st.ToString();
  EXPECT_NE(st.message().find("--executor-threads"), std::string::npos) << st.ToString();
  EXPECT_EQ(ex.queued(), 3);
  EXPECT_EQ(ex.bytes_held(), 10);
  gate.Open();
  ASSERT_TRUE(ex.WaitIdle(30));
  EXPECT_EQ(ran.load(), 3);
  EXPECT_EQ(shed_others.load(), 0);
}

// A queued call whose deadline passed (its caller has gone) is dropped too, freeing its place and
// bytes for callers that still wait, even first in the queue.
TEST(ExecutorTest, AQueuedCallWhoseDeadlinePassedIsDropped) {
  BoundedExecutor ex(1, 100, /*byte_budget=*/1 << 20);
  Gate gate;
  ASSERT_NO_FATAL_FAILURE(gate.Hold(ex));
  std::promise<Status> dropped;
  std::atomic<bool> ran{false};
  ASSERT_TRUE(ex.Submit([&ran] { ran = true; }, 500, /*seconds_left=*/0.05,
                        [&dropped](const Status& st) { dropped.set_value(st); })
                  .ok());
  std::future<Status> f = dropped.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_EQ(f.get().code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(ex.queued(), 0);
  EXPECT_EQ(ex.bytes_held(), 0);
  gate.Open();
  ASSERT_TRUE(ex.WaitIdle(30));
  EXPECT_FALSE(ran.load());
}

TEST(ExecutorTest, ExceptionsAtATaskBoundaryBecomeStatuses) {
  Status oom = CallCatchingExceptions("encode", []() -> Status { throw std::bad_alloc(); });
  EXPECT_EQ(oom.code(), StatusCode::kResourceExhausted) << oom.ToString();
  EXPECT_NE(oom.message().find("encode"), std::string::npos) << oom.ToString();
  Status len = CallCatchingExceptions("resize", []() -> Status {
    std::vector<int> v;
    v.resize(v.max_size() + 1);
    return OkStatus();
  });
  EXPECT_EQ(len.code(), StatusCode::kResourceExhausted) << len.ToString();
  Status other =
      CallCatchingExceptions("parse", []() -> Status { throw std::runtime_error("bad token"); });
  EXPECT_EQ(other.code(), StatusCode::kInternal);
  EXPECT_NE(other.message().find("bad token"), std::string::npos) << other.ToString();
  EXPECT_EQ(CallCatchingExceptions("x", []() -> Status { throw 1; }).code(), StatusCode::kInternal);
  EXPECT_EQ(CallCatchingExceptions("x", [] { return NotFound("n"); }).code(),
            StatusCode::kNotFound);
}

}  // namespace
}  // namespace ragserve
