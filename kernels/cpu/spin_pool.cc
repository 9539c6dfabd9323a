#include "kernels/cpu/spin_pool.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

namespace ragserve::kernels {
namespace {

// The job word: | generation (8) | workers (8) | ntasks (24) | next task (24) |.
constexpr int kTasksShift = 24, kWorkersShift = 48, kGenShift = 56;
constexpr uint64_t kField = (uint64_t{1} << 24) - 1;

uint64_t Idx(uint64_t s) { return s & kField; }
uint64_t Tasks(uint64_t s) { return (s >> kTasksShift) & kField; }
int Workers(uint64_t s) { return static_cast<int>((s >> kWorkersShift) & 0xff); }

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

}  // namespace

struct SpinPool::Impl {
  std::atomic<uint64_t> state{0};  // the job word (no job: Idx >= Tasks)
  std::atomic<int64_t> done{0};    // tasks of the current job finished
  std::atomic<int> sleepers{0};
  std::atomic<bool> stop{false};
  // The current job's function (valid while a task of it is claimed).
  TaskFn fn = nullptr;
  void* ctx = nullptr;
  std::mutex run_mu;  // one job at a time
  uint64_t gen = 0;
  std::vector<std::thread> threads;

  void Worker(int id) {
    using Clock = std::chrono::steady_clock;
    auto idle_since = Clock::now();
    int polls = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      uint64_t s = state.load(std::memory_order_acquire);
      if (Idx(s) < Tasks(s) && id < Workers(s)) {
        for (;;) {
          s = state.fetch_add(1, std::memory_order_acq_rel);
          if (Idx(s) >= Tasks(s)) break;
          // A claimed task keeps its job alive: fn and ctx are that job's.
          fn(ctx, static_cast<int64_t>(Idx(s)));
          done.fetch_add(1, std::memory_order_acq_rel);
        }
        idle_since = Clock::now();
        polls = 0;
        continue;
      }
      CpuRelax();
      if (++polls < 64) continue;
      polls = 0;
      if (Clock::now() - idle_since < std::chrono::microseconds(kSpinMicros)) continue;
      // Sleep until the job word changes (Dekker with Run: sleepers, then state, both seq_cst).
      sleepers.fetch_add(1, std::memory_order_seq_cst);
      const uint64_t seen = state.load(std::memory_order_seq_cst);
      if (!(Idx(seen) < Tasks(seen) && id < Workers(seen)) && !stop.load()) state.wait(seen);
      sleepers.fetch_sub(1, std::memory_order_seq_cst);
      idle_since = Clock::now();
    }
  }
};

SpinPool::SpinPool() : impl_(new Impl()) {
  const int n = std::max(0, std::min(255, omp_get_max_threads() - 1));
  for (int i = 0; i < n; ++i) impl_->threads.emplace_back([this, i] { impl_->Worker(i); });
}

SpinPool::~SpinPool() {
  impl_->stop.store(true);
  impl_->state.fetch_add(uint64_t{1} << kGenShift);
  impl_->state.notify_all();
  for (std::thread& t : impl_->threads) t.join();
  delete impl_;
}

SpinPool& SpinPool::Get() {
  // Never destroyed: workers may still be sleeping at exit, and static destruction order
  // against other users is not worth the risk.
  static SpinPool* pool = new SpinPool();
  return *pool;
}

int SpinPool::workers() const { return static_cast<int>(impl_->threads.size()); }

void SpinPool::Run(int threads, int64_t ntasks, TaskFn fn, void* ctx) {
  const int nworkers = std::min(threads - 1, workers());
  std::unique_lock<std::mutex> lock(impl_->run_mu, std::try_to_lock);
  if (ntasks <= 1 || nworkers <= 0 || ntasks > kMaxTasks || !lock.owns_lock()) {
    for (int64_t t = 0; t < ntasks; ++t) fn(ctx, t);
    return;
  }
  Impl& p = *impl_;
  p.fn = fn;
  p.ctx = ctx;
  p.done.store(0, std::memory_order_relaxed);
  p.gen = (p.gen + 1) & 0xff;
  const uint64_t job = (p.gen << kGenShift) | (static_cast<uint64_t>(nworkers) << kWorkersShift) |
                       (static_cast<uint64_t>(ntasks) << kTasksShift);
  p.state.store(job, std::memory_order_seq_cst);  // publishes fn, ctx, done = 0
  if (p.sleepers.load(std::memory_order_seq_cst) > 0) p.state.notify_all();
  int64_t mine = 0;
  for (;;) {
    const uint64_t s = p.state.fetch_add(1, std::memory_order_acq_rel);
    if (Idx(s) >= Tasks(s)) break;
    fn(ctx, static_cast<int64_t>(Idx(s)));
    ++mine;
  }
  // Wait for the tasks workers claimed (they finish them; nothing is left to claim).
  int polls = 0;
  while (p.done.load(std::memory_order_acquire) + mine < ntasks) {
    CpuRelax();
    if (++polls > 4096) std::this_thread::yield();
  }
  // Leave the word with no claimable task (Idx is already >= Tasks) and the same generation.
}

}  // namespace ragserve::kernels
