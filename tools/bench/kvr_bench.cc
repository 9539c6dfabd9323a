// kvr_bench: RetrievalAttention key retrieval on seeded out-of-distribution synthetic data.
//
// For each context length N: one kv head (d = 128 by default) with a GQA group of 4 query heads;
// sinks + window are attended exactly, the middle through a key index. For every index kind
// (exact scan, hnswlib, FAISS IVF, attention-aware) and a sweep of its search parameter it
// prints recall@k of the true top-k keys (per query head, over the middle), the fraction of
// middle keys whose q.k was computed, the relative L2 error of the hybrid attention output vs
// full attention, and the median latency of one Attend call (all query heads of the group),
// with the speed-up over the exact scan measured in the same run.
//
// Full attention (the baseline retrieval must beat) is reported per Attend on 1 thread
// (HybridAttention::AttendFull) and split-K on 2 threads, with the bandwidth it reaches (bytes of
// K + V read / time), beside a read-bandwidth probe of the machine in the same run; the exact scan
// row's K bandwidth too.
//
// Usage: kvr_bench [--n 32768,131072] [--decode 32] [--top-k 100] [--seed 1] [--csv FILE]
#include <immintrin.h>
#include <omp.h>
#include <sys/utsname.h>

#include <unistd.h>
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"
#include "services/engine/model.h"
#include "services/engine/sampling.h"
#include "services/engine/tiny_model.h"
#include "services/kvr/hybrid_attention.h"
#include "services/kvr/kv_store.h"
#include "tests/support/kvr_synthetic.h"
#include "tools/bench/bench_util.h"

