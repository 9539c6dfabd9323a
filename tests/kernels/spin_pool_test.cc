// The decode GEMV pool: every task runs exactly once per job, on the caller and the workers, for
// jobs of every size (including more tasks than the claim counter's batch and jobs back to back
// after the workers went to sleep), with concurrent callers (one runs inline), and inline when
// asked for one thread.
#include "kernels/cpu/spin_pool.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace ragserve::kernels {
namespace {

struct Counts {
  std::vector<std::atomic<int>> hits;
  std::mutex mu;
  std::set<std::thread::id> ids;
  explicit Counts(int64_t n) : hits(static_cast<size_t>(n)) {}
  static void Task(void* ctx, int64_t t) {
    Counts& c = *static_cast<Counts*>(ctx);
    c.hits[static_cast<size_t>(t)].fetch_add(1);
    // A little work, so the worker has a chance to claim tasks too.
    volatile double s = 0;
    for (int i = 0; i < 2000; ++i) s = s + i * 0.5;
    std::lock_guard<std::mutex> lock(c.mu);
    c.ids.insert(std::this_thread::get_id());
  }
};

TEST(SpinPoolTest, EveryTaskRunsExactlyOnce) {
  SpinPool& pool = SpinPool::Get();
  for (int64_t n : {0, 1, 2, 3, 17, 1000, 20000}) {
    for (int round = 0; round < 3; ++round) {
      Counts c(n);
      pool.Run(8, n, &Counts::Task, &c);
      for (int64_t t = 0; t < n; ++t) ASSERT_EQ(c.hits[t].load(), 1) << "n=" << n << " t=" << t;
    }
  }
}

TEST(SpinPoolTest, WorkersTakePartAndJobsAfterSleepStillComplete) {
  SpinPool& pool = SpinPool::Get();
  if (pool.workers() == 0) GTEST_SKIP() << "one OpenMP thread: the pool has no workers";
  bool worker_seen = false;
  for (int attempt = 0; attempt < 50 && !worker_seen; ++attempt) {
    Counts c(2000);
    pool.Run(2, 2000, &Counts::Task, &c);
    worker_seen = c.ids.size() > 1;
    // Let the workers fall asleep (spin window is 100 us) before the next job.
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_TRUE(worker_seen) << "no task ran on a worker thread in 50 jobs";
}

TEST(SpinPoolTest, OneThreadRunsInlineOnTheCaller) {
  Counts c(100);
  SpinPool::Get().Run(1, 100, &Counts::Task, &c);
  EXPECT_EQ(c.ids.size(), 1u);
  EXPECT_EQ(*c.ids.begin(), std::this_thread::get_id());
}

TEST(SpinPoolTest, ConcurrentCallersEachGetAllTheirTasks) {
  std::vector<std::thread> callers;
  std::atomic<int> bad{0};
  for (int k = 0; k < 4; ++k) {
    callers.emplace_back([&bad] {
      for (int round = 0; round < 20; ++round) {
        Counts c(300);
        SpinPool::Get().Run(2, 300, &Counts::Task, &c);
        for (auto& h : c.hits) bad += h.load() != 1;
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(bad.load(), 0);
}

}  // namespace
}  // namespace ragserve::kernels
