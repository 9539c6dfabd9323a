// engine_bench: CPU engine throughput against the memory-bandwidth roofline, measured in one run.
//
//   engine_bench                 tiny model + ~100M-parameter model (f32 and bf16)
//   engine_bench --quick         tiny model only
//   engine_bench --rounds N      batch-1 roofline rounds per row (default 25)
//   engine_bench --only 100M/BF16   one model (name/dtype)
//   engine_bench --decode-only   only the batch-1 roofline rows (e.g. under perf)
//
// For each model: prefill tokens/s (batch 1 and 8 sequences), decode tokens/s (batch 1 and 8),
// the plain reference backend's decode speed (the baseline), and batch-1 decode as a percentage
// of the roofline = read bandwidth / bytes of weights read per token.
//
// Roofline: batch-1 decode runs with a fixed thread count (all threads with the GEMVs on the
// ops' pool, 1 thread, and all threads with the GEMVs as OpenMP loops: the baseline), and each of
// `rounds` rounds is one read of a 512 MiB array with that same thread count and the same
// chunked work claiming (the probe), immediately followed by as many decode steps as read about
// 512 MiB of weights; the table gives the medians over the rounds of the decode rate, of the
// bandwidth and of the per-round ratio (with its min and max), and the best decode round against
// the best probe round (each side's quietest moment). Both sides of a ratio see the same ~0.1 s of
// machine load, so a busy moment of a shared machine moves neither side alone.
// "GEMV vs read" isolates the kernel: batch-1 GEMV over all the model's matrices against a plain
// read of the same bytes right after it (median of 9 pairs; 100% = as fast), per SIMD level the
// CPU has (the baseline for the AVX-512 kernels is the AVX2 build of the same kernels, and the
// scalar loop).
#include <immintrin.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "kernels/cpu/spin_pool.h"
#include "services/engine/model.h"
#include "services/engine/tiny_model.h"
#include "tools/bench/bench_util.h"

namespace {

using namespace ragserve;
using namespace ragserve::engine;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

__attribute__((target("avx2,fma"))) float SumAvx2(const float* p, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
  }
  float out[8];
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  float s = 0.0f;
  for (float x : out) s += x;
  for (; i < n; ++i) s += p[i];
  return s;
}

float SumScalar(const float* p, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += p[i];
  return s;
}

// Sum of n floats read in chunks of `chunk` on `threads` threads of the ops' pool (the decode
// GEMVs' threads, claiming work the same way).
float PoolRead(const float* p, int64_t n, int64_t chunk, int threads) {
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const int64_t tasks = (n + chunk - 1) / chunk;
  std::vector<float> part(static_cast<size_t>(tasks));
  kernels::ParallelFor(threads, tasks, [&](int64_t t) {
    const int64_t b = t * chunk, e = std::min(n, b + chunk);
    part[t] = avx2 ? SumAvx2(p + b, e - b) : SumScalar(p + b, e - b);
  });
  float total = 0.0f;
  for (float v : part) total += v;
  return total;
}

// Best-of-`passes` read bandwidth in GB/s with `threads` threads over a 512 MiB array (allocated
// and touched once per process), read in 96 KiB chunks like the GEMV tasks.
constexpr double kProbeBytes = 512.0 * (1 << 20);

