// cuda_bench: the CUDA backend against its baselines, measured in one run. Three sections:
//
// attention  Flash-decoding bandwidth: one decode query (n = 1) of `--heads` query heads over a
//            paged KV cache (`--kv-heads` x `--head-dim`, `--dtype` storage, pages of
//            `--page-size` tokens in shuffled order) at each context of `--contexts`, timed with
//            CUDA events over `--iters` back-to-back kernels::cuda::Attention calls after
//            `--warmup` calls. Bytes moved per call = K + V bytes read (length * kv_heads *
//            head_dim * 2 * elem_size) + q, o (f32 [heads, head_dim]) + lse (f32 [heads]).
//            Baselines in the same run: the theoretical peak (memory clock * 2 (DDR) * bus
//            width from the device attributes) and the achievable bandwidth of a plain
//            device-to-device cudaMemcpyAsync of the same byte count (counted as read + write,
//            2 * bytes / time). Also the time with splits forced to 1 (AttentionTuning) and the
//            best of a sweep of forced split counts (attention.h does not expose the count the
//            automatic choice makes). Unless --no-rotate, each call reads one of R replicas of the
//            cache (disjoint pages; R * bytes >= 4 x L2) so no call finds its keys in L2; the
//            memcpy baseline rotates over R buffers the same way.
// decode     Batch-1 greedy decode tokens/s of one random-weight Llama loaded twice, on the CPU
//            (FastOps, contiguous host KvCache: the baseline) and on the GPU (CudaOps, device
//            paged KV from Model::NewKvSource(--kv-dtype)), after a `--prompt` token prefill; the
//            GPU is fed the CPU's greedy tokens (teacher-forced) and the table counts the steps
//            whose argmax agrees. `--long-prompt` adds a GPU-only row at a longer context.
// hybrid     Decode tokens/s of the same GPU model at `--hybrid-context` tokens (128K) with its KV
//            mostly in CPU memory: kvr::DeviceRetrievalKvSource keeps `--hybrid-sinks` +
//            `--hybrid-window` tokens in GPU pages and the middle in an in-process KvRetrieval
//            store (`--hybrid-index` key index, `--hybrid-top-k` keys per query head and step).
//            Baselines in the same run, same prompt and teacher-forced tokens: the all-GPU paged
//            KV (run first: its greedy tokens feed the others), skipped when it does not fit in
//            the free device memory (cudaMemGetInfo; the hybrid prefill needs the same pages, so
//            then it is skipped too), and the device model over a host KvCache filled from the
//            all-GPU pages (q/k/v staged to the host every layer and step; `--no-host-kv`).
//            Prints prefill and index build time, tok/s, GPU KV bytes vs the all-GPU run's,
//            CPU-only tokens, the store's keys scored per step and top-1 agreement.
//
//   cuda_bench [--section all|attention|decode|hybrid] [--contexts 4K,8K,...,128K]
//              [--heads 32] [--kv-heads 8] [--head-dim 128] [--dtype f16|bf16|f32]
//              [--page-size 64] [--iters 200] [--warmup 20] [--no-rotate] [--no-sweep]
//              [--prompt 512] [--steps 64] [--long-prompt 8192] [--long-cpu]
//              [--hybrid-context 128K] [--hybrid-steps 32] [--hybrid-index attention_aware]
//              [--hybrid-top-k 100] [--hybrid-ef-search 0] [--hybrid-sinks 128]
//              [--hybrid-window 512] [--hybrid-store-dtype f32|f16] [--hybrid-store-mb 65536]
//              [--no-host-kv] [--kv-dtype f16] [--model-layers 12] [--model-hidden 768]
//              [--model-heads 12] [--model-kv-heads 4] [--model-ffn 2048] [--model-vocab 16000]
//              [--model-dtype bf16] [--prefill-chunk 2048] [--json PATH]
//
// Without a usable CUDA device it prints the header and "no CUDA device: <reason>" and exits 77.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"
#include "services/engine/device_kv_cache.h"
#include "services/engine/model.h"
#include "services/engine/sampling.h"
#include "services/engine/tiny_model.h"
#include "services/kvr/device_retrieval_source.h"
#include "services/kvr/hybrid_attention.h"
#include "services/kvr/kv_retrieval.h"
#include "services/kvr/retrieval_kv_source.h"
#include "tools/bench/bench_util.h"

namespace {

using namespace ragserve;  // NOLINT: a benchmark program
namespace cu = ragserve::kernels::cuda;
using kernels::DType;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::ordered_json;

constexpr int kNoDeviceExit = 77;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string UtcNow() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

// 13000 -> "13.0"; 0 (none) -> "none".
std::string CudaVersion(int v) {
  if (v <= 0) return "none";
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

// "4K" -> 4096, "128k" -> 131072, "1000" -> 1000; 0 for anything else.
int64_t ParseTokens(std::string s) {
  int64_t mult = 1;
  if (!s.empty() && (s.back() == 'K' || s.back() == 'k')) {
    mult = 1024;
    s.pop_back();
  }
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || end == nullptr || *end != '\0' || v <= 0) return 0;
  return v * mult;
}

std::string TokensName(int64_t t) {
  return t % 1024 == 0 ? std::to_string(t / 1024) + "K" : std::to_string(t);
}

StatusOr<DType> ParseDType(const std::string& s) {
  if (s == "f32") return DType::kF32;
  if (s == "f16") return DType::kF16;
  if (s == "bf16") return DType::kBF16;
  return InvalidArgument(StrCat("dtype must be f32, f16 or bf16, got '", s, "'"));
}

// A device allocation freed at scope exit.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (p_ != nullptr) cudaFree(p_);
  }
  Status Alloc(size_t bytes) {
    if (p_ != nullptr) cudaFree(p_);
    p_ = nullptr;
    CUDA_CHECK(cudaMalloc(&p_, std::max<size_t>(bytes, 1)));
    return OkStatus();
  }
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
};

// Fills `count` elements of `dtype` at device `dst` with uniform values in [-1, 1) (seeded).
Status FillRandom(void* dst, DType dtype, int64_t count, uint64_t seed) {
  constexpr int64_t kChunk = int64_t{1} << 22;  // elements per upload
  const size_t es = kernels::DTypeSize(dtype);
  std::vector<unsigned char> host(static_cast<size_t>(kChunk) * es);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t off = 0; off < count; off += kChunk) {
    const int64_t n = std::min(kChunk, count - off);
    for (int64_t i = 0; i < n; ++i) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      const float f = static_cast<float>(x >> 40) * (2.0f / 16777216.0f) - 1.0f;
      switch (dtype) {
        case DType::kF16:
          reinterpret_cast<__half*>(host.data())[i] = __float2half_rn(f);
          break;
        case DType::kBF16:
          reinterpret_cast<__nv_bfloat16*>(host.data())[i] = __float2bfloat16_rn(f);
          break;
        default:
          reinterpret_cast<float*>(host.data())[i] = f;
      }
    }
    CUDA_CHECK(cudaMemcpy(static_cast<char*>(dst) + off * es, host.data(), n * es,
                          cudaMemcpyHostToDevice));
  }
  return OkStatus();
}

