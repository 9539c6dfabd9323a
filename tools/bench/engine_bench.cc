// engine_bench: CPU engine throughput against the memory-bandwidth roofline, measured in one run.
//
//   engine_bench            tiny model + ~100M-parameter model (f32 and bf16)
//   engine_bench --quick    tiny model only
//
// For each model: prefill tokens/s (batch 1 and 8 sequences), decode tokens/s (batch 1 and 8),
// the plain reference backend's decode speed (the baseline), and batch-1 decode as a percentage
// of the roofline = measured read bandwidth / bytes of weights read per token. The bandwidth probe
// (a vectorized multithreaded read of a 512 MiB array) runs in the same process, interleaved with
// the batch-1 decode runs (best of 3 rounds each). "GEMV vs read" isolates the kernel: batch-1
// GEMV over all the model's matrices against a plain read of the same bytes (100% = as fast).
#include <immintrin.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "services/engine/model.h"
#include "services/engine/tiny_model.h"

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

// Best-of-5 read bandwidth in GB/s with `threads` threads.
double ProbeBandwidth(int threads) {
  const int64_t n = (512ll << 20) / 4;
  std::vector<float> buf(static_cast<size_t>(n), 1.0f);
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  double best = 0.0;
  volatile float sink = 0.0f;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    float total = 0.0f;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
      const int nt = omp_get_num_threads(), id = omp_get_thread_num();
      const int64_t per = (n + nt - 1) / nt, b = std::min(n, id * per), e = std::min(n, b + per);
      total += avx2 ? SumAvx2(buf.data() + b, e - b) : SumScalar(buf.data() + b, e - b);
    }
    sink = sink + total;
    best = std::max(best, n * 4.0 / Seconds(t0, Clock::now()) / 1e9);
  }
  return best;
}

// Kernel efficiency without the rest of the forward pass: batch-1 GEMV over every weight matrix
// of the model vs a plain vectorized read of the same bytes, interleaved (best of 5 each).
// Returns read_time / gemv_time (1.0 = the GEMV streams the weights as fast as a read).
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
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  double best_gemv = 1e30, best_read = 1e30;
  volatile float sink = 0.0f;
  for (int rep = 0; rep < 5; ++rep) {
    auto t0 = Clock::now();
    for (const kernels::WeightView* w : ws)
      kernels::FastOps().MatMul(x.data(), 1, *w, nullptr, y.data());
    best_gemv = std::min(best_gemv, Seconds(t0, Clock::now()));
    t0 = Clock::now();
    for (const kernels::WeightView* w : ws) {
      const float* p = static_cast<const float*>(w->data);
      const int64_t n = w->rows * w->cols * static_cast<int64_t>(kernels::DTypeSize(w->dtype)) / 4;
      float total = 0.0f;
#pragma omp parallel num_threads(threads) reduction(+ : total)
      {
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        const int64_t per = (n + nt - 1) / nt, b = std::min(n, id * per), e = std::min(n, b + per);
        total += avx2 ? SumAvx2(p + b, e - b) : SumScalar(p + b, e - b);
      }
      sink = sink + total;
    }
    best_read = std::min(best_read, Seconds(t0, Clock::now()));
  }
  return best_read / best_gemv;
}

std::vector<int32_t> Tokens(int n, int vocab, int salt) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[i] = 2 + (i * 7919 + salt * 104729) % (vocab - 2);
  return t;
}

struct Result {
  double prefill1 = 0, prefill8 = 0, decode1 = 0, decode8 = 0, ref_decode = 0;
};