namespace {

using namespace ragserve;
using Clock = std::chrono::steady_clock;

double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

double Best(const std::vector<double>& v) {
  return v.empty() ? 0.0 : *std::min_element(v.begin(), v.end());
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

struct Row {
  int64_t n;
  std::string kind;
  std::string param;
  double build_s;
  double recall;
  double scored_frac;
  double rel_err_mean;
  double rel_err_max;
  double attend_ms;
};

struct Sweep {
  kvr::KeyIndexKind kind;
  std::vector<int> values;  // ef_search (graphs) or nprobe (IVF); one 0 entry for exact
};

// Forwards to a KvCache and records layer `layer`'s K/V (after RoPE) and queries.
class RecordingKv final : public engine::KvSource {
 public:
  RecordingKv(engine::KvSource* inner, int layer) : inner_(inner), layer_(layer) {}
  Status Append(int layer, const float* k, const float* v, int n,
                const int32_t* positions) override {
    if (layer == layer_) {
      const int64_t row = static_cast<int64_t>(n) * kv_row;
      k_.insert(k_.end(), k, k + row);
      v_.insert(v_.end(), v, v + row);
    }
    return inner_->Append(layer, k, v, n, positions);
  }
  Status Attend(int layer, const float* q, int n, float scale, float* o, float* lse) override {
    if (layer == layer_) q_.insert(q_.end(), q, q + static_cast<int64_t>(n) * q_row);
    return inner_->Attend(layer, q, n, scale, o, lse);
  }
  int64_t kv_row = 0, q_row = 0;
  std::vector<float> k_, v_, q_;

 private:
  engine::KvSource* inner_;
  int layer_;
};

// Real Q/K/V from the engine: a seeded random-weight Llama (WriteTinyModel: 2 layers, 8 query /
// 2 kv heads of dim d) prefills n random token ids, then decodes n_decode greedy tokens; the
// workload is kv head 0 of layer `layer` and its group of query heads.
StatusOr<kvr::SyntheticWorkload> RecordWorkload(int64_t n, int d, int64_t n_decode, int layer,
                                                uint64_t seed, const std::string& dir,
                                                const std::string& model_dir) {
  engine::TinyModelOptions mo;
  mo.num_layers = 2;
  mo.hidden_size = 256;
  mo.num_heads = 8;
  mo.num_kv_heads = 2;
  mo.head_dim = d;
  mo.max_position_embeddings = static_cast<int>(n + n_decode + 1);
  mo.seed = seed;
  if (model_dir.empty()) RS_RETURN_IF_ERROR(engine::WriteTinyModel(mo, {}, dir));
  RS_ASSIGN_OR_RETURN(auto model, engine::Model::Load(model_dir.empty() ? dir : model_dir));
  const engine::KvGeometry g = model->geometry();
  RS_CHECK_ARG(layer >= 0 && layer < g.num_layers, "--record-layer ", layer, " out of range");
  auto cache = model->NewKvCache();
  RecordingKv rec(cache.get(), layer);
  rec.kv_row = g.kv_row();
  rec.q_row = static_cast<int64_t>(g.num_heads) * g.head_dim;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> tok(2, model->config().vocab_size - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& t : ids) t = tok(rng);
  std::vector<float> logits;
  RS_RETURN_IF_ERROR(model->Prefill(ids, 0, &rec, 512, &logits));
  for (int64_t s = 0; s < n_decode; ++s) {
    const int32_t next = engine::ArgMax(logits);
    RS_RETURN_IF_ERROR(
        model->Prefill(std::vector<int32_t>{next}, static_cast<int32_t>(n + s), &rec, 0, &logits));
  }
  const int group = g.num_heads / g.num_kv_heads;
  kvr::SyntheticWorkload w;
  w.n_keys = n;
  w.head_dim = g.head_dim;
  w.group_size = group;
  w.n_decode = n_decode;
  auto take = [&](const std::vector<float>& src, int64_t t, int64_t row, int64_t off, int cnt,
                  std::vector<float>* out) {
    const float* p = src.data() + t * row + off * g.head_dim;
    out->insert(out->end(), p, p + static_cast<int64_t>(cnt) * g.head_dim);
  };
  for (int64_t t = 0; t < n; ++t) {
    take(rec.k_, t, rec.kv_row, 0, 1, &w.keys);
    take(rec.v_, t, rec.kv_row, 0, 1, &w.values);
    take(rec.q_, t, rec.q_row, 0, group, &w.prefill_queries);
  }
  for (int64_t t = n; t < n + n_decode; ++t)
    take(rec.q_, t, rec.q_row, 0, group, &w.decode_queries);
  return w;
}

struct Flags {
  std::vector<int64_t> ns = {32768, 131072};
  int64_t n_decode = 32;
  int top_k = 100;
  int d = 128;
  int group = 4;
  uint64_t seed = 1;
  std::string csv;
  std::vector<int> aa_ef = {100, 160, 256};
  std::vector<int> hnsw_ef = {100, 400, 1600, 6400};
  std::vector<int> ivf_nprobe = {4, 16, 64, 160};
  ragserve::index::AttentionAwareParams aa;
  std::string kinds = "exact,attention_aware,hnsw,ivf";
  bool verbose = false;
  bool probe = true;  // the read-bandwidth probe before the tables
  bool record = false;
  int record_layer = 1;
  std::string model_dir;
};

void AddFlags(CLI::App& app, Flags& f) {
  app.add_option("--n", f.ns, "context lengths (keys)")->delimiter(',');
  app.add_option("--decode", f.n_decode, "decode steps (query groups) per N");
  app.add_option("--top-k", f.top_k, "keys retrieved per query head");
  app.add_option("--d", f.d, "head dim");
  app.add_option("--group", f.group, "query heads per kv head");
  app.add_option("--seed", f.seed, "workload seed");
  app.add_option("--aa-ef", f.aa_ef, "attention-aware ef_search sweep")->delimiter(',');
  app.add_option("--hnsw-ef", f.hnsw_ef, "hnswlib ef_search sweep")->delimiter(',');
  app.add_option("--ivf-nprobe", f.ivf_nprobe, "IVF nprobe sweep")->delimiter(',');
  app.add_option("--csv", f.csv, "also write the table as CSV");
  app.add_option("--aa-build-topk", f.aa.build_topk,
                 "attention-aware: exact top keys per build query");
  app.add_option("--aa-degree", f.aa.max_degree, "attention-aware: max out-degree");
  app.add_option("--aa-entry", f.aa.num_entry_points, "attention-aware: entry points");
  app.add_option("--aa-build-queries", f.aa.max_build_queries, "attention-aware: build queries");
  app.add_flag("--record", f.record,
               "use Q/K/V recorded from the engine (random-weight tiny Llama, random prompt) "
               "instead of the synthetic generator");
  app.add_option("--record-layer", f.record_layer, "layer recorded with --record");
  app.add_option("--model", f.model_dir,
                 "with --record: an HF-layout model directory to record from instead of the "
                 "random-weight tiny model (prompt: random token ids)");
  app.add_flag("--verbose", f.verbose, "print every query head whose recall is below 0.5");
  app.add_flag("--probe,!--no-probe", f.probe, "read-bandwidth probe (1 GiB, 1 and 2 threads)");
  app.add_option("--kinds", f.kinds, "index kinds to run (exact is always run first)");
}

void PrintHeader(const Flags& f) {
  utsname un{};
  uname(&un);
  std::printf("# kvr_bench  machine: %s, %u hw threads, omp max threads %d, %s %s, loadavg %s\n",
              ragserve::bench::CpuModel().c_str(), std::thread::hardware_concurrency(),
              omp_get_max_threads(), un.sysname, un.release, ragserve::bench::LoadAvg().c_str());
  std::printf(
      "# d=%d, GQA group=%d, top_k=%d, sinks=128, window=512, decode steps=%lld, seed=%llu\n", f.d,
      f.group, f.top_k, static_cast<long long>(f.n_decode),
      static_cast<unsigned long long>(f.seed));
  std::printf(
      "# recall: per query head, |retrieved top-%d ∩ exact top-%d by q.k over the middle|"
      " / %d, averaged\n",
      f.top_k, f.top_k, f.top_k);
}

// The partial attention loop AttentionPartial ran before the bandwidth kernel (kernels/cpu/
// attention.cc at 158817e): per head, one pass over K for the scores and one over V, so a group
// of h heads reads K and V h times. Kept here as the baseline measured in the same run.
void PerHeadAttention(const float* q, int h, const float* k, const float* v, int64_t n, int d,
                      float scale, float* o, float* lse) {
  std::vector<float> scores(static_cast<size_t>(n));
  for (int hh = 0; hh < h; ++hh) {
    const float* qh = q + static_cast<int64_t>(hh) * d;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n; ++j) {
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int i = 0; i < d; ++i) dot += qh[i] * k[j * d + i];
      scores[j] = scale * dot;
      mx = std::max(mx, scores[j]);
    }
    float* oh = o + static_cast<int64_t>(hh) * d;
    std::fill(oh, oh + d, 0.0f);
    double sum = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      const float p = std::exp(scores[j] - mx);
      sum += p;
#pragma omp simd
      for (int i = 0; i < d; ++i) oh[i] += p * v[j * d + i];
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (int i = 0; i < d; ++i) oh[i] *= inv;
    lse[hh] = mx + static_cast<float>(std::log(sum));
  }
}

