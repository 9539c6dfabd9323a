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
//
// Weight dtypes (the "dtype table", issue 20): per model and weight dtype, batch-1 decode tok/s
// against the bandwidth roofline (bytes of weights read per token / the best read bandwidth of
// this run: a vectorized 4-accumulator read of a 1 GiB array on all threads, best of 10), and
// prefill tok/s of one --prefill-tokens prompt against the compute roofline (FLOPs per prompt
// token / the measured peak of this run: a register-only loop of independent FMA chains for
// f32/f16/bf16 weights, which run through f32 sgemm; of VNNI int8 dot products, 2 ops per
// multiply-add, for the block formats). Rows:
//   engine_bench --dtypes f32,bf16,q8_0,q4_0,q4_k,q6_k   the ~100M model in each dtype (HF f32
//                                                          checkpoint converted / quantized at
//                                                          load; default: all six, "none": no rows)
//   engine_bench --model FILE.gguf|DIR [--model-dtypes auto,q8_0]   a given model as stored
//                                                          ("auto") and in each dtype listed
//   engine_bench --dtype-table-only                        only this table
//   engine_bench --prefill-tokens N                        prompt length of the prefill column
//   (512)
//   engine_bench --model FILE.gguf --llamacpp-ref build/bin/ragserve-llamacpp-ref
//       --llamacpp-lib tests/engine/llamacpp/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64
//                        after the table, llama.cpp on each --model .gguf as stored, in the same
//                        run and with the same thread count (tests/engine/llamacpp_ref.cc
//                        "bench": one prompt of --prefill-tokens in one batch; greedy decode
//                        steps after a 16-token prompt, as many per round as ragserve's rows,
//                        best round), and the ratios ragserve / llama.cpp
// Before the dtype table, the quantized kernels alone (QuantKernelTable): one thread, timed in
// thread CPU time so that a shared machine's preemption does not count, per format, SIMD path and
// m in {1, 8, 64}, against a plain read of the same bytes.
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/cpu/quant.h"
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
      const int64_t n = w->Bytes() / 4;
      sink = sink + PoolRead(p, n, (96 << 10) / 4, threads);
    }
    ratios.push_back(Seconds(t0, Clock::now()) / gemv);
  }
  return Median(ratios);
}

// Best-of-`passes` read bandwidth in GB/s with `threads` threads over a 1 GiB array (the decode
// roofline's denominator: the machine at its quietest moment of this run).
double BestBandwidth1G(int threads, int passes) {
  static std::vector<float> buf(static_cast<size_t>(1) << 28, 1.0f);  // 1 GiB
  const int64_t n = static_cast<int64_t>(buf.size());
  double best = 0.0;
  volatile float sink = 0.0f;
  for (int rep = 0; rep < passes; ++rep) {
    const auto t0 = Clock::now();
    sink = sink + PoolRead(buf.data(), n, (1 << 20) / 4, threads);
    best = std::max(best, n * 4.0 / Seconds(t0, Clock::now()) / 1e9);
  }
  return best;
}

// GCC 12's AVX-512 reduce intrinsics self-initialize an operand: a known -Wuninitialized false
// positive (as in kernels/cpu/ops_fast.cc).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// Peak arithmetic of one thread for ~`seconds`: 12 independent chains of 512-bit (or 256-bit)
// FMAs (f32 FLOP/s) or VNNI dot products (int8 ops/s, 2 per multiply-add).
__attribute__((target("avx512f,avx2,fma"))) double FmaPeak512(double seconds) {
  __m512 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(1.0f + i * 1e-3f);
  const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  int64_t iters = 0;
  const auto t0 = Clock::now();
  double secs = 0.0;
  do {
    for (int k = 0; k < 1000; ++k) {
      for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_ps(a[i], b, c);
    }
    iters += 1000;
    secs = Seconds(t0, Clock::now());
  } while (secs < seconds);
  float sink = 0.0f;
  for (int i = 0; i < 12; ++i) sink += _mm512_reduce_add_ps(a[i]);
  if (sink == 12345.0f) std::printf(" ");
  return iters * 12.0 * 16 * 2 / secs;
}

