// attention_bench: CPU attention of a prefill chunk over a long cache (causal) or a passage block
// (APE), the tiled kernel (FastOps::CausalAttention / BlockAttention for n >=
// kTiledAttentionMinQueries: blocks of queries x keys through sgemm with an online softmax)
// against the per-row baseline measured in the same run (one
// AttentionPartial per query and kv head, the path FastOps takes for decode-sized steps and took
// for every prefill before). Outputs of the two are compared (max abs difference).
//   usage: attention_bench [--threads N] [--reps 3] [--big]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/spin_pool.h"
#include "tools/bench/bench_util.h"

namespace {

using namespace ragserve::kernels;
using Clock = std::chrono::steady_clock;

struct Shape {
  int n;        // queries (the prefill chunk)
  int64_t len;  // keys in the cache (the chunk's own included) or in the block
  int heads, kv_heads, d;
  bool causal = true;  // false: a block every query sees whole (APE passages, a prefix)
};

// Seconds of the best of `reps` runs of f.
template <typename F>
double Best(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = FastOpsThreads(), reps = 3;
  bool big = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) {
      threads = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--big") {
      big = true;
    } else {
      std::fprintf(stderr, "usage: attention_bench [--threads N] [--reps R] [--big]\n");
      return 2;
    }
  }
  std::vector<Shape> shapes = {{256, 1024, 8, 2, 64},   {256, 4096, 8, 2, 64},
                               {1024, 1024, 8, 2, 64},  {1024, 8192, 8, 2, 64},
                               {256, 4096, 32, 8, 128}, {1024, 4096, 32, 8, 128}};
  // The question of an APE request against 16 passages of 1024 tokens (one block per passage in
  // the engine; one block of all of them here) and against the prefix.
  shapes.push_back({32, 16384, 8, 2, 64, false});
  shapes.push_back({64, 16384, 32, 8, 128, false});
  if (big) shapes.push_back({1024, 32768, 8, 2, 64});
  std::printf("# attention_bench: %s, %d threads, %s, best of %d\n",
              ragserve::bench::MachineLine().c_str(), threads,
              std::string(SimdLevelName(FastOpsSimdLevel())).c_str(), reps);
  std::printf("# command:");
  for (int i = 0; i < argc; ++i) std::printf(" %s", argv[i]);
  std::printf(
      "\n\n| mode | queries | keys | heads/kv | d | per-row ms | tiled ms | speedup | tiled "
      "GFLOP/s | "
      "max abs diff |\n|---|---|---|---|---|---|---|---|---|---|\n");
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (const Shape& s : shapes) {
    const int64_t row = int64_t{s.kv_heads} * s.d;
    std::vector<float> q(static_cast<size_t>(s.n) * s.heads * s.d), k(s.len * row), v(k.size());
    for (auto* a : {&q, &k, &v}) {
      for (float& x : *a) x = dist(rng);
    }
    std::vector<float> o1(q.size()), o2(q.size()), l1(static_cast<size_t>(s.n) * s.heads),
        l2(l1.size());
    const float scale = 1.0f / std::sqrt(static_cast<float>(s.d));
    const double per_row = Best(reps, [&] {
      ParallelFor(threads, int64_t{s.n} * s.kv_heads, [&](int64_t t) {
        AttentionRow(FastOps(), q.data(), s.n, s.heads, s.kv_heads, s.d, k.data(), v.data(), s.len,
                     s.causal, 0, scale, o1.data(), l1.data(), t);
      });
    });
    const double tiled = Best(reps, [&] {
      if (s.causal) {
        FastOps().CausalAttention(q.data(), s.n, s.heads, s.kv_heads, s.d, k.data(), v.data(),
                                  s.len, 0, scale, o2.data(), l2.data(), threads);
      } else {
        FastOps().BlockAttention(q.data(), s.n, s.heads, s.kv_heads, s.d, k.data(), v.data(), s.len,
                                 scale, o2.data(), l2.data(), threads);
      }
    });
    float diff = 0.0f;
    for (size_t i = 0; i < o1.size(); ++i) diff = std::max(diff, std::abs(o1[i] - o2[i]));
    // Visible (query, key) pairs x heads x (q.k + p.v) = 4 d flops each.
    const double pairs = s.causal
                             ? static_cast<double>(s.n) * (s.len - s.n) + 0.5 * s.n * (s.n + 1.0)
                             : static_cast<double>(s.n) * s.len;
    const double gflop = pairs * s.heads * 4.0 * s.d / 1e9;
    std::printf("| %s | %d | %lld | %d/%d | %d | %.1f | %.1f | %.2fx | %.1f | %.1e |\n",
                s.causal ? "causal" : "block", s.n, static_cast<long long>(s.len), s.heads,
                s.kv_heads, s.d, per_row * 1e3, tiled * 1e3, per_row / tiled, gflop / tiled, diff);
    std::fflush(stdout);
  }
  return 0;
}