// Sum of n floats with 8 independent AVX2 accumulators (the read-bandwidth probe's loop).
__attribute__((target("avx2,fma"))) float SumAvx2(const float* x, int64_t n) {
  __m256 a[8];
  for (auto& r : a) r = _mm256_setzero_ps();
  for (int64_t i = 0; i + 64 <= n; i += 64) {
    for (int j = 0; j < 8; ++j) a[j] = _mm256_add_ps(a[j], _mm256_loadu_ps(x + i + 8 * j));
  }
  __m256 t = a[0];
  for (int j = 1; j < 8; ++j) t = _mm256_add_ps(t, a[j]);
  alignas(32) float r[8];
  _mm256_store_ps(r, t);
  return r[0] + r[1] + r[2] + r[3] + r[4] + r[5] + r[6] + r[7];
}

// Read bandwidth in GB/s: best of `reps` vectorized reads of a 1 GiB array on `threads` threads.
double ReadBandwidth(const std::vector<float>& buf, int threads, int reps) {
  const int64_t n = static_cast<int64_t>(buf.size());
  double best = 0;
  volatile float sink = 0;
  for (int r = 0; r < reps; ++r) {
    float total = 0;
    const auto a = Clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      const int64_t b = n * t / nt / 64 * 64, e = n * (t + 1) / nt / 64 * 64;
      total += SumAvx2(buf.data() + b, e - b);
    }
    const double s = Ms(a, Clock::now()) / 1000;
    sink = sink + total;
    best = std::max(best, static_cast<double>(n) * sizeof(float) / s / 1e9);
  }
  (void)sink;
  return best;
}