__attribute__((target("avx2,fma"))) double FmaPeak256(double seconds) {
  __m256 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(1.0f + i * 1e-3f);
  const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  int64_t iters = 0;
  const auto t0 = Clock::now();
  double secs = 0.0;
  do {
    for (int k = 0; k < 1000; ++k) {
      for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], b, c);
    }
    iters += 1000;
    secs = Seconds(t0, Clock::now());
  } while (secs < seconds);
  float out[8], sink = 0.0f;
  for (int i = 0; i < 12; ++i) {
    _mm256_storeu_ps(out, a[i]);
    sink += out[0];
  }
  if (sink == 12345.0f) std::printf(" ");
  return iters * 12.0 * 8 * 2 / secs;
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) double VnniPeak512(double seconds) {
  __m512i a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_epi32(i);
  const __m512i u = _mm512_set1_epi8(3), v = _mm512_set1_epi8(-2);
  int64_t iters = 0;
  const auto t0 = Clock::now();
  double secs = 0.0;
  do {
    for (int k = 0; k < 1000; ++k) {
      for (int i = 0; i < 12; ++i) a[i] = _mm512_dpbusd_epi32(a[i], u, v);
    }
    iters += 1000;
    secs = Seconds(t0, Clock::now());
  } while (secs < seconds);
  int sink = 0;
  for (int i = 0; i < 12; ++i) sink += _mm512_reduce_add_epi32(a[i]);
  if (sink == 12345) std::printf(" ");
  return iters * 12.0 * 64 * 2 / secs;
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// Machine peak over `threads` threads (each runs the loop at once on the pool), best of 3.
double Peak(int threads, bool int8) {
  const bool avx512 = kernels::CpuSimdLevel() == kernels::SimdLevel::kAvx512;
  const bool vnni = avx512 && __builtin_cpu_supports("avx512vnni");
  double best = 0.0;
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<double> per(static_cast<size_t>(threads));
    kernels::ParallelFor(threads, threads, [&](int64_t t) {
      per[t] = int8 && vnni ? VnniPeak512(0.05) : avx512 ? FmaPeak512(0.05) : FmaPeak256(0.05);
    });
    double sum = 0.0;
    for (double v : per) sum += v;
    best = std::max(best, sum);
  }
  return best;
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

// FLOPs of one prompt token of an `len`-token prefill: 2 per weight of every matrix (the LM head
// once per prompt, not per token: it runs on the last token only) plus attention's q.k and p.v
// over len / 2 keys on average.
double PrefillFlopsPerToken(const Model& m, int len) {
  const ModelConfig& c = m.config();
  double params = 0.0;
  for (const LayerWeights& l : m.weights().layers()) {
    for (const kernels::WeightView* w : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) {
      params += static_cast<double>(w->rows) * w->cols;
    }
  }
  const double head = static_cast<double>(m.weights().lm_head().rows) * c.hidden_size / len;
  const double attn = 4.0 * c.num_layers * c.num_heads * c.head_dim * (len / 2.0);
  return 2.0 * (params + head) + attn;
}

double ThreadCpuSeconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

// The quantized kernels alone, one thread, timed in thread CPU time (on a shared machine, time
// the thread was preempted does not count; cache and memory contention still do): a 16384 x 2048
// matrix per format (Q8_0 36 MB, Q4_0/Q4_K 19 MB, Q6_K 28 MB) against m activation rows, per SIMD
// path; "vs read" = a plain 4-accumulator read of the same bytes right after (best of 5 each).
std::string QuantKernelTable() {
  const int64_t rows = 16384, cols = 2048;
  std::string out =
      "| format | path | m | GMAC/s | weights GB/s | plain read GB/s | GEMV time vs read |\n"
      "|---|---|---|---|---|---|---|\n";
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  std::vector<float> row(static_cast<size_t>(cols));
  std::vector<kernels::SimdLevel> levels;
  for (int l = static_cast<int>(kernels::QuantSimdLevel()); l >= 1; --l) {
    levels.push_back(static_cast<kernels::SimdLevel>(l));
  }
  for (kernels::DType t : {kernels::DType::kQ8_0, kernels::DType::kQ4_0, kernels::DType::kQ4_K,
                           kernels::DType::kQ6_K}) {
    const int64_t rb = kernels::DTypeBytes(t, cols);
    std::vector<uint8_t> w(static_cast<size_t>(rows * rb));
    for (int64_t r = 0; r < rows; ++r) {
      for (float& v : row) v = nd(rng);
      kernels::QuantizeRef(row.data(), t, cols, w.data() + r * rb);
    }
    const kernels::WeightView wv{w.data(), t, rows, cols};
    // Q4_0 / Q8_0 also from the packed form (PackWeights), on the AVX-512 path, where this CPU
    // has it.
    std::vector<uint8_t> packed(static_cast<size_t>(kernels::PackedBytes(wv)));
    kernels::WeightView pv = wv;
    if (!packed.empty()) {
      kernels::PackWeights(wv, packed.data());
      pv.packed = packed.data();
    }
    for (int m : {1, 8, 64}) {
      std::vector<float> x(static_cast<size_t>(m * cols));
      for (float& v : x) v = nd(rng);
      kernels::QuantizedActs a;
      kernels::QuantizeActs(x.data(), m, cols, kernels::ActBlock(t), &a);
      std::vector<float> y(static_cast<size_t>(m * rows));
      std::vector<std::pair<kernels::SimdLevel, const kernels::WeightView*>> paths;
      for (kernels::SimdLevel l : levels) {
        if (l == kernels::SimdLevel::kAvx512 && pv.packed != nullptr) paths.push_back({l, &pv});
        paths.push_back({l, &wv});
      }
      for (auto [l, v] : paths) {
        double best = 1e9, best_read = 1e9;
        volatile float sink = 0.0f;
        for (int rep = 0; rep < 5; ++rep) {
          double t0 = ThreadCpuSeconds();
          kernels::QuantGemvRows(l, a, *v, 0, rows, y.data(), rows);
          best = std::min(best, ThreadCpuSeconds() - t0);
          t0 = ThreadCpuSeconds();
          sink = sink + PoolRead(reinterpret_cast<const float*>(w.data()),
                                 static_cast<int64_t>(w.size()) / 4, int64_t{1} << 30, 1);
          best_read = std::min(best_read, ThreadCpuSeconds() - t0);
        }
        char line[256];
        std::snprintf(
            line, sizeof(line), "| %s | %s | %d | %.1f | %.1f | %.1f | %.0f%% |\n",
            std::string(kernels::DTypeName(t)).c_str(),
            (std::string(kernels::SimdLevelName(l)) + (v->packed ? " packed" : "")).c_str(), m,
            1.0 * rows * cols * m / best / 1e9, w.size() / best / 1e9, w.size() / best_read / 1e9,
            100.0 * best_read / best);
        out += line;
      }
    }
  }
  return out;
}

struct DtypeSpec {
  std::string label;  // model name in the table
  std::string path;   // checkpoint directory or .gguf file
  std::string dtype;  // --weights-dtype ("auto": as stored)
};

// What a dtype-table row measured (for the llama.cpp comparison).
struct DtypeResult {
  double decode_best = 0, prefill = 0;
  int steps = 0;  // decode steps per round
};

// One row of the dtype table (see the header comment).
std::string DtypeRow(const DtypeSpec& spec, int threads, double bw, double peak_f32,
                     double peak_int8, int prefill_tokens, int rounds, DtypeResult* res) {
  auto wo = ParseWeightsDtype(spec.dtype);
  if (!wo.ok())
    return "| " + spec.label + " | " + spec.dtype + " | " + wo.status().ToString() + " |\n";
  const auto t_load = Clock::now();
  auto loaded = Model::Load(spec.path, &kernels::FastOps(), *wo);
  const double load_s = Seconds(t_load, Clock::now());
  if (!loaded.ok()) {
    return "| " + spec.label + " | " + spec.dtype +
           " | load failed: " + loaded.status().ToString() + " |\n";
  }
  Model& m = **loaded;
  m.SetDecodeThreads(threads);
  const double mb = m.weights().BytesReadPerToken() / 1e6;
  const std::string dtype(kernels::DTypeName(m.weights().dtype()));
  // Decode: rounds of as many steps as read ~256 MB of weights; best and median round.
  const int steps = std::max(4, static_cast<int>(std::ceil(256.0 / mb)));
  DecodeSession session(m, 1);
  session.Steps(2);
  std::vector<double> rates;
  for (int r = 0; r < rounds; ++r) rates.push_back(steps / session.Steps(steps));
  const double best = *std::max_element(rates.begin(), rates.end());
  const double roof = bw * 1e3 / mb;
  // Prefill: one prompt of prefill_tokens tokens in one chunk, best of 3.
  const double pre = PrefillRate(m, 1, prefill_tokens, 3);
  const double flops = PrefillFlopsPerToken(m, prefill_tokens);
  const bool q = kernels::IsQuantized(m.weights().dtype());
  const double peak = q ? peak_int8 : peak_f32;
  *res = DtypeResult{best, pre, steps};
  char line[640];
  std::snprintf(line, sizeof(line),
                "| %s | %s | %.1fM | %.1f | %.1f | %.1f | %.0f | %.0f%% | %.0f | %.1f | %.0f%% "
                "(%s) | %.1f |\n",
                spec.label.c_str(), dtype.c_str(), m.weights().num_params() / 1e6, mb, best,
                Median(rates), roof, 100.0 * best / roof, pre, pre * flops / 1e9,
                100.0 * pre * flops / peak, q ? "int8" : "f32", load_s);
  return line;
}

// llama.cpp's prefill and decode tok/s on `path` (ragserve-llamacpp-ref bench; see the header
// comment), or an error text.
std::string LlamaCppRow(const std::string& tool, const std::string& lib, const std::string& path,
                        int threads, int prefill_tokens, int steps, int rounds, double* prefill,
                        double* decode) {
  const std::string cmd = "'" + tool + "' --lib '" + lib + "' --threads " +
                          std::to_string(threads) + " bench '" + path + "' --prompt-tokens " +
                          std::to_string(prefill_tokens) + " --decode-tokens " +
                          std::to_string(steps) + " --reps " + std::to_string(rounds);
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return "popen failed";
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof(buf), p) != nullptr) out += buf;
  if (pclose(p) != 0) return "llama.cpp bench failed: " + cmd;
  auto j = nlohmann::json::parse(out, nullptr, false);
  if (j.is_discarded() || !j.contains("decode_tok_s")) return "unreadable output: " + out;
  *prefill = j["prefill_tok_s"].get<double>();
  *decode = j["decode_tok_s"].get<double>();
  return "";
}

