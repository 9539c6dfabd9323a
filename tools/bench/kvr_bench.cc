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
// Usage: kvr_bench [--n 32768,131072] [--decode 32] [--top-k 100] [--seed 1] [--csv FILE]
#include <omp.h>
#include <sys/utsname.h>

#include <unistd.h>
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvr_bench: RetrievalAttention key indexes on OOD synthetic data"};
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
  app.add_option("--n", ns, "context lengths (keys)")->delimiter(',');
  app.add_option("--decode", n_decode, "decode steps (query groups) per N");
  app.add_option("--top-k", top_k, "keys retrieved per query head");
  app.add_option("--d", d, "head dim");
  app.add_option("--group", group, "query heads per kv head");
  app.add_option("--seed", seed, "workload seed");
  app.add_option("--aa-ef", aa_ef, "attention-aware ef_search sweep")->delimiter(',');
  app.add_option("--hnsw-ef", hnsw_ef, "hnswlib ef_search sweep")->delimiter(',');
  app.add_option("--ivf-nprobe", ivf_nprobe, "IVF nprobe sweep")->delimiter(',');
  app.add_option("--csv", csv, "also write the table as CSV");
  ragserve::index::AttentionAwareParams aa;
  app.add_option("--aa-build-topk", aa.build_topk,
                 "attention-aware: exact top keys per build query");
  app.add_option("--aa-degree", aa.max_degree, "attention-aware: max out-degree");
  app.add_option("--aa-entry", aa.num_entry_points, "attention-aware: entry points");
  app.add_option("--aa-build-queries", aa.max_build_queries, "attention-aware: build queries");
  std::string kinds = "exact,attention_aware,hnsw,ivf";
  bool verbose = false;
  bool record = false;
  int record_layer = 1;
  app.add_flag("--record", record,
               "use Q/K/V recorded from the engine (random-weight tiny Llama, random prompt) "
               "instead of the synthetic generator");
  app.add_option("--record-layer", record_layer, "layer recorded with --record");
  std::string model_dir;
  app.add_option("--model", model_dir,
                 "with --record: an HF-layout model directory to record from instead of the "
                 "random-weight tiny model (prompt: random token ids)");
  app.add_flag("--verbose", verbose, "print every query head whose recall is below 0.5");
  app.add_option("--kinds", kinds, "index kinds to run (exact is always run first)");
  CLI11_PARSE(app, argc, argv);

  utsname un{};
  uname(&un);
  std::printf("# kvr_bench  machine: %s, %u hw threads, omp max threads %d, %s %s, loadavg %s\n",
              ragserve::bench::CpuModel().c_str(), std::thread::hardware_concurrency(),
              omp_get_max_threads(), un.sysname, un.release, ragserve::bench::LoadAvg().c_str());
  std::printf(
      "# d=%d, GQA group=%d, top_k=%d, sinks=128, window=512, decode steps=%lld, seed=%llu\n", d,
      group, top_k, static_cast<long long>(n_decode), static_cast<unsigned long long>(seed));
  std::printf(
      "# recall: per query head, |retrieved top-%d ∩ exact top-%d by q.k over the middle|"
      " / %d, averaged\n",
      top_k, top_k, top_k);

  std::vector<Row> rows;
  for (const int64_t n : ns) {
    kvr::SyntheticParams sp;
    sp.n_keys = n;
    sp.head_dim = d;
    sp.group_size = group;
    sp.n_decode = n_decode;
    sp.seed = seed;
    auto t0 = Clock::now();
    auto wl = record
                  ? RecordWorkload(n, d, n_decode, record_layer, seed,
                                   "/tmp/kvr_bench_model_" + std::to_string(::getpid()), model_dir)
                  : kvr::GenerateWorkload(sp);
    if (!wl.ok()) {
      std::fprintf(stderr, "workload: %s\n", wl.status().ToString().c_str());
      return 1;
    }
    std::printf("# N=%lld: %s workload made in %.1f s\n", static_cast<long long>(n),
                record ? "recorded (engine)" : "synthetic", Ms(t0, Clock::now()) / 1000);
    d = wl->head_dim;  // a recorded model decides these
    group = wl->group_size;
    kvr::KvStoreOptions so;
    so.memory_limit_bytes = int64_t{16} << 30;
    kvr::KvStore store(so);
    const std::string seq = "bench";
    if (!store.CreateSequence(seq, {.num_layers = 1, .num_kv_heads = 1, .head_dim = d}).ok()) {
      return 1;
    }
    if (auto s = store.Append(seq, 0, n, wl->keys.data(), wl->values.data()); !s.ok()) {
      std::fprintf(stderr, "append: %s\n", s.ToString().c_str());
      return 1;
    }

    // Full attention (reference outputs, and the latency of attending every key).
    kvr::HybridAttention full_ha(&store, {});
    std::vector<std::vector<float>> o_full(n_decode);
    std::vector<double> full_ms;
    for (int64_t s = 0; s < n_decode; ++s) {
      o_full[s].resize(static_cast<size_t>(group) * d);
      std::vector<float> lse(group);
      const auto a = Clock::now();
      auto st = full_ha.AttendFull(seq, 0, 0, wl->decode_queries.data() + s * group * d, group, d,
                                   o_full[s].data(), lse.data());
      full_ms.push_back(Ms(a, Clock::now()));
      if (!st.ok()) return 1;
    }
    const double full_med = Median(full_ms);

    std::vector<std::vector<int64_t>> truth;  // per decode step, [group * top_k]
    double exact_ms = 0;
    const std::vector<Sweep> sweeps = {{kvr::KeyIndexKind::kExact, {0}},
                                       {kvr::KeyIndexKind::kAttentionAware, aa_ef},
                                       {kvr::KeyIndexKind::kHnsw, hnsw_ef},
                                       {kvr::KeyIndexKind::kIvf, ivf_nprobe}};
    for (const Sweep& sw : sweeps) {
      kvr::HybridOptions ho;
      ho.index_kind = sw.kind;
      ho.attention_aware = aa;
      if (sw.kind != kvr::KeyIndexKind::kExact &&
          kinds.find(std::string(kvr::KeyIndexKindName(sw.kind))) == std::string::npos) {
        continue;
      }
      kvr::HybridAttention ha(&store, ho);
      const auto b0 = Clock::now();
      auto st = ha.BuildIndex(seq, 0, 0, n, group, wl->prefill_queries.data());
      const double build_s = Ms(b0, Clock::now()) / 1000;
      if (!st.ok()) {
        std::fprintf(stderr, "build %s: %s\n", std::string(kvr::KeyIndexKindName(sw.kind)).c_str(),
                     st.ToString().c_str());
        return 1;
      }
      for (const int value : sw.values) {
        kvr::AttendOptions ao;
        ao.top_k = top_k;
        if (sw.kind == kvr::KeyIndexKind::kIvf) {
          ao.nprobe = value;
        } else {
          ao.ef_search = value;
        }
        double recall = 0, err_sum = 0, err_max = 0;
        int64_t scored = 0, middle = 0;
        std::vector<double> ms;
        for (int64_t s = 0; s < n_decode; ++s) {
          const float* q = wl->decode_queries.data() + s * group * d;
          std::vector<int64_t> ids(static_cast<size_t>(group) * top_k);
          kvr::AttendStats rs;
          if (!ha.Retrieve(seq, 0, 0, q, group, d, ao, ids.data(), &rs).ok()) return 1;
          if (sw.kind == kvr::KeyIndexKind::kExact) truth.push_back(ids);
          for (int j = 0; j < group; ++j) {
            std::set<int64_t> t(truth[s].begin() + j * top_k, truth[s].begin() + (j + 1) * top_k);
            int hit = 0;
            for (int i = 0; i < top_k; ++i) hit += t.count(ids[j * top_k + i]) ? 1 : 0;
            recall += static_cast<double>(hit) / top_k;
            if (verbose && hit < top_k / 2) {
              std::fprintf(stderr, "  low recall: N=%lld %s step %lld head %d: %d/%d\n",
                           static_cast<long long>(n),
                           std::string(kvr::KeyIndexKindName(sw.kind)).c_str(),
                           static_cast<long long>(s), j, hit, top_k);
            }
          }
          std::vector<float> o(static_cast<size_t>(group) * d), lse(group);
          kvr::AttendStats as;
          const auto a = Clock::now();
          if (!ha.Attend(seq, 0, 0, q, group, d, ao, o.data(), lse.data(), &as).ok()) return 1;
          ms.push_back(Ms(a, Clock::now()));
          scored += as.keys_scored;
          middle += as.middle_keys;
          for (int j = 0; j < group; ++j) {
            double num = 0, den = 0;
            for (int i = 0; i < d; ++i) {
              const double e = o[j * d + i] - o_full[s][j * d + i];
              num += e * e;
              den += static_cast<double>(o_full[s][j * d + i]) * o_full[s][j * d + i];
            }
            const double rel = std::sqrt(num / std::max(den, 1e-30));
            err_sum += rel;
            err_max = std::max(err_max, rel);
          }
        }
        Row r;
        r.n = n;
        r.kind = std::string(kvr::KeyIndexKindName(sw.kind));
        r.param = sw.kind == kvr::KeyIndexKind::kExact ? "-"
                  : sw.kind == kvr::KeyIndexKind::kIvf ? "nprobe=" + std::to_string(value)
                                                       : "ef=" + std::to_string(value);
        r.build_s = build_s;
        r.recall = recall / (n_decode * group);
        r.scored_frac = static_cast<double>(scored) / (static_cast<double>(middle) * group);
        r.rel_err_mean = err_sum / (n_decode * group);
        r.rel_err_max = err_max;
        r.attend_ms = Median(ms);
        if (sw.kind == kvr::KeyIndexKind::kExact) exact_ms = r.attend_ms;
        rows.push_back(r);
        std::fprintf(stderr, "  N=%lld %s %s done\n", static_cast<long long>(n), r.kind.c_str(),
                     r.param.c_str());
      }
    }
    std::printf("\n## N = %lld keys (middle %lld), full attention %.3f ms/Attend\n\n",
                static_cast<long long>(n), static_cast<long long>(n - 640), full_med);
    std::printf(
        "| index | param | build s | recall@%d | keys scored | rel err mean | rel err max "
        "| Attend ms | vs exact scan | vs full attn |\n",
        top_k);
    std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
    for (const Row& r : rows) {
      if (r.n != n) continue;
      std::printf("| %s | %s | %.2f | %.3f | %.2f%% | %.2e | %.2e | %.3f | %.1fx | %.1fx |\n",
                  r.kind.c_str(), r.param.c_str(), r.build_s, r.recall, 100 * r.scored_frac,
                  r.rel_err_mean, r.rel_err_max, r.attend_ms, exact_ms / r.attend_ms,
                  full_med / r.attend_ms);
    }
    std::fflush(stdout);
  }
  if (!csv.empty()) {
    std::ofstream f(csv);
    f << "n,index,param,build_s,recall,keys_scored_frac,rel_err_mean,rel_err_max,attend_ms\n";
    for (const Row& r : rows) {
      f << r.n << ',' << r.kind << ',' << r.param << ',' << r.build_s << ',' << r.recall << ','
        << r.scored_frac << ',' << r.rel_err_mean << ',' << r.rel_err_max << ',' << r.attend_ms
        << '\n';
    }
  }
  return 0;
}