void PrintBandwidthProbe() {
  std::vector<float> buf(static_cast<size_t>(1) << 28, 1.0f);  // 1 GiB, touched
  const double one = ReadBandwidth(buf, 1, 10), two = ReadBandwidth(buf, 2, 10);
  std::printf(
      "# read-bandwidth probe (1 GiB, AVX2, 8 accumulators, best of 10): 1 thread %.1f GB/s, "
      "2 threads %.1f GB/s; loadavg %s\n",
      one, two, ragserve::bench::LoadAvg().c_str());
}

// Sums over the decode steps of one (index kind, parameter) cell.
struct CellSums {
  double recall = 0, err_sum = 0, err_max = 0;
  int64_t scored = 0, middle = 0;
  std::vector<double> ms;
};

// One context length N: the workload in a KvStore, full attention over it (the reference
// outputs and latency) and the exact top-k per decode step (the first sweep, exact, fills it).
class ContextRun {
 public:
  ContextRun(Flags* f, int64_t n) : f_(*f), flags_(f), n_(n), store_(StoreOptions()) {}
  Status Prepare();
  // Builds the index of sw.kind and measures each of its parameter values into rows.
  Status RunSweep(const Sweep& sw, std::vector<Row>* rows);
  void PrintTable(const std::vector<Row>& rows) const;

 private:
  static kvr::KvStoreOptions StoreOptions() {
    kvr::KvStoreOptions so;
    so.memory_limit_bytes = int64_t{16} << 30;
    return so;
  }
  // Retrieval recall and Attend error / latency of decode step s into *sums.
  Status MeasureStep(kvr::HybridAttention& ha, kvr::KeyIndexKind kind, const kvr::AttendOptions& ao,
                     int64_t s, CellSums* sums);

  const Flags& f_;
  Flags* flags_;  // d and group are updated from a recorded workload
  const int64_t n_;
  const std::string seq_ = "bench";
  kvr::KvStore store_;
  std::optional<kvr::SyntheticWorkload> wl_;
  std::vector<std::vector<float>> o_full_;
  double full_med_ = 0;   // AttendFull, 1 thread
  double full2_med_ = 0;  // split-K kernel, 2 threads
  double full2_err_ = 0;  // its max |o - o_full|
  double old_med_ = 0;    // PerHeadAttention, 1 thread
  double full_best_ = 0, full2_best_ = 0, old_best_ = 0;
  std::vector<std::vector<int64_t>> truth_;  // per decode step, [group * top_k]
  double exact_ms_ = 0;
};