struct DeviceInfo {
  std::string description;
  int driver = 0, runtime = 0;
  double peak_gbs = 0;  // memory clock (kHz) * 1e3 * 2 (DDR) * bus width (bits) / 8 / 1e9
  int mem_clock_khz = 0, bus_bits = 0, l2_bytes = 0, sms = 0;
};

StatusOr<DeviceInfo> QueryDevice() {
  DeviceInfo d;
  d.description = cu::DeviceDescription(0);
  CUDA_CHECK(cudaDeviceGetAttribute(&d.mem_clock_khz, cudaDevAttrMemoryClockRate, 0));
  CUDA_CHECK(cudaDeviceGetAttribute(&d.bus_bits, cudaDevAttrGlobalMemoryBusWidth, 0));
  CUDA_CHECK(cudaDeviceGetAttribute(&d.l2_bytes, cudaDevAttrL2CacheSize, 0));
  CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, 0));
  d.peak_gbs = d.mem_clock_khz * 1e3 * 2.0 * (d.bus_bits / 8.0) / 1e9;
  return d;
}

// ---------------------------------------------------------------------------------------------
// Section "attention": flash-decoding bandwidth.

struct AttentionConfig {
  std::vector<int64_t> contexts;
  int heads = 32, kv_heads = 8, head_dim = 128;
  DType dtype = DType::kF16;
  int64_t page_size = 64;
  int iters = 200, warmup = 20;
  bool rotate = true, sweep = true;
};

struct AttentionRow {
  int64_t context = 0;
  int replicas = 1;
  double bytes = 0;  // per call
  double auto_us = 0, split1_us = 0, best_us = 0, memcpy_gbs = 0, max_diff = 0;
  int best_splits = 0;
};

// Microseconds per call of `call(i)` over `iters` calls after `warmup`, timed with events on
// `stream`. call returns a Status (checked host-side on every call; a failure ends the run).
template <typename F>
StatusOr<double> TimeOnStream(cudaStream_t stream, int warmup, int iters, F&& call) {
  for (int i = 0; i < warmup; ++i) RS_RETURN_IF_ERROR(call(i));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  CUDA_CHECK(cudaEventRecord(start, stream));
  Status st = OkStatus();
  for (int i = 0; i < iters && st.ok(); ++i) st = call(warmup + i);
  CUDA_CHECK(cudaEventRecord(stop, stream));
  CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  RS_RETURN_IF_ERROR(st);
  return ms * 1e3 / iters;
}

