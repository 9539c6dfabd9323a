#include "services/common/executor.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
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