Status ContextRun::Prepare() {
  kvr::SyntheticParams sp;
  sp.n_keys = n_;
  sp.head_dim = f_.d;
  sp.group_size = f_.group;
  sp.n_decode = f_.n_decode;
  sp.seed = f_.seed;
  auto t0 = Clock::now();
  RS_ASSIGN_OR_RETURN(
      wl_, f_.record
               ? RecordWorkload(n_, f_.d, f_.n_decode, f_.record_layer, f_.seed,
                                "/tmp/kvr_bench_model_" + std::to_string(::getpid()), f_.model_dir)
               : kvr::GenerateWorkload(sp));
  std::printf("# N=%lld: %s workload made in %.1f s\n", static_cast<long long>(n_),
              f_.record ? "recorded (engine)" : "synthetic", Ms(t0, Clock::now()) / 1000);
  flags_->d = wl_->head_dim;  // a recorded model decides these
  flags_->group = wl_->group_size;
  const int d = f_.d, group = f_.group;
  RS_RETURN_IF_ERROR(
      store_.CreateSequence(seq_, {.num_layers = 1, .num_kv_heads = 1, .head_dim = d}));
  RS_RETURN_IF_ERROR(
      Annotate(store_.Append(seq_, 0, n_, wl_->keys.data(), wl_->values.data()), "append"));
  // Full attention (reference outputs, and the latency of attending every key).
  kvr::HybridAttention full_ha(&store_, {});
  o_full_.resize(f_.n_decode);
  std::vector<double> full_ms;
  for (int64_t s = 0; s < f_.n_decode; ++s) {
    o_full_[s].resize(static_cast<size_t>(group) * d);
    std::vector<float> lse(group);
    const auto a = Clock::now();
    RS_RETURN_IF_ERROR(full_ha.AttendFull(seq_, 0, 0, wl_->decode_queries.data() + s * group * d,
                                          group, d, o_full_[s].data(), lse.data()));
    full_ms.push_back(Ms(a, Clock::now()));
  }
  full_med_ = Median(full_ms);
  full_best_ = Best(full_ms);
  // The same on 2 threads (split-K over the keys, partials merged by LSE).
  std::vector<double> full2_ms;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t s = 0; s < f_.n_decode; ++s) {
    std::vector<float> o(static_cast<size_t>(group) * d), lse(group);
    const auto a = Clock::now();
    kernels::AttentionPartialParallel(wl_->decode_queries.data() + s * group * d, group,
                                      wl_->keys.data(), d, wl_->values.data(), d, n_, d, scale,
                                      o.data(), lse.data(), 2);
    full2_ms.push_back(Ms(a, Clock::now()));
    for (size_t i = 0; i < o.size(); ++i) {
      full2_err_ = std::max(full2_err_, static_cast<double>(std::abs(o[i] - o_full_[s][i])));
    }
  }
  full2_med_ = Median(full2_ms);
  full2_best_ = Best(full2_ms);
  std::vector<double> old_ms;
  for (int64_t s = 0; s < std::min<int64_t>(f_.n_decode, 8); ++s) {
    std::vector<float> o(static_cast<size_t>(group) * d), lse(group);
    const auto a = Clock::now();
    PerHeadAttention(wl_->decode_queries.data() + s * group * d, group, wl_->keys.data(),
                     wl_->values.data(), n_, d, scale, o.data(), lse.data());
    old_ms.push_back(Ms(a, Clock::now()));
  }
  old_med_ = Median(old_ms);
  old_best_ = Best(old_ms);
  return OkStatus();
}

