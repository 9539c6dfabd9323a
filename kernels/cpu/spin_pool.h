// A small fork/join pool for the decode GEMVs of FastOps.
//
// Why not OpenMP: a batch-1 decode step of a Llama-style model is ~50 parallel GEMVs of 0.5-50 MB
// each, separated by a few microseconds of serial work (norms, RoPE, attention). With
// OMP_WAIT_POLICY=PASSIVE (what a shared machine wants, so idle threads do not burn cores) every
// one of those forks wakes a sleeping thread through the kernel, tens of microseconds each; with
// the default policy libgomp's threads spin for milliseconds after every region, also between
// requests. This pool's workers spin for a bounded time (kSpinMicros) after their last task, so
// the forks of one decode step find them awake, and then sleep (futex) until the next job.
//
// Jobs: Run(threads, ntasks, fn, ctx) calls fn(ctx, t) once for every t in [0, ntasks) on the
// calling thread plus up to threads - 1 workers, and returns when all calls have returned. Tasks
// are claimed one at a time from a shared counter, so a worker that is preempted (another process
// took its core) leaves its share to the others instead of stalling the job. The job's size, its
// worker count and its generation live in one atomic word with the claim counter, so a late worker
// can never run a task of a job that has already ended. One job at a time: a caller that finds the
// pool busy (another thread's job) runs its tasks inline.
#pragma once

#include <cstdint>
#include <type_traits>

namespace ragserve::kernels {

class SpinPool {
 public:
  using TaskFn = void (*)(void* ctx, int64_t task);
  // Workers spin this long after their last task before sleeping.
  static constexpr int kSpinMicros = 100;
  // Most tasks in one job (larger jobs run inline).
  static constexpr int64_t kMaxTasks = int64_t{1} << 23;

  // The process-wide pool (workers started on first use: one per extra OpenMP thread).
  static SpinPool& Get();

  void Run(int threads, int64_t ntasks, TaskFn fn, void* ctx);

  // Worker threads (not counting callers).
  int workers() const;

  SpinPool(const SpinPool&) = delete;
  SpinPool& operator=(const SpinPool&) = delete;

 private:
  SpinPool();
  ~SpinPool();
  struct Impl;
  Impl* impl_;
};

// f(t) for every t in [0, n) on up to `threads` threads of the pool (SpinPool::Run).
template <class F>
void ParallelFor(int threads, int64_t n, F&& f) {
  using Fn = std::remove_reference_t<F>;
  SpinPool::Get().Run(
      threads, n, [](void* ctx, int64_t t) { (*static_cast<Fn*>(ctx))(t); },
      const_cast<void*>(static_cast<const void*>(&f)));
}

}  // namespace ragserve::kernels