// Decode tokens/s over `steps` steps for `batch` sequences after a 16-token prompt each.
double DecodeRate(Model& m, int batch, int steps) {
  std::vector<std::unique_ptr<KvCache>> kv;
  std::vector<int32_t> last(batch);
  for (int b = 0; b < batch; ++b) {
    kv.push_back(m.NewKvCache());
    const std::vector<int32_t> p = Tokens(16, m.config().vocab_size, b);
    if (!m.Prefill(p, 0, kv.back().get(), 0, nullptr).ok()) std::abort();
    last[b] = p.back();
  }
  std::vector<float> logits;
  double secs = 0.0;
  const int warmup = 2;
  for (int s = 0; s < steps + warmup; ++s) {
    std::vector<SequenceStep> st;
    for (int b = 0; b < batch; ++b) {
      st.push_back({std::span<const int32_t>(&last[b], 1), static_cast<int32_t>(kv[b]->length()),
                    kv[b].get()});
    }
    const auto t0 = Clock::now();
    if (!m.Forward(st, LogitsMode::kLast, &logits).ok()) std::abort();
    if (s >= warmup) secs += Seconds(t0, Clock::now());
    for (int b = 0; b < batch; ++b) {
      const float* row = logits.data() + int64_t{b} * m.config().vocab_size;
      last[b] = static_cast<int32_t>(std::max_element(row, row + m.config().vocab_size) - row);
    }
  }
  return batch * steps / secs;
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

std::string CpuName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown CPU";
}

std::string LoadAvg() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) quick |= std::string(argv[i]) == "--quick";
  const int threads = omp_get_max_threads();
  std::printf("engine_bench: %s, %ld online CPUs, %d OpenMP threads, load average %s\n",
              CpuName().c_str(), sysconf(_SC_NPROCESSORS_ONLN), threads, LoadAvg().c_str());
  const double bw1 = ProbeBandwidth(1), bw = ProbeBandwidth(threads);
  std::printf("read bandwidth: %.1f GB/s (1 thread), %.1f GB/s (%d threads)\n\n", bw1, bw, threads);

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
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("engine_bench_" + std::to_string(getpid())))
          .string();
  std::printf(
      "| model | dtype | params | MB read/token | prefill b1 tok/s | prefill b8 tok/s | decode b1 "
      "tok/s | decode b8 tok/s | roofline b1 tok/s | b1 %% of roofline | GEMV vs read | ref decode "
      "tok/s | fast/ref decode |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < specs.size(); ++i) {
    const Spec& s = specs[i];
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
    Result r;
    r.prefill1 = PrefillRate(m, 1, 128, 3);
    r.prefill8 = PrefillRate(m, 8, 128, small ? 3 : 1);
    // The machine is shared: interleave bandwidth probes with batch-1 decode runs and keep the
    // best of each, so the ratio compares two quiet moments rather than a quiet and a busy one.
    double round_bw = 0.0;
    for (int round = 0; round < 3; ++round) {
      round_bw = std::max({round_bw, ProbeBandwidth(threads), ProbeBandwidth(1)});
      r.decode1 = std::max(r.decode1, DecodeRate(m, 1, small ? 200 : 48));
    }
    r.decode8 = DecodeRate(m, 8, small ? 100 : 24);
    r.ref_decode = DecodeRate(**ref, 1, small ? 8 : 2);
    const double mb = m.weights().BytesReadPerToken() / 1e6;
    const double gemv_vs_read = GemvVsRead(m, threads);
    const double roof = std::max({bw, bw1, round_bw}) * 1e3 / mb;  // best bandwidth seen
    std::printf(
        "| %s | %s | %.1fM | %.1f | %.0f | %.0f | %.1f | %.1f | %.1f | %.0f%% | %.0f%% | %.2f | "
        "%.0fx |\n",
        s.name.c_str(), std::string(kernels::DTypeName(s.o.dtype)).c_str(),
        m.weights().num_params() / 1e6, mb, r.prefill1, r.prefill8, r.decode1, r.decode8, roof,
        100.0 * r.decode1 / roof, 100.0 * gemv_vs_read, r.ref_decode, r.decode1 / r.ref_decode);
    std::fflush(stdout);
    std::error_code ec;
    std::filesystem::remove_all(d, ec);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  std::printf("\nload average at the end: %s\n", LoadAvg().c_str());
  return 0;
}