Status ContextRun::MeasureStep(kvr::HybridAttention& ha, kvr::KeyIndexKind kind,
                               const kvr::AttendOptions& ao, int64_t s, CellSums* sums) {
  const int d = f_.d, group = f_.group, top_k = f_.top_k;
  const float* q = wl_->decode_queries.data() + s * group * d;
  std::vector<int64_t> ids(static_cast<size_t>(group) * top_k);
  kvr::AttendStats rs;
  RS_RETURN_IF_ERROR(ha.Retrieve(seq_, 0, 0, q, group, d, ao, ids.data(), &rs));
  if (kind == kvr::KeyIndexKind::kExact) truth_.push_back(ids);
  for (int j = 0; j < group; ++j) {
    std::set<int64_t> t(truth_[s].begin() + j * top_k, truth_[s].begin() + (j + 1) * top_k);
    int hit = 0;
    for (int i = 0; i < top_k; ++i) hit += t.count(ids[j * top_k + i]) ? 1 : 0;
    sums->recall += static_cast<double>(hit) / top_k;
    if (f_.verbose && hit < top_k / 2) {
      std::fprintf(stderr, "  low recall: N=%lld %s step %lld head %d: %d/%d\n",
                   static_cast<long long>(n_), std::string(kvr::KeyIndexKindName(kind)).c_str(),
                   static_cast<long long>(s), j, hit, top_k);
    }
  }
  std::vector<float> o(static_cast<size_t>(group) * d), lse(group);
  kvr::AttendStats as;
  const auto a = Clock::now();
  RS_RETURN_IF_ERROR(ha.Attend(seq_, 0, 0, q, group, d, ao, o.data(), lse.data(), &as));
  sums->ms.push_back(Ms(a, Clock::now()));
  sums->scored += as.keys_scored;
  sums->middle += as.middle_keys;
  for (int j = 0; j < group; ++j) {
    double num = 0, den = 0;
    for (int i = 0; i < d; ++i) {
      const double e = o[j * d + i] - o_full_[s][j * d + i];
      num += e * e;
      den += static_cast<double>(o_full_[s][j * d + i]) * o_full_[s][j * d + i];
    }
    const double rel = std::sqrt(num / std::max(den, 1e-30));
    sums->err_sum += rel;
    sums->err_max = std::max(sums->err_max, rel);
  }
  return OkStatus();
}

Status ContextRun::RunSweep(const Sweep& sw, std::vector<Row>* rows) {
  const std::string name(kvr::KeyIndexKindName(sw.kind));
  kvr::HybridOptions ho;
  ho.index_kind = sw.kind;
  ho.attention_aware = f_.aa;
  kvr::HybridAttention ha(&store_, ho);
  const auto b0 = Clock::now();
  RS_RETURN_IF_ERROR(Annotate(ha.BuildIndex(seq_, 0, 0, n_, f_.group, wl_->prefill_queries.data()),
                              "build " + name));
  const double build_s = Ms(b0, Clock::now()) / 1000;
  for (const int value : sw.values) {
    kvr::AttendOptions ao;
    ao.top_k = f_.top_k;
    if (sw.kind == kvr::KeyIndexKind::kIvf) {
      ao.nprobe = value;
    } else {
      ao.ef_search = value;
    }
    CellSums sums;
    for (int64_t s = 0; s < f_.n_decode; ++s) {
      RS_RETURN_IF_ERROR(MeasureStep(ha, sw.kind, ao, s, &sums));
    }
    const double heads = static_cast<double>(f_.n_decode) * f_.group;
    Row r;
    r.n = n_;
    r.kind = name;
    r.param = sw.kind == kvr::KeyIndexKind::kExact ? "-"
              : sw.kind == kvr::KeyIndexKind::kIvf ? "nprobe=" + std::to_string(value)
                                                   : "ef=" + std::to_string(value);
    r.build_s = build_s;
    r.recall = sums.recall / heads;
    r.scored_frac =
        static_cast<double>(sums.scored) / (static_cast<double>(sums.middle) * f_.group);
    r.rel_err_mean = sums.err_sum / heads;
    r.rel_err_max = sums.err_max;
    r.attend_ms = Median(sums.ms);
    if (sw.kind == kvr::KeyIndexKind::kExact) exact_ms_ = r.attend_ms;
    rows->push_back(r);
    std::fprintf(stderr, "  N=%lld %s %s done\n", static_cast<long long>(n_), r.kind.c_str(),
                 r.param.c_str());
  }
  return OkStatus();
}