StatusOr<std::vector<AttentionRow>> RunAttention(const AttentionConfig& c, const DeviceInfo& dev,
                                                 Json* json) {
  const size_t es = kernels::DTypeSize(c.dtype);
  const int64_t row_elems = int64_t{c.kv_heads} * c.head_dim;
  const int64_t page_elems = c.page_size * row_elems;
  const double l2 = std::max(dev.l2_bytes, 1);
  // Replicas per context (cold L2) and the pool that holds the largest set of them.
  auto kv_bytes = [&](int64_t len) { return static_cast<double>(len) * row_elems * 2 * es; };
  auto replicas = [&](int64_t len) {
    return c.rotate ? std::max(1, static_cast<int>(std::ceil(4 * l2 / kv_bytes(len)))) : 1;
  };
  int64_t pool_pages = 0;
  for (int64_t len : c.contexts) {
    pool_pages = std::max(pool_pages, replicas(len) * cu::CeilDiv(len, c.page_size));
  }
  DeviceBuffer k_pool, v_pool, q, o, lse, o_ref, lse_ref, pages;
  RS_RETURN_IF_ERROR(k_pool.Alloc(pool_pages * page_elems * es));
  RS_RETURN_IF_ERROR(v_pool.Alloc(pool_pages * page_elems * es));
  RS_RETURN_IF_ERROR(FillRandom(k_pool.get(), c.dtype, pool_pages * page_elems, 1));
  RS_RETURN_IF_ERROR(FillRandom(v_pool.get(), c.dtype, pool_pages * page_elems, 2));
  const int64_t qo = int64_t{c.heads} * c.head_dim;
  RS_RETURN_IF_ERROR(q.Alloc(qo * sizeof(float)));
  RS_RETURN_IF_ERROR(o.Alloc(qo * sizeof(float)));
  RS_RETURN_IF_ERROR(o_ref.Alloc(qo * sizeof(float)));
  RS_RETURN_IF_ERROR(lse.Alloc(c.heads * sizeof(float)));
  RS_RETURN_IF_ERROR(lse_ref.Alloc(c.heads * sizeof(float)));
  RS_RETURN_IF_ERROR(pages.Alloc(pool_pages * sizeof(int32_t)));
  RS_RETURN_IF_ERROR(FillRandom(q.get(), DType::kF32, qo, 3));
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::unique_ptr<CUstream_st, void (*)(cudaStream_t)> stream_guard(
      stream, [](cudaStream_t s) { cudaStreamDestroy(s); });
  cu::AttentionWorkspace ws;
  std::mt19937 rng(7);

  std::printf(
      "### attention: flash-decoding, n = 1, %d heads / %d kv heads, head_dim %d, %s KV, page "
      "size %ld (shuffled pages), %d iterations after %d warm-up, %s\n\n",
      c.heads, c.kv_heads, c.head_dim, std::string(kernels::DTypeName(c.dtype)).c_str(),
      static_cast<long>(c.page_size), c.iters, c.warmup,
      c.rotate ? "cold L2 (rotating replicas)" : "same cache every call (may hit L2)");
  std::printf(
      "| context | replicas | MB/call | auto us | auto GB/s | %% of peak | %% of memcpy | splits=1 "
      "us | auto vs splits=1 | best forced splits | best forced us | memcpy GB/s (r+w) | memcpy "
      "%% of peak | max abs diff auto vs splits=1 |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);
  std::vector<AttentionRow> rows;
  for (int64_t len : c.contexts) {
    AttentionRow r;
    r.context = len;
    r.replicas = replicas(len);
    const int64_t np = cu::CeilDiv(len, c.page_size);
    std::vector<int32_t> perm(static_cast<size_t>(pool_pages));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    CUDA_CHECK(cudaMemcpy(pages.get(), perm.data(), r.replicas * np * sizeof(int32_t),
                          cudaMemcpyHostToDevice));
    r.bytes = kv_bytes(len) + 2.0 * qo * sizeof(float) + c.heads * sizeof(float);
    cu::PagedKvView view;
    view.k_pool = k_pool.get();
    view.v_pool = v_pool.get();
    view.page_size = c.page_size;
    view.length = len;
    view.kv_heads = c.kv_heads;
    view.head_dim = c.head_dim;
    view.dtype = c.dtype;
    cu::AttentionArgs args;
    args.q = q.get<float>();
    args.n = 1;
    args.heads = c.heads;
    args.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    args.causal = true;
    auto call = [&](const cu::AttentionTuning* t, float* out, float* out_lse) {
      return [&, t, out, out_lse](int i) {
        cu::PagedKvView v = view;
        v.pages = pages.get<int32_t>() + (i % r.replicas) * np;
        cu::AttentionArgs a = args;
        a.o = out;
        a.lse = out_lse;
        return t == nullptr ? cu::Attention(a, v, &ws, stream)
                            : cu::Attention(a, v, &ws, stream, *t);
      };
    };
    RS_ASSIGN_OR_RETURN(r.auto_us, TimeOnStream(stream, c.warmup, c.iters,
                                                call(nullptr, o.get<float>(), lse.get<float>())));
    cu::AttentionTuning one;
    one.force_kernel = 1;
    one.splits = 1;
    RS_ASSIGN_OR_RETURN(r.split1_us,
                        TimeOnStream(stream, c.warmup, c.iters,
                                     call(&one, o_ref.get<float>(), lse_ref.get<float>())));
    // Both on replica 0 (the same keys): the split-K merge must match one split within rounding.
    {
      RS_RETURN_IF_ERROR(call(nullptr, o.get<float>(), lse.get<float>())(0));
      RS_RETURN_IF_ERROR(call(&one, o_ref.get<float>(), lse_ref.get<float>())(0));
      CUDA_CHECK(cudaStreamSynchronize(stream));
      std::vector<float> a(static_cast<size_t>(qo)), b(static_cast<size_t>(qo));
      CUDA_CHECK(cudaMemcpy(a.data(), o.get(), qo * sizeof(float), cudaMemcpyDeviceToHost));
      CUDA_CHECK(cudaMemcpy(b.data(), o_ref.get(), qo * sizeof(float), cudaMemcpyDeviceToHost));
      for (int64_t i = 0; i < qo; ++i) {
        r.max_diff = std::max(r.max_diff, static_cast<double>(std::fabs(a[i] - b[i])));
      }
    }
    r.best_splits = 1;
    r.best_us = r.split1_us;
    if (c.sweep) {
      const int64_t max_splits = std::min<int64_t>(1024, len);
      for (int s = 2; s <= max_splits; s *= 2) {
        cu::AttentionTuning t;
        t.force_kernel = 1;
        t.splits = s;
        RS_ASSIGN_OR_RETURN(const double us,
                            TimeOnStream(stream, c.warmup, c.iters,
                                         call(&t, o_ref.get<float>(), lse_ref.get<float>())));
        if (us < r.best_us) {
          r.best_us = us;
          r.best_splits = s;
        }
      }
    }
    // Baseline: device-to-device copies of the same byte count, rotating over as many buffers.
    {
      const size_t bytes = static_cast<size_t>(r.bytes);
      DeviceBuffer src, dst;
      RS_RETURN_IF_ERROR(src.Alloc(bytes * r.replicas));
      RS_RETURN_IF_ERROR(dst.Alloc(bytes * r.replicas));
      CUDA_CHECK(cudaMemset(src.get(), 0, bytes * r.replicas));
      RS_ASSIGN_OR_RETURN(const double us, TimeOnStream(stream, c.warmup, c.iters, [&](int i) {
                            const size_t off = static_cast<size_t>(i % r.replicas) * bytes;
                            CUDA_CHECK(cudaMemcpyAsync(dst.get<char>() + off, src.get<char>() + off,
                                                       bytes, cudaMemcpyDeviceToDevice, stream));
                            return OkStatus();
                          }));
      r.memcpy_gbs = 2.0 * r.bytes / (us * 1e3);
    }
    const double gbs = r.bytes / (r.auto_us * 1e3);
    std::printf(
        "| %s | %d | %.1f | %.1f | %.0f | %.1f%% | %.1f%% | %.1f | %.2fx | %d | %.1f | %.0f | "
        "%.1f%% | %.2g |\n",
        TokensName(len).c_str(), r.replicas, r.bytes / 1e6, r.auto_us, gbs,
        100.0 * gbs / dev.peak_gbs, 100.0 * gbs / r.memcpy_gbs, r.split1_us,
        r.split1_us / r.auto_us, r.best_splits, r.best_us, r.memcpy_gbs,
        100.0 * r.memcpy_gbs / dev.peak_gbs, r.max_diff);
    std::fflush(stdout);
    (*json).push_back({{"context", len},
                       {"replicas", r.replicas},
                       {"bytes_per_call", r.bytes},
                       {"auto_us", r.auto_us},
                       {"auto_gbs", gbs},
                       {"pct_of_peak", 100.0 * gbs / dev.peak_gbs},
                       {"pct_of_memcpy", 100.0 * gbs / r.memcpy_gbs},
                       {"splits1_us", r.split1_us},
                       {"best_forced_splits", r.best_splits},
                       {"best_forced_us", r.best_us},
                       {"memcpy_gbs", r.memcpy_gbs},
                       {"max_abs_diff_auto_vs_splits1", r.max_diff}});
    rows.push_back(r);
  }
  std::printf(
      "\nGB/s = bytes/call / time (bytes = K + V read + q + o + lse); peak = %.0f GB/s (memory "
      "clock %d MHz x 2 x %d-bit bus); memcpy GB/s counts read + write (2 x bytes / time). "
      "%.0f MB L2.\n\n",
      dev.peak_gbs, dev.mem_clock_khz / 1000, dev.bus_bits, dev.l2_bytes / 1e6);
  return rows;
}

// ---------------------------------------------------------------------------------------------
// Sections "decode" and "hybrid": whole-model decode.

struct DecodeRun {
  double prefill_s = 0, decode_s = 0;
  int steps = 0, agree = 0, compared = 0;
  std::vector<int32_t> argmax;  // per step (warm-up steps included), the first from the prefill
  double tokens_per_s() const { return decode_s > 0 ? steps / decode_s : 0; }
};

// Prefills `prompt` through kv (unless `prefilled`), then runs warmup + steps greedy decode steps
// (only the last `steps` timed). With a non-empty `reference` every step feeds reference[i] (the
// baseline's greedy token) and counts agreement of this model's argmax with it.
StatusOr<DecodeRun> Decode(engine::Model& m, engine::KvSource* kv,
                           const std::vector<int32_t>& prompt, bool prefilled,
                           std::vector<float> logits, int warmup, int steps, int chunk,
                           const std::vector<int32_t>& reference) {
  DecodeRun r;
  r.steps = steps;
  if (!prefilled) {
    const auto t0 = Clock::now();
    RS_RETURN_IF_ERROR(m.Prefill(prompt, 0, kv, chunk, &logits));
    r.prefill_s = Since(t0);
  }
  double timed = 0;
  for (int i = 0; i < warmup + steps; ++i) {
    const int32_t mine = engine::ArgMax(logits);
    r.argmax.push_back(mine);
    int32_t tok = mine;
    if (static_cast<size_t>(i) < reference.size()) {
      tok = reference[i];
      r.agree += tok == mine;
      ++r.compared;
    }
    engine::SequenceStep st{std::span<const int32_t>(&tok, 1),
                            static_cast<int32_t>(prompt.size()) + i, kv};
    const auto t0 = Clock::now();
    RS_RETURN_IF_ERROR(m.Forward(std::span<const engine::SequenceStep>(&st, 1),
                                 engine::LogitsMode::kLast, &logits));
    if (i >= warmup) timed += Since(t0);
  }
  r.decode_s = timed;
  return r;
}

struct ModelConfigFlags {
  engine::TinyModelOptions o;
  std::string weights_dtype = "bf16";
  std::string kv_dtype = "f16";
  int prompt = 512, steps = 64, warmup = 2, chunk = 2048;
  int64_t long_prompt = 8192;
  bool long_cpu = false;
  // Section "hybrid".
  int64_t hybrid_context = 131072;
  int hybrid_steps = 32;
  std::string hybrid_index = "attention_aware";  // kvr::ParseKeyIndexKind
  int top_k = 100, ef_search = 0;
  int sinks = 128, window = 512;  // HybridOptions' (and the decoder's) defaults
  std::string store_dtype = "f32";
  int64_t store_mb = 65536;  // KvRetrievalOptions::memory_limit_bytes, in MiB
  bool host_kv = true;       // the host-KvCache staging baseline
};

constexpr int64_t kPageTokens = 64;  // kernels::cuda::KvPageGeometry's default (NewKvSource's)

// Device bytes of the KV pages one sequence of `tokens` tokens holds (every layer, K and V).
int64_t KvPageBytes(const engine::Model& m, DType kv_dtype, int64_t tokens) {
  const engine::KvGeometry g = m.geometry();
  const int64_t page_bytes = 2 * kPageTokens * g.kv_row() * kernels::DTypeSize(kv_dtype);
  return g.num_layers * cu::CeilDiv(tokens, kPageTokens) * page_bytes;
}

// Device pool bytes for one sequence of `tokens` tokens (pages per layer, rounded up, + slack).
int64_t PoolBytes(const engine::Model& m, DType kv_dtype, int64_t tokens) {
  return KvPageBytes(m, kv_dtype, tokens + 2 * kPageTokens);
}

std::vector<int32_t> Prompt(int64_t n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(2, vocab - 1);
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (auto& t : p) t = dist(rng);
  return p;
}

// Device memory as the decode sections found it after loading the GPU model.
struct GpuMemory {
  static constexpr int64_t kReserve = int64_t{1} << 30;  // activations, workspaces, cuBLAS
  size_t free_bytes = 0, total_bytes = 0;
  int64_t hybrid_kv_bytes = 0;  // KV pages of the whole hybrid sequence (all-GPU layout)
  bool hybrid_fits = false;     // that many pages (+ slack) + kReserve <= free_bytes
};

StatusOr<kvr::KvDtype> ParseStoreDType(const std::string& s) {
  if (s == "f32") return kvr::KvDtype::kF32;
  if (s == "f16") return kvr::KvDtype::kF16;
  return InvalidArgument(StrCat("store dtype must be f32 or f16, got '", s, "'"));
}

// One row of the hybrid table (and of its JSON).
struct HybridRow {
  std::string kv;     // what holds the KV
  std::string state;  // "ok", or why the row has no numbers
  double prefill_s = -1, build_s = -1;
  DecodeRun run;
  int64_t gpu_bytes = -1, cpu_only_tokens = -1, store_bytes = -1;
  double keys_per_step = -1, pct_of_exact_scan = -1;
  bool compared = false;  // run.agree / run.compared are against the all-GPU tokens
};

// Section "hybrid": DeviceRetrievalKvSource (sinks + window in GPU pages, the middle in an
// in-process KV retrieval store) against the all-GPU paged KV and the host KvCache staged per
// layer, on one prompt of f.hybrid_context tokens. Order: the all-GPU run first (its greedy
// tokens teacher-force the others; the host cache is filled from its pages), its pages given
// back, then the hybrid source (which needs the whole prompt in GPU pages while it prefills).
int RunHybrid(const ModelConfigFlags& f, engine::Model& gm, const kernels::Ops* gpu_ops,
              DType kv_dtype, int64_t pool_bytes, const GpuMemory& mem, Json* json) {
  const engine::KvGeometry g = gm.geometry();
  const int64_t ctx = f.hybrid_context;
  const int total_steps = f.warmup + f.hybrid_steps;
  const std::string cs = TokensName(ctx);
  auto kind = kvr::ParseKeyIndexKind(f.hybrid_index);
  auto store_dtype = ParseStoreDType(f.store_dtype);
  if (!kind.ok() || !store_dtype.ok()) {
    std::fprintf(stderr, "%s\n",
                 (kind.ok() ? store_dtype.status() : kind.status()).ToString().c_str());
    return 2;
  }
  std::printf(
      "### hybrid: GPU sinks + window, CPU-resident middle (DeviceRetrievalKvSource) at %s "
      "context\n\n",
      cs.c_str());
  std::printf(
      "store: in-process KvRetrieval, %s key index, top_k %d, ef_search %d, sinks %d, window %d, "
      "K/V stored as %s (limit %ld MB); %d warm-up + %d timed greedy decode steps (batch 1), "
      "teacher-forced with the all-GPU tokens; prefill chunk %d\n",
      f.hybrid_index.c_str(), f.top_k, f.ef_search, f.sinks, f.window, f.store_dtype.c_str(),
      static_cast<long>(f.store_mb), f.warmup, f.hybrid_steps, f.chunk);
  std::printf(
      "GPU memory after loading the model: %.0f MB free of %.0f MB; the full KV of %ld tokens "
      "takes %.1f MB of %s pages (+ %.0f MB kept free for the rest)\n\n",
      mem.free_bytes / 1e6, mem.total_bytes / 1e6, static_cast<long>(ctx + total_steps),
      mem.hybrid_kv_bytes / 1e6, f.kv_dtype.c_str(), GpuMemory::kReserve / 1e6);
  std::fflush(stdout);
  // An exact scan of the store's middle at step i scores (ctx + i - window - sinks) keys per
  // query head and layer (the store holds ctx + i tokens when step i attends).
  double exact_keys = 0;
  for (int i = 0; i < total_steps; ++i) {
    exact_keys += static_cast<double>(std::max<int64_t>(0, ctx + i - f.window - f.sinks)) *
                  g.num_heads * g.num_layers;
  }
  const std::vector<int32_t> prompt = Prompt(ctx, gm.config().vocab_size, 13);

  HybridRow all{"all-GPU paged KV (" + f.kv_dtype + ")", "ok"};
  HybridRow host{"host KvCache, staged per layer", "ok"};
  HybridRow hyb{"hybrid: GPU sinks + window, CPU KV retrieval", "ok"};
  int rc = 0;
  if (!mem.hybrid_fits) {
    const std::string why = StrCat("skipped: does not fit (", mem.hybrid_kv_bytes / 1000000,
                                   " MB of KV pages + ", GpuMemory::kReserve / 1000000,
                                   " MB reserve > ", mem.free_bytes / 1000000, " MB free)");
    all.state = why;
    host.state = "skipped: filled from the all-GPU pages";
    // device_retrieval_source.h: the whole prompt is in GPU pages during prefill.
    hyb.state = "skipped: its prefill holds the whole prompt in GPU pages too";
  } else {
    auto src = gm.NewKvSource(kv_dtype, pool_bytes);
    CHECK_OK(src.status());
    auto* dev = dynamic_cast<engine::DeviceKvCache*>(src->get());
    if (dev == nullptr) {
      std::fprintf(stderr, "NewKvSource did not return a DeviceKvCache\n");
      return 1;
    }
    std::vector<float> logits;
    auto t0 = Clock::now();
    CHECK_OK(gm.Prefill(prompt, 0, dev, f.chunk, &logits));
    all.prefill_s = Since(t0);
    // The host cache gets the same K/V (read back from the device pages, so the same rounding):
    // a CPU prefill of a long context would take far longer than the measurement.
    std::unique_ptr<engine::KvCache> host_kv;
    double host_copy_s = 0;
    if (f.host_kv) {
      t0 = Clock::now();
      host_kv = gm.NewKvCache();
      constexpr int64_t kChunk = 4096;
      std::vector<float> k, v;
      std::vector<int32_t> pos;
      for (int l = 0; l < g.num_layers; ++l) {
        for (int64_t b = 0; b < ctx; b += kChunk) {
          const int64_t e = std::min<int64_t>(ctx, b + kChunk);
          k.resize(static_cast<size_t>((e - b) * g.kv_row()));
          v.resize(k.size());
          pos.resize(static_cast<size_t>(e - b));
          std::iota(pos.begin(), pos.end(), static_cast<int32_t>(b));
          CHECK_OK(dev->paged().Read(l, b, e, k.data(), v.data()));
          CHECK_OK(host_kv->Append(l, k.data(), v.data(), static_cast<int>(e - b), pos.data()));
        }
      }
      host_copy_s = Since(t0);
    }
    auto run =
        Decode(gm, dev, prompt, /*prefilled=*/true, logits, f.warmup, f.hybrid_steps, f.chunk, {});
    CHECK_OK(run.status());
    all.run = *run;
    all.gpu_bytes = dev->bytes();
    all.cpu_only_tokens = 0;
    src->reset();  // its pages go back to the pool
    if (host_kv != nullptr) {
      auto staged = Decode(gm, host_kv.get(), prompt, /*prefilled=*/true, logits, f.warmup,
                           f.hybrid_steps, f.chunk, all.run.argmax);
      CHECK_OK(staged.status());
      host.run = *staged;
      host.compared = true;
      host.gpu_bytes = 0;
      host.cpu_only_tokens = ctx + total_steps;
      std::printf("(host KvCache baseline: %.1f s to copy the prompt's K/V from the GPU pages)\n",
                  host_copy_s);
      host_kv.reset();
    } else {
      host.state = "skipped: --no-host-kv";
    }

    // The hybrid source over an in-process store.
    kvr::KvRetrievalOptions ko;
    ko.memory_limit_bytes = f.store_mb << 20;
    ko.defaults.sink_tokens = f.sinks;
    ko.defaults.window_tokens = f.window;
    ko.defaults.index_kind = *kind;
    kvr::KvRetrieval store(ko);
    kvr::LocalKvrClient client(&store);
    kvr::RetrievalSourceOptions ro;
    ro.prefill_tokens = ctx;
    ro.attend.top_k = f.top_k;
    ro.attend.ef_search = f.ef_search;
    ro.sink_tokens = f.sinks;
    ro.window_tokens = f.window;
    ro.index_kind = static_cast<int>(*kind);
    ro.dtype = *store_dtype;
    auto pool = gm.DeviceKvPool(kv_dtype, pool_bytes);
    CHECK_OK(pool.status());
    auto hs = kvr::DeviceRetrievalKvSource::Create(&client, "cuda_bench", g, ro, *pool, gpu_ops);
    CHECK_OK(hs.status());
    kvr::DeviceRetrievalKvSource& h = **hs;
    std::vector<float> hlogits;
    t0 = Clock::now();
    CHECK_OK(gm.Prefill(prompt, 0, &h, f.chunk, &hlogits));
    hyb.prefill_s = Since(t0);
    hyb.build_s = h.stats().build_ms / 1e3;
    Status st = h.status();
    if (st.ok() && !h.decoding()) st = Internal("the source is not decoding after the prefill");
    if (st.ok()) {
      auto hr = Decode(gm, &h, prompt, /*prefilled=*/true, hlogits, f.warmup, f.hybrid_steps,
                       f.chunk, all.run.argmax);
      st = hr.ok() ? h.status() : hr.status();
      if (hr.ok()) hyb.run = *hr;
    }
    if (!st.ok()) {
      std::fprintf(stderr, "hybrid: %s\n", st.ToString().c_str());
      hyb.state = "error: " + st.ToString();
      rc = 1;
    } else {
      hyb.compared = true;
      hyb.gpu_bytes = h.gpu_bytes();
      hyb.cpu_only_tokens = h.cpu_only_tokens();
      hyb.keys_per_step = static_cast<double>(h.stats().keys_scored) / total_steps;
      hyb.pct_of_exact_scan =
          exact_keys > 0 ? 100.0 * static_cast<double>(h.stats().keys_scored) / exact_keys : 0;
      auto sb = store.SequenceBytes("cuda_bench");
      if (sb.ok()) hyb.store_bytes = *sb;
    }
    CHECK_OK(h.Release());
  }

  std::printf(
      "\n| context | KV | prefill s | index build s | decode tok/s | vs all-GPU KV | GPU KV MB | "
      "%% of full KV on GPU | CPU-only tokens | store MB | keys scored / step | %% of exact "
      "scan | greedy top-1 agree with all-GPU |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  const double full_bytes = all.gpu_bytes > 0 ? static_cast<double>(all.gpu_bytes)
                                              : static_cast<double>(mem.hybrid_kv_bytes);
  auto num = [](double v, const char* fmt) {
    if (v < 0) return std::string("-");
    char buf[64];
    std::snprintf(buf, sizeof(buf), fmt, v);
    return std::string(buf);
  };
  Json rows = Json::array();
  for (const HybridRow* r : {&all, &host, &hyb}) {
    const bool ok = r->state == "ok";
    const double tps = r->run.tokens_per_s();
    const double base = all.run.tokens_per_s();
    if (!ok) {
      std::printf("| %s | %s | %s | - | - | - | - | - | - | - | - | - | - |\n", cs.c_str(),
                  r->kv.c_str(), r->state.c_str());
    } else {
      std::printf(
          "| %s | %s | %s | %s | %.1f | %s | %s | %s | %s | %s | %s | %s | %s |\n", cs.c_str(),
          r->kv.c_str(), num(r->prefill_s, "%.2f").c_str(), num(r->build_s, "%.2f").c_str(), tps,
          base > 0 ? num(tps / base, "%.2fx").c_str() : "-",
          num(r->gpu_bytes >= 0 ? r->gpu_bytes / 1e6 : -1, "%.1f").c_str(),
          num(r->gpu_bytes >= 0 ? 100.0 * r->gpu_bytes / full_bytes : -1, "%.2f%%").c_str(),
          num(static_cast<double>(r->cpu_only_tokens), "%.0f").c_str(),
          num(r->store_bytes >= 0 ? r->store_bytes / 1e6 : -1, "%.0f").c_str(),
          num(r->keys_per_step, "%.3g").c_str(), num(r->pct_of_exact_scan, "%.2f%%").c_str(),
          r->compared ? StrCat(r->run.agree, "/", r->run.compared).c_str() : "-");
    }
    Json row = {{"context", ctx}, {"kv", r->kv}, {"state", r->state}};
    if (ok) {
      if (r->prefill_s >= 0) row["prefill_s"] = r->prefill_s;
      if (r->build_s >= 0) row["index_build_s"] = r->build_s;
      row["decode_tps"] = tps;
      if (base > 0) row["vs_all_gpu"] = tps / base;
      row["gpu_kv_bytes"] = r->gpu_bytes;
      row["pct_of_full_kv_on_gpu"] = 100.0 * r->gpu_bytes / full_bytes;
      row["cpu_only_tokens"] = r->cpu_only_tokens;
      if (r->store_bytes >= 0) row["store_bytes"] = r->store_bytes;
      if (r->keys_per_step >= 0) row["keys_scored_per_step"] = r->keys_per_step;
      if (r->pct_of_exact_scan >= 0) row["pct_of_exact_scan"] = r->pct_of_exact_scan;
      if (r->compared) {
        row["greedy_agree"] = r->run.agree;
        row["greedy_compared"] = r->run.compared;
      }
    }
    rows.push_back(row);
  }
  std::printf(
      "\ntok/s over the %d timed steps; the hybrid's prefill s includes its index build (run "
      "after the last prompt chunk); GPU KV MB, CPU-only tokens and store MB (K/V + key indexes "
      "in CPU memory) after the last step (%ld tokens per layer); %% of full KV on GPU = GPU KV "
      "MB / the all-GPU run's; keys scored / step = the store's key-index q.k products per decode "
      "step (all layers and query heads, warm-up included), %% of exact scan = the same / scoring "
      "every middle key; agreement counts the prefill's token and the warm-up steps.\n\n",
      f.hybrid_steps, static_cast<long>(ctx + total_steps));
  std::fflush(stdout);
  (*json)["hybrid"] = {{"context", ctx},
                       {"index", f.hybrid_index},
                       {"top_k", f.top_k},
                       {"ef_search", f.ef_search},
                       {"sinks", f.sinks},
                       {"window", f.window},
                       {"store_dtype", f.store_dtype},
                       {"kv_dtype", f.kv_dtype},
                       {"warmup", f.warmup},
                       {"steps", f.hybrid_steps},
                       {"gpu_free_bytes", mem.free_bytes},
                       {"gpu_total_bytes", mem.total_bytes},
                       {"full_kv_bytes", mem.hybrid_kv_bytes},
                       {"rows", rows}};
  return rc;
}

int RunDecodeSections(const ModelConfigFlags& f, bool decode, bool hybrid, const std::string& dir,
                      Json* json) {
  auto kv_dtype = ParseDType(f.kv_dtype);
  auto w_dtype = ParseDType(f.weights_dtype);
  if (!kv_dtype.ok() || !w_dtype.ok()) {
    std::fprintf(stderr, "%s\n",
                 (kv_dtype.ok() ? w_dtype.status() : kv_dtype.status()).ToString().c_str());
    return 2;
  }
  engine::TinyModelOptions o = f.o;
  o.dtype = *w_dtype;
  int64_t longest = decode ? f.prompt : 0;
  if (decode && f.long_prompt > 0) longest = std::max(longest, f.long_prompt);
  // Tokens one device sequence reaches in each section (prompt + warm-up + timed steps).
  const int64_t decode_end = decode ? longest + f.warmup + f.steps : 0;
  const int64_t hybrid_end = hybrid ? f.hybrid_context + f.warmup + f.hybrid_steps : 0;
  o.max_position_embeddings = static_cast<int>(std::max(decode_end, hybrid_end) + 64);
  CHECK_OK(engine::WriteTinyModel(o, {}, dir + "/model"));
  auto gpu_ops = cu::CudaOps();
  if (!gpu_ops.ok()) {
    std::fprintf(stderr, "CudaOps: %s\n", gpu_ops.status().ToString().c_str());
    return 1;
  }
  auto cpu = engine::Model::Load(dir + "/model");
  auto gpu = engine::Model::Load(dir + "/model", *gpu_ops);
  if (!cpu.ok() || !gpu.ok()) {
    std::fprintf(stderr, "Model::Load: %s\n",
                 (cpu.ok() ? gpu.status() : cpu.status()).ToString().c_str());
    return 1;
  }
  engine::Model& cm = **cpu;
  engine::Model& gm = **gpu;
  const engine::KvGeometry g = gm.geometry();
  // The model's page pool is made by the first NewKvSource and fixed then: size it for the
  // longest sequence (one device sequence is alive at a time). The hybrid context's pages count
  // only if they fit in the free device memory (with kReserve left for activations, attention
  // workspaces and cuBLAS): the hybrid source holds the whole prompt in GPU pages while it
  // prefills, like the all-GPU baseline, so the section is skipped otherwise.
  GpuMemory mem;
  if (cudaMemGetInfo(&mem.free_bytes, &mem.total_bytes) != cudaSuccess) {
    std::fprintf(stderr, "cudaMemGetInfo: %s\n", cudaGetErrorString(cudaGetLastError()));
    return 1;
  }
  mem.hybrid_kv_bytes = hybrid ? KvPageBytes(gm, *kv_dtype, hybrid_end) : 0;
  mem.hybrid_fits = hybrid && PoolBytes(gm, *kv_dtype, hybrid_end) + GpuMemory::kReserve <=
                                  static_cast<int64_t>(mem.free_bytes);
  const int64_t pool_bytes =
      PoolBytes(gm, *kv_dtype, std::max(decode_end, mem.hybrid_fits ? hybrid_end : 0));
  std::printf(
      "model: random-weight llama, %.1fM params, %s weights, %d layers, hidden %d, %d heads / %d "
      "kv heads (head_dim %d), ffn %d, vocab %d; GPU KV %s in a %.0f MB page pool; %d warm-up + "
      "%d timed greedy decode steps (batch 1); prefill chunk %d\n\n",
      gm.weights().num_params() / 1e6, f.weights_dtype.c_str(), g.num_layers, o.hidden_size,
      g.num_heads, g.num_kv_heads, g.head_dim, o.intermediate_size, o.vocab_size,
      f.kv_dtype.c_str(), pool_bytes / 1e6, f.warmup, f.steps, f.chunk);
  Json model_json = {{"params", gm.weights().num_params()},
                     {"weights_dtype", f.weights_dtype},
                     {"layers", g.num_layers},
                     {"hidden", o.hidden_size},
                     {"heads", g.num_heads},
                     {"kv_heads", g.num_kv_heads},
                     {"head_dim", g.head_dim},
                     {"ffn", o.intermediate_size},
                     {"vocab", o.vocab_size},
                     {"kv_dtype", f.kv_dtype}};
  (*json)["model"] = model_json;
  auto new_device_kv = [&]() -> StatusOr<std::unique_ptr<engine::KvSource>> {
    return gm.NewKvSource(*kv_dtype, pool_bytes);
  };

  if (decode) {
    std::printf("### decode: GPU (CudaOps, device paged KV) vs CPU (FastOps, host KvCache)\n\n");
    std::printf(
        "| prompt | CPU prefill s | GPU prefill s | CPU decode tok/s | GPU decode tok/s | GPU / "
        "CPU | greedy top-1 agree (GPU fed CPU tokens) |\n|---|---|---|---|---|---|---|\n");
    std::fflush(stdout);
    Json rows = Json::array();
    std::vector<int64_t> prompts = {f.prompt};
    if (f.long_prompt > 0 && f.long_prompt != f.prompt) prompts.push_back(f.long_prompt);
    for (int64_t plen : prompts) {
      const std::vector<int32_t> prompt = Prompt(plen, o.vocab_size, 11);
      const bool with_cpu = plen == f.prompt || f.long_cpu;
      DecodeRun c;
      if (with_cpu) {
        auto kv = cm.NewKvCache();
        auto run = Decode(cm, kv.get(), prompt, false, {}, f.warmup, f.steps, f.chunk, {});
        CHECK_OK(run.status());
        c = *run;
      }
      auto kv = new_device_kv();
      CHECK_OK(kv.status());
      auto run = Decode(gm, kv->get(), prompt, false, {}, f.warmup, f.steps, f.chunk, c.argmax);
      CHECK_OK(run.status());
      const DecodeRun& gr = *run;
      if (with_cpu) {
        std::printf("| %s | %.2f | %.2f | %.1f | %.1f | %.2fx | %d/%d |\n",
                    TokensName(plen).c_str(), c.prefill_s, gr.prefill_s, c.tokens_per_s(),
                    gr.tokens_per_s(), gr.tokens_per_s() / c.tokens_per_s(), gr.agree, gr.compared);
      } else {
        std::printf("| %s | - | %.2f | - | %.1f | - | - |\n", TokensName(plen).c_str(),
                    gr.prefill_s, gr.tokens_per_s());
      }
      std::fflush(stdout);
      Json row = {
          {"prompt", plen}, {"gpu_prefill_s", gr.prefill_s}, {"gpu_decode_tps", gr.tokens_per_s()}};
      if (with_cpu) {
        row["cpu_prefill_s"] = c.prefill_s;
        row["cpu_decode_tps"] = c.tokens_per_s();
        row["gpu_over_cpu"] = gr.tokens_per_s() / c.tokens_per_s();
        row["greedy_agree"] = gr.agree;
        row["greedy_compared"] = gr.compared;
      }
      rows.push_back(row);
    }
    (*json)["decode"] = rows;
    std::printf("\n");
  }

  if (hybrid) return RunHybrid(f, gm, *gpu_ops, *kv_dtype, pool_bytes, mem, json);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string section = "all", contexts = "4K,8K,16K,32K,64K,128K", dtype = "f16", json_path;
  std::string hybrid_context = "128K";
  AttentionConfig ac;
  bool no_rotate = false, no_sweep = false;
  ModelConfigFlags mf;
  mf.o.num_layers = 12;
  mf.o.hidden_size = 768;
  mf.o.num_heads = 12;
  mf.o.num_kv_heads = 4;
  mf.o.intermediate_size = 2048;
  mf.o.vocab_size = 16000;
  mf.o.seed = 5;
  CLI::App app{"cuda_bench: flash-decoding bandwidth, GPU vs CPU decode, GPU+CPU hybrid KV"};
  app.add_option("--section", section, "all | attention | decode | hybrid")->capture_default_str();
  app.add_option("--contexts", contexts, "attention: comma list of context lengths (4K = 4096)")
      ->capture_default_str();
  app.add_option("--heads", ac.heads, "attention: query heads")->capture_default_str();
  app.add_option("--kv-heads", ac.kv_heads, "attention: KV heads")->capture_default_str();
  app.add_option("--head-dim", ac.head_dim, "attention: head dim")->capture_default_str();
  app.add_option("--dtype", dtype, "attention: KV dtype f16 | bf16 | f32")->capture_default_str();
  app.add_option("--page-size", ac.page_size, "attention: tokens per page")->capture_default_str();
  app.add_option("--iters", ac.iters, "attention: timed calls per measurement")
      ->capture_default_str();
  app.add_option("--warmup", ac.warmup, "attention: untimed calls first")->capture_default_str();
  app.add_flag("--no-rotate", no_rotate, "attention: one cache replica (lets L2 serve short ones)");
  app.add_flag("--no-sweep", no_sweep, "attention: skip the forced-splits sweep");
  app.add_option("--prompt", mf.prompt, "decode: prompt tokens (CPU and GPU)")
      ->capture_default_str();
  app.add_option("--steps", mf.steps, "decode: timed decode steps")->capture_default_str();
  app.add_option("--long-prompt", mf.long_prompt, "decode: GPU-only row at this prompt (0: none)")
      ->capture_default_str();
  app.add_flag("--long-cpu", mf.long_cpu, "decode: run the CPU on the long prompt too (slow)");
  app.add_option("--hybrid-context", hybrid_context, "hybrid: context tokens (128K = 131072)")
      ->capture_default_str();
  app.add_option("--hybrid-steps", mf.hybrid_steps, "hybrid: timed decode steps")
      ->capture_default_str();
  app.add_option("--hybrid-index", mf.hybrid_index,
                 "hybrid: key index exact | hnsw | ivf | attention_aware")
      ->capture_default_str();
  app.add_option("--hybrid-top-k", mf.top_k, "hybrid: keys retrieved per query head and step")
      ->capture_default_str();
  app.add_option("--hybrid-ef-search", mf.ef_search, "hybrid: graph index beam (0 = default)")
      ->capture_default_str();
  app.add_option("--hybrid-sinks", mf.sinks, "hybrid: first tokens kept on the GPU")
      ->capture_default_str();
  app.add_option("--hybrid-window", mf.window, "hybrid: last tokens kept on the GPU")
      ->capture_default_str();
  app.add_option("--hybrid-store-dtype", mf.store_dtype, "hybrid: store K/V as f32 | f16")
      ->capture_default_str();
  app.add_option("--hybrid-store-mb", mf.store_mb, "hybrid: memory limit of the store (MiB)")
      ->capture_default_str();
  bool no_host_kv = false;
  app.add_flag("--no-host-kv", no_host_kv,
               "hybrid: skip the host-KvCache baseline (every step attends the whole context on "
               "the CPU)");
  app.add_option("--kv-dtype", mf.kv_dtype, "decode/hybrid: GPU KV dtype f16 | bf16 | f32")
      ->capture_default_str();
  app.add_option("--prefill-chunk", mf.chunk, "decode/hybrid: prefill chunk tokens")
      ->capture_default_str();
  app.add_option("--model-layers", mf.o.num_layers, "Model layers")->capture_default_str();
  app.add_option("--model-hidden", mf.o.hidden_size, "Model hidden size")->capture_default_str();
  app.add_option("--model-heads", mf.o.num_heads, "Model query heads")->capture_default_str();
  app.add_option("--model-kv-heads", mf.o.num_kv_heads, "Model KV heads")->capture_default_str();
  app.add_option("--model-ffn", mf.o.intermediate_size, "Model FFN size")->capture_default_str();
  app.add_option("--model-vocab", mf.o.vocab_size, "Model vocabulary")->capture_default_str();
  app.add_option("--model-dtype", mf.weights_dtype, "Model weights f32 | f16 | bf16")
      ->capture_default_str();
  app.add_option("--json", json_path, "Also write the tables as JSON to this path");
  CLI11_PARSE(app, argc, argv);
  ac.rotate = !no_rotate;
  ac.sweep = !no_sweep;
  ac.iters = std::max(1, ac.iters);
  ac.warmup = std::max(0, ac.warmup);
  mf.steps = std::max(1, mf.steps);
  mf.prompt = std::max(1, mf.prompt);
  mf.o.vocab_size = std::max(258, mf.o.vocab_size);
  mf.hybrid_context = ParseTokens(hybrid_context);
  mf.hybrid_steps = std::max(1, mf.hybrid_steps);
  mf.host_kv = !no_host_kv;
  {
    std::stringstream ss(contexts);
    std::string item;
    while (std::getline(ss, item, ',')) {
      const int64_t t = ParseTokens(item);
      if (t <= 0) {
        std::fprintf(stderr, "--contexts: bad length '%s'\n", item.c_str());
        return 2;
      }
      ac.contexts.push_back(t);
    }
  }
  auto att_dtype = ParseDType(dtype);
  if (!att_dtype.ok()) {
    std::fprintf(stderr, "--dtype: %s\n", att_dtype.status().ToString().c_str());
    return 2;
  }
  ac.dtype = *att_dtype;
  if (section != "all" && section != "attention" && section != "decode" && section != "hybrid") {
    std::fprintf(stderr, "--section must be all, attention, decode or hybrid\n");
    return 2;
  }
  if (mf.hybrid_context <= 0 || ac.contexts.empty()) {
    std::fprintf(stderr, "--hybrid-context and --contexts need lengths > 0\n");
    return 2;
  }
  if (auto k = kvr::ParseKeyIndexKind(mf.hybrid_index); !k.ok()) {
    std::fprintf(stderr, "--hybrid-index: %s\n", k.status().ToString().c_str());
    return 2;
  }
  if (auto d = ParseStoreDType(mf.store_dtype); !d.ok()) {
    std::fprintf(stderr, "--hybrid-store-dtype: %s\n", d.status().ToString().c_str());
    return 2;
  }
  if (mf.top_k < 1 || mf.ef_search < 0 || mf.sinks < 0 || mf.window < 0 || mf.store_mb < 1) {
    std::fprintf(stderr,
                 "--hybrid-top-k and --hybrid-store-mb must be >= 1, --hybrid-ef-search, "
                 "--hybrid-sinks and --hybrid-window >= 0\n");
    return 2;
  }

  int driver = 0, runtime = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) cudaGetLastError();
  if (cudaRuntimeGetVersion(&runtime) != cudaSuccess) cudaGetLastError();
  std::string command;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);
  std::printf(
      "## cuda_bench\n\ndate: %s\nmachine: %s, loadavg %s\ncommand: %s\n", UtcNow().c_str(),
      (ragserve::bench::CpuModel() + ", " + std::to_string(ragserve::bench::CpuCount()) + " cpus")
          .c_str(),
      ragserve::bench::LoadAvg().c_str(), command.c_str());
  std::printf("CUDA driver %s, runtime %s\n", CudaVersion(driver).c_str(),
              CudaVersion(runtime).c_str());
  Json json = {{"bench", "cuda_bench"},
               {"date", UtcNow()},
               {"cpu", (ragserve::bench::CpuModel() + ", " +
                        std::to_string(ragserve::bench::CpuCount()) + " cpus")},
               {"command", command},
               {"cuda_driver", CudaVersion(driver)},
               {"cuda_runtime", CudaVersion(runtime)}};
  auto write_json = [&]() {
    if (json_path.empty()) return;
    std::ofstream(json_path) << json.dump(2) << "\n";
  };
  if (cu::DeviceCount() == 0) {
    const std::string reason = cu::NoDeviceReason();
    std::printf("no CUDA device: %s\n", reason.c_str());
    json["no_device"] = reason;
    write_json();
    return kNoDeviceExit;
  }
  if (cudaSetDevice(0) != cudaSuccess) {
    const std::string reason = StrCat("cudaSetDevice(0): ", cudaGetErrorString(cudaGetLastError()));
    std::printf("no CUDA device: %s\n", reason.c_str());
    json["no_device"] = reason;
    write_json();
    return kNoDeviceExit;
  }
  auto dev = QueryDevice();
  CHECK_OK(dev.status());
  std::printf(
      "device: %s, %d SMs, %.0f MB L2, memory clock %d MHz x %d-bit bus: theoretical peak %.0f "
      "GB/s\n\n",
      dev->description.c_str(), dev->sms, dev->l2_bytes / 1e6, dev->mem_clock_khz / 1000,
      dev->bus_bits, dev->peak_gbs);
  json["device"] = {{"description", dev->description}, {"sms", dev->sms},
                    {"l2_bytes", dev->l2_bytes},       {"memory_clock_khz", dev->mem_clock_khz},
                    {"bus_bits", dev->bus_bits},       {"peak_gbs", dev->peak_gbs}};
  std::fflush(stdout);

  if (section == "all" || section == "attention") {
    Json rows = Json::array();
    auto r = RunAttention(ac, *dev, &rows);
    json["attention"] = {{"heads", ac.heads},
                         {"kv_heads", ac.kv_heads},
                         {"head_dim", ac.head_dim},
                         {"dtype", dtype},
                         {"page_size", ac.page_size},
                         {"iters", ac.iters},
                         {"cold_l2_rotation", ac.rotate},
                         {"rows", rows}};
    if (!r.ok()) {
      std::fprintf(stderr, "attention: %s\n", r.status().ToString().c_str());
      write_json();
      return 1;
    }
  }
  int rc = 0;
  if (section != "attention") {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / ("cuda_bench_" + std::string(6, 'X'))).string();
    if (::mkdtemp(tmpl.data()) == nullptr) return 1;
    rc = RunDecodeSections(mf, section == "all" || section == "decode",
                           section == "all" || section == "hybrid", tmpl, &json);
    std::error_code ec;
    std::filesystem::remove_all(tmpl, ec);
  }
  std::printf("loadavg at the end %s\n", ragserve::bench::LoadAvg().c_str());
  write_json();
  return rc;
}
