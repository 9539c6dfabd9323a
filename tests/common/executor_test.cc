#include "services/common/executor.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>

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

}  // namespace
}  // namespace ragserve