void ContextRun::PrintTable(const std::vector<Row>& rows) const {
  std::printf("\n## N = %lld keys (middle %lld), full attention %.3f ms/Attend\n\n",
              static_cast<long long>(n_), static_cast<long long>(n_ - 640), full_med_);
  // Bytes one full Attend reads (K + V of every key, f32); the exact scan reads K.
  const double kv_bytes = 2.0 * static_cast<double>(n_) * f_.d * sizeof(float);
  auto gbs = [&](double bytes, double ms) { return bytes / (ms / 1000) / 1e9; };
  std::printf(
      "| full attention (group of %d heads) | median ms | best ms | GB/s at median | GB/s at best "
      "|\n",
      f_.group);
  std::printf("|---|---|---|---|---|\n");
  std::printf("| bandwidth kernel, 1 thread (AttendFull) | %.3f | %.3f | %.1f | %.1f |\n",
              full_med_, full_best_, gbs(kv_bytes, full_med_), gbs(kv_bytes, full_best_));
  std::printf("| bandwidth kernel, split-K on 2 threads | %.3f | %.3f | %.1f | %.1f |\n",
              full2_med_, full2_best_, gbs(kv_bytes, full2_med_), gbs(kv_bytes, full2_best_));
  std::printf("| previous per-head loop, 1 thread (baseline) | %.3f | %.3f | %.1f | %.1f |\n",
              old_med_, old_best_, gbs(kv_bytes, old_med_), gbs(kv_bytes, old_best_));
  std::printf(
      "\nsplit-K max |o - o_1thread| %.1e; exact scan Attend (below) reads K at %.1f GB/s "
      "(median)\n\n",
      full2_err_, gbs(kv_bytes / 2, exact_ms_));
  std::printf(
      "| index | param | build s | recall@%d | keys scored | rel err mean | rel err max "
      "| Attend ms | vs exact scan | vs full attn |\n",
      f_.top_k);
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    if (r.n != n_) continue;
    std::printf("| %s | %s | %.2f | %.3f | %.2f%% | %.2e | %.2e | %.3f | %.1fx | %.1fx |\n",
                r.kind.c_str(), r.param.c_str(), r.build_s, r.recall, 100 * r.scored_frac,
                r.rel_err_mean, r.rel_err_max, r.attend_ms, exact_ms_ / r.attend_ms,
                full_med_ / r.attend_ms);
  }
  std::fflush(stdout);
}

void WriteCsv(const std::string& path, const std::vector<Row>& rows) {
  std::ofstream f(path);
  f << "n,index,param,build_s,recall,keys_scored_frac,rel_err_mean,rel_err_max,attend_ms\n";
  for (const Row& r : rows) {
    f << r.n << ',' << r.kind << ',' << r.param << ',' << r.build_s << ',' << r.recall << ','
      << r.scored_frac << ',' << r.rel_err_mean << ',' << r.rel_err_max << ',' << r.attend_ms
      << '\n';
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvr_bench: RetrievalAttention key indexes on OOD synthetic data"};
  Flags f;
  AddFlags(app, f);
  CLI11_PARSE(app, argc, argv);
  PrintHeader(f);
  if (f.probe) PrintBandwidthProbe();
  std::vector<Row> rows;
  for (const int64_t n : f.ns) {
    ContextRun run(&f, n);
    if (Status st = run.Prepare(); !st.ok()) {
      std::fprintf(stderr, "workload: %s\n", st.ToString().c_str());
      return 1;
    }
    const std::vector<Sweep> sweeps = {{kvr::KeyIndexKind::kExact, {0}},
                                       {kvr::KeyIndexKind::kAttentionAware, f.aa_ef},
                                       {kvr::KeyIndexKind::kHnsw, f.hnsw_ef},
                                       {kvr::KeyIndexKind::kIvf, f.ivf_nprobe}};
    for (const Sweep& sw : sweeps) {
      if (sw.kind != kvr::KeyIndexKind::kExact &&
          f.kinds.find(std::string(kvr::KeyIndexKindName(sw.kind))) == std::string::npos) {
        continue;
      }
      if (Status st = run.RunSweep(sw, &rows); !st.ok()) {
        std::fprintf(stderr, "%s\n", st.ToString().c_str());
        return 1;
      }
    }
    run.PrintTable(rows);
  }
  if (!f.csv.empty()) WriteCsv(f.csv, rows);
  return 0;
}