double ProbeBandwidth(int threads, int passes = 3) {
  static const int64_t n = static_cast<int64_t>(kProbeBytes) / 4;
  static std::vector<float> buf(static_cast<size_t>(n), 1.0f);
  double best = 0.0;
  volatile float sink = 0.0f;
  for (int rep = 0; rep < passes; ++rep) {
    const auto t0 = Clock::now();
    sink = sink + PoolRead(buf.data(), n, (96 << 10) / 4, threads);
    best = std::max(best, n * 4.0 / Seconds(t0, Clock::now()) / 1e9);
  }
  return best;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0.0 : n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Kernel efficiency without the rest of the forward pass: batch-1 GEMV over every weight matrix
// of the model, then a plain vectorized read of the same bytes on the same threads; 9 such pairs,
// returns the median of read_time / gemv_time (1.0 = the GEMV streams the weights as fast as a
// read).
double GemvVsRead(const Model& m, int threads) {
  std::vector<const kernels::WeightView*> ws;
  for (const LayerWeights& l : m.weights().layers()) {
    for (const kernels::WeightView* w : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) {
      ws.push_back(w);
    }
  }
  ws.push_back(&m.weights().lm_head());
  std::vector<float> x(static_cast<size_t>(m.config().intermediate_size + m.config().hidden_size),
                       0.5f);
  std::vector<float> y(static_cast<size_t>(m.config().vocab_size + m.config().intermediate_size));
  std::vector<double> ratios;
  volatile float sink = 0.0f;
  for (int rep = 0; rep < 9; ++rep) {
    auto t0 = Clock::now();
    for (const kernels::WeightView* w : ws) {
      kernels::FastOps().MatMul(x.data(), 1, *w, nullptr, y.data());
    }
    const double gemv = Seconds(t0, Clock::now());
    t0 = Clock::now();
    for (const kernels::WeightView* w : ws) {
      const float* p = static_cast<const float*>(w->data);
      const int64_t n = w->rows * w->cols * static_cast<int64_t>(kernels::DTypeSize(w->dtype)) / 4;
      sink = sink + PoolRead(p, n, (96 << 10) / 4, threads);
    }
    ratios.push_back(Seconds(t0, Clock::now()) / gemv);
  }
  return Median(ratios);
}

std::vector<int32_t> Tokens(int n, int vocab, int salt) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[i] = 2 + (i * 7919 + salt * 104729) % (vocab - 2);
  return t;
}

struct Result {
  double prefill1 = 0, prefill8 = 0, decode1 = 0, decode8 = 0, ref_decode = 0;
};

// Batch-1 decode against the roofline with a fixed thread count (see the header comment).
struct Roofline {
  int threads = 0;
  double decode = 0, bw = 0, ratio = 0, ratio_min = 0, ratio_max = 0, best_ratio = 0;
};

// Decode tokens/s over `steps` steps for `batch` sequences after a 16-token prompt each.
// `batch` sequences after a 16-token prompt each, decoded greedily one step at a time.
class DecodeSession {
 public:
  DecodeSession(Model& m, int batch) : m_(m), last_(batch) {
    for (int b = 0; b < batch; ++b) {
      kv_.push_back(m.NewKvCache());
      const std::vector<int32_t> p = Tokens(16, m.config().vocab_size, b);
      if (!m.Prefill(p, 0, kv_.back().get(), 0, nullptr).ok()) std::abort();
      last_[b] = p.back();
    }
  }
  // Seconds for `steps` steps (every sequence advances one token per step).
  double Steps(int steps) {
    double secs = 0.0;
    const int batch = static_cast<int>(last_.size());
    for (int s = 0; s < steps; ++s) {
      std::vector<SequenceStep> st;
      for (int b = 0; b < batch; ++b) {
        st.push_back({std::span<const int32_t>(&last_[b], 1),
                      static_cast<int32_t>(kv_[b]->length()), kv_[b].get()});
      }
      const auto t0 = Clock::now();
      if (!m_.Forward(st, LogitsMode::kLast, &logits_).ok()) std::abort();
      secs += Seconds(t0, Clock::now());
      for (int b = 0; b < batch; ++b) {
        const float* row = logits_.data() + int64_t{b} * m_.config().vocab_size;
        last_[b] = static_cast<int32_t>(std::max_element(row, row + m_.config().vocab_size) - row);
      }
    }
    return secs;
  }

 private:
  Model& m_;
  std::vector<std::unique_ptr<KvCache>> kv_;
  std::vector<int32_t> last_;
  std::vector<float> logits_;
};

// Decode tokens/s over `steps` steps for `batch` sequences after a 16-token prompt each (after 2
// warm-up steps).
double DecodeRate(Model& m, int batch, int steps) {
  DecodeSession d(m, batch);
  d.Steps(2);
  return batch * steps / d.Steps(steps);
}