std::vector<std::string> SplitList(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= s.size()) {
    const size_t e = s.find(',', b);
    const std::string item = s.substr(b, e == std::string::npos ? std::string::npos : e - b);
    if (!item.empty()) out.push_back(item);
    if (e == std::string::npos) break;
    b = e + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int rounds = 25;
  std::string only;
  bool decode_only = false;
  bool dtype_table_only = false;
  std::string dtypes = "f32,bf16,q8_0,q4_0,q4_k,q6_k";
  std::vector<std::string> models;
  std::string model_dtypes = "auto";
  int prefill_tokens = 512;
  std::string llamacpp_ref, llamacpp_lib;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--decode-only") {
      decode_only = true;
    } else if (a == "--dtype-table-only") {
      dtype_table_only = true;
    } else if (a == "--dtypes" && i + 1 < argc) {
      dtypes = argv[++i];
    } else if (a == "--model" && i + 1 < argc) {
      models.push_back(argv[++i]);
    } else if (a == "--model-dtypes" && i + 1 < argc) {
      model_dtypes = argv[++i];
    } else if (a == "--prefill-tokens" && i + 1 < argc) {
      prefill_tokens = std::max(16, std::atoi(argv[++i]));
    } else if (a == "--llamacpp-ref" && i + 1 < argc) {
      llamacpp_ref = argv[++i];
    } else if (a == "--llamacpp-lib" && i + 1 < argc) {
      llamacpp_lib = argv[++i];
    } else if (a == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else if (a == "--rounds" && i + 1 < argc) {
      rounds = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(
          stderr,
          "usage: engine_bench [--quick] [--rounds N] [--only NAME/DTYPE] [--decode-only] "
          "[--dtypes LIST|none] [--model PATH]... [--model-dtypes LIST] [--prefill-tokens N] "
          "[--dtype-table-only] [--llamacpp-ref TOOL --llamacpp-lib DIR]\n");
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
  if (dtype_table_only) specs.clear();
  if (!quick && !dtype_table_only) {
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
  if (!dtype_table_only) {
    std::printf(
        "\nBatch-1 decode vs the roofline (%d rounds per row; each round = one 512 MiB probe read "
        "with the row's thread count, then as many decode steps as read about as many weight "
        "bytes):\n\n%s",
        rounds, roof_table.c_str());
  }

  // The dtype table (header comment): the ~100M model in each dtype, then the --model rows.
  std::vector<DtypeSpec> dspecs;
  if (!quick && dtypes != "none") {
    TinyModelOptions big;
    big.num_layers = 12;
    big.hidden_size = 768;
    big.num_heads = 12;
    big.num_kv_heads = 4;
    big.intermediate_size = 2048;
    big.vocab_size = 16000;
    const std::string d = dir + "/dtype-table";
    CHECK_OK(WriteTinyModel(big, {}, d));
    for (const std::string& t : SplitList(dtypes)) dspecs.push_back({"100M", d, t});
  }
  for (const std::string& path : models) {
    const std::string label = std::filesystem::path(path).filename().string();
    for (const std::string& t : SplitList(model_dtypes)) dspecs.push_back({label, path, t});
  }
  if (!dspecs.empty()) {
    std::printf(
        "\nQuantized kernels alone (one thread, thread CPU time, best of 5; see QuantKernelTable):"
        "\n\n%s",
        QuantKernelTable().c_str());
    const double bw = BestBandwidth1G(threads, 10);
    const double peak_f32 = Peak(threads, false), peak_int8 = Peak(threads, true);
    std::printf(
        "\nWeight dtypes, %d threads: best read bandwidth %.1f GB/s (1 GiB, best of 10); peak "
        "%.0f GFLOP/s f32 FMA, %.0f GOP/s int8 VNNI (register-only loops, best of 3); quantized "
        "kernels: %s; prefill of %d tokens in one chunk (best of 3); decode: %d rounds, best and "
        "median\n\n"
        "| model | dtype | params | MB read/token | decode b1 tok/s (best) | (median) | roofline "
        "tok/s | best %% of roofline | prefill tok/s | prefill GFLOP/s | %% of peak | load s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        threads, bw, peak_f32 / 1e9, peak_int8 / 1e9,
        std::string(kernels::SimdLevelName(kernels::QuantSimdLevel())).c_str(), prefill_tokens,
        std::max(3, rounds / 5));
    std::fflush(stdout);
    std::string vs_llamacpp;
    for (const DtypeSpec& spec : dspecs) {
      DtypeResult r;
      const int dtype_rounds = std::max(3, rounds / 5);
      std::printf("%s",
                  DtypeRow(spec, threads, bw, peak_f32, peak_int8, prefill_tokens, dtype_rounds, &r)
                      .c_str());
      std::fflush(stdout);
      const bool gguf = spec.path.size() > 5 && spec.path.substr(spec.path.size() - 5) == ".gguf";
      if (llamacpp_ref.empty() || !gguf || spec.dtype != "auto" || r.steps == 0) continue;
      double pre = 0, dec = 0;
      const std::string err = LlamaCppRow(llamacpp_ref, llamacpp_lib, spec.path, threads,
                                          prefill_tokens, r.steps, dtype_rounds, &pre, &dec);
      char line[512];
      if (err.empty()) {
        std::snprintf(line, sizeof(line), "| %s | %d | %.1f | %.1f | %.2f | %.0f | %.0f | %.2f |\n",
                      spec.label.c_str(), threads, r.decode_best, dec, r.decode_best / dec,
                      r.prefill, pre, r.prefill / pre);
      } else {
        std::snprintf(line, sizeof(line), "| %s | %d | %s |\n", spec.label.c_str(), threads,
                      err.c_str());
      }
      vs_llamacpp += line;
    }
    if (!vs_llamacpp.empty()) {
      std::printf(
          "\nThe same GGUF files on llama.cpp (%s bench, this run, same threads; decode: best "
          "round of as many steps as ragserve's row; prefill: %d tokens in one batch, best of "
          "the same number of rounds)\n\n"
          "| model | threads | ragserve decode tok/s | llama.cpp decode tok/s | ragserve / "
          "llama.cpp | ragserve prefill tok/s | llama.cpp prefill tok/s | ragserve / llama.cpp "
          "|\n|---|---|---|---|---|---|---|---|\n%s",
          llamacpp_ref.c_str(), prefill_tokens, vs_llamacpp.c_str());
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  std::printf("\nload average at the end: %s\n", ragserve::bench::LoadAvg().c_str());
  return 0;
}