// Prefill tokens/s: `batch` sequences of `len` tokens in one Forward (best of `reps`).
double PrefillRate(Model& m, int batch, int len, int reps) {
  double best = 0.0;
  for (int r = 0; r < reps; ++r) {
    std::vector<std::unique_ptr<KvCache>> kv;
    std::vector<std::vector<int32_t>> toks;
    std::vector<SequenceStep> st;
    for (int b = 0; b < batch; ++b) {
      kv.push_back(m.NewKvCache());
      toks.push_back(Tokens(len, m.config().vocab_size, b + 10 * r));
    }
    for (int b = 0; b < batch; ++b) st.push_back({toks[b], 0, kv[b].get()});
    std::vector<float> logits;
    const auto t0 = Clock::now();
    if (!m.Forward(st, LogitsMode::kLast, &logits).ok()) std::abort();
    best = std::max(best, batch * len / Seconds(t0, Clock::now()));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int rounds = 25;
  std::string only;
  bool decode_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--decode-only") {
      decode_only = true;
    } else if (a == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else if (a == "--rounds" && i + 1 < argc) {
      rounds = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(
          stderr,
          "usage: engine_bench [--quick] [--rounds N] [--only NAME/DTYPE] [--decode-only]\n");
      return 2;
    }
  }
  const int threads = omp_get_max_threads();
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  std::printf(
      "engine_bench: %s, %ld online CPUs, %d OpenMP threads (OMP_WAIT_POLICY=%s), GEMV SIMD "
      "level %s, load average at start %s\n",
      ragserve::bench::CpuModel().c_str(), sysconf(_SC_NPROCESSORS_ONLN), threads,
      wait_policy != nullptr ? wait_policy : "unset",
      std::string(kernels::SimdLevelName(kernels::FastOpsSimdLevel())).c_str(),
      ragserve::bench::LoadAvg().c_str());
  std::vector<int> thread_counts = {threads};
  if (threads > 1) thread_counts.push_back(1);
  for (int t : thread_counts) {
    std::printf("read bandwidth, %d thread(s): %.1f GB/s\n", t, ProbeBandwidth(t));
  }
  std::printf("\n");

  struct Spec {
    std::string name;
    TinyModelOptions o;
  };
  std::vector<Spec> specs;
  TinyModelOptions tiny;  // defaults: 4 layers, hidden 256, 8/2 heads, vocab 1024
  specs.push_back({"tiny", tiny});
  if (!quick) {
    TinyModelOptions big;
    big.num_layers = 12;
    big.hidden_size = 768;
    big.num_heads = 12;
    big.num_kv_heads = 4;
    big.intermediate_size = 2048;
    big.vocab_size = 16000;
    specs.push_back({"100M", big});
    big.dtype = kernels::DType::kBF16;
    specs.push_back({"100M", big});
  }
  std::vector<kernels::SimdLevel> levels;
  for (int l = static_cast<int>(kernels::CpuSimdLevel()); l >= 0; --l) {
    levels.push_back(static_cast<kernels::SimdLevel>(l));
  }
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("engine_bench_" + std::to_string(getpid())))
          .string();
  std::string roof_table =
      "| model | dtype | threads | GEMV fork/join | MB read/token | probe GB/s (median) | decode "
      "b1 "
      "tok/s (median) | roofline tok/s | b1 % of roofline: median [min, max] of rounds | best "
      "decode "
      "round / best probe round |\n"
      "|---|---|---|---|---|---|---|---|---|---|\n";
  std::string gemv_cols, gemv_sep;
  for (kernels::SimdLevel l : levels) {
    gemv_cols += " GEMV vs read " + std::string(kernels::SimdLevelName(l)) + " |";
    gemv_sep += "---|";
  }
  std::printf(
      "| model | dtype | params | MB read/token | prefill b1 tok/s | prefill b8 tok/s | decode b1 "
      "tok/s | decode b8 tok/s | ref decode tok/s | fast/ref decode |%s\n"
      "|---|---|---|---|---|---|---|---|---|---|%s\n",
      gemv_cols.c_str(), gemv_sep.c_str());
  for (size_t i = 0; i < specs.size(); ++i) {
    const Spec& s = specs[i];
    if (!only.empty() && only != s.name + "/" + std::string(kernels::DTypeName(s.o.dtype))) {
      continue;
    }
    const std::string d = dir + "/" + std::to_string(i);
    if (Status st = WriteTinyModel(s.o, {}, d); !st.ok()) {
      std::fprintf(stderr, "%s\n", st.ToString().c_str());
      return 1;
    }
    auto fast = Model::Load(d, &kernels::FastOps());
    auto ref = Model::Load(d, &kernels::RefOps());
    if (!fast.ok() || !ref.ok()) return 1;
    Model& m = **fast;
    const bool small = s.name == "tiny";
    const double mb = m.weights().BytesReadPerToken() / 1e6;
    const std::string dtype(kernels::DTypeName(s.o.dtype));
    Result r;
    if (!decode_only) {
      r.prefill1 = PrefillRate(m, 1, 128, 3);
      r.prefill8 = PrefillRate(m, 8, 128, small ? 3 : 1);
    }
    // (threads, GEMV on OpenMP instead of the spin pool): the pool at every thread count, and
    // OpenMP fork/joins at all threads as the baseline.
    std::vector<std::pair<int, bool>> configs;
    for (int t : thread_counts) configs.push_back({t, false});
    if (threads > 1 && !decode_only) configs.push_back({threads, true});
    for (auto [t, openmp] : configs) {
      m.SetDecodeThreads(t);
      kernels::SetFastOpsGemvOpenMp(openmp);
      // Each round: one read of the 512 MiB probe array, then as many decode steps as read about
      // as many weight bytes, so both sides see the same stretch of machine load.
      const int steps = std::max(1, static_cast<int>(std::ceil(kProbeBytes / 1e6 / mb)));
      DecodeSession session(m, 1);
      session.Steps(2);
      std::vector<double> rates, bws, ratios;
      for (int round = 0; round < rounds; ++round) {
        const double bw = ProbeBandwidth(t, 1);
        const double rate = steps / session.Steps(steps);
        rates.push_back(rate);
        bws.push_back(bw);
        ratios.push_back(rate / (bw * 1e3 / mb));
      }
      kernels::SetFastOpsGemvOpenMp(false);
      Roofline rf;
      rf.threads = t;
      rf.decode = Median(rates);
      rf.bw = Median(bws);
      rf.ratio = Median(ratios);
      rf.ratio_min = *std::min_element(ratios.begin(), ratios.end());
      rf.ratio_max = *std::max_element(ratios.begin(), ratios.end());
      // Quietest moment of each side: the best decode round against the best probe round.
      rf.best_ratio = *std::max_element(rates.begin(), rates.end()) /
                      (*std::max_element(bws.begin(), bws.end()) * 1e3 / mb);
      if (t == threads && !openmp) r.decode1 = rf.decode;
      char line[512];
      std::snprintf(
          line, sizeof(line),
          "| %s | %s | %d | %s | %.1f | %.1f | %.1f | %.1f | %.0f%% [%.0f%%, %.0f%%] | %.0f%% |\n",
          s.name.c_str(), dtype.c_str(), t,
          t == 1   ? "-"
          : openmp ? "OpenMP"
                   : "pool",
          mb, rf.bw, rf.decode, rf.bw * 1e3 / mb, 100.0 * rf.ratio, 100.0 * rf.ratio_min,
          100.0 * rf.ratio_max, 100.0 * rf.best_ratio);
      roof_table += line;
    }
    m.SetDecodeThreads(0);  // the online tuner, as a server runs it
    if (decode_only) continue;
    r.decode8 = DecodeRate(m, 8, small ? 100 : 24);
    r.ref_decode = DecodeRate(**ref, 1, small ? 8 : 2);
    std::string gemv;
    for (kernels::SimdLevel l : levels) {
      kernels::SetFastOpsMaxSimd(l);
      char cell[32];
      std::snprintf(cell, sizeof(cell), " %.0f%% |", 100.0 * GemvVsRead(m, threads));
      gemv += cell;
    }
    kernels::SetFastOpsMaxSimd(kernels::SimdLevel::kAvx512);
    std::printf("| %s | %s | %.1fM | %.1f | %.0f | %.0f | %.1f | %.1f | %.2f | %.0fx |%s\n",
                s.name.c_str(), dtype.c_str(), m.weights().num_params() / 1e6, mb, r.prefill1,
                r.prefill8, r.decode1, r.decode8, r.ref_decode, r.decode1 / r.ref_decode,
                gemv.c_str());
    std::fflush(stdout);
    std::error_code ec;
    std::filesystem::remove_all(d, ec);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  std::printf(
      "\nBatch-1 decode vs the roofline (%d rounds per row; each round = one 512 MiB probe read "
      "with the row's thread count, then as many decode steps as read about as many weight "
      "bytes):\n\n%s",
      rounds, roof_table.c_str());
  std::printf("\nload average at the end: %s\n", ragserve::bench::LoadAvg().c_str());
  return 0;
}
