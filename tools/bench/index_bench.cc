// index_bench: ragserve's HNSW and IVF-Flat indexes against the raw libraries (hnswlib, FAISS)
// called directly on the same seeded clustered data in the same run, plus the ragserve-index
// gRPC service on loopback (in-process server, one query per RPC).
//
// Columns per (index, parameter): recall@1 and recall@10 against exact search (FlatIndex),
// QPS with 1 thread (one query per call) and with all threads (one batch call), and the ratio
// ragserve / raw. Build time and memory per index. Prints a Markdown table and writes CSV.
// ragserve and the raw library are timed in alternation (rep 1 of each, rep 2 of each, ...), so a
// burst of load on a shared machine hits both sides of a ratio alike. QPS cells are the best rep;
// the in-process ratio is the median over reps of the paired ratio (gRPC rows: best / best).
//
// Latency table (HNSW): per single-query call, p50/p99 of (a) the raw hnswlib searchKnn,
// (b) ragserve's HnswIndex::search, (c) the collection's Search (index + id/text lookup: all the
// work the service does for a query) and (d) the same Search as a unary gRPC call on loopback;
// "gRPC adds" = (d) - (c) at p50 / p99. The four are sampled round-robin, query by query.
//
// The raw-hnswlib baseline goes through index/internal/hnsw_graph.h (hnswlib's addPoint and
// searchKnn behind one non-virtual call, no locks or checks): hnswlib 0.6.2 defines non-inline
// globals in its headers, so only one translation unit of a binary (index/hnsw_graph.cc) may
// include them.
//
//   index_bench [--n 50000] [--dim 128] [--queries 500] [--reps 5] [--csv F] [--no-grpc]
//               [--kinds hnsw,ivf_flat,ivf_pq] [--latency-samples 5000]
#include <faiss/IndexFlat.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexIVFPQ.h>
#include <omp.h>
#include <sys/utsname.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <thread>
#include <tuple>

#include "index/flat.h"
#include "index/hnsw.h"
#include "index/internal/hnsw_graph.h"
#include "index/ivf.h"
#include "ragserve/v1/index.grpc.pb.h"
#include "services/common/client.h"
#include "services/common/server.h"
#include "services/index/collection.h"
#include "services/index/service.h"

namespace {

using namespace ragserve;  // NOLINT: a benchmark's main file
using Clock = std::chrono::steady_clock;
using index::internal::HnswGraph;

constexpr int kK = 10;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::vector<float> Clustered(int64_t n, int dim, int clusters, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> centers(static_cast<size_t>(clusters) * dim);
  for (auto& c : centers) c = g(rng);
  std::uniform_int_distribution<int> pick(0, clusters - 1);
  std::vector<float> x(static_cast<size_t>(n) * dim);
  for (int64_t i = 0; i < n; ++i) {
    const int c = pick(rng);
    for (int j = 0; j < dim; ++j) x[i * dim + j] = centers[c * dim + j] + 0.6f * g(rng);
  }
  return x;
}

double Recall(const std::vector<int64_t>& truth, const std::vector<int64_t>& got, int64_t nq,
              int tk, int gk, int k) {
  double hits = 0;
  for (int64_t i = 0; i < nq; ++i) {
    std::set<int64_t> t(truth.begin() + i * tk, truth.begin() + i * tk + k);
    for (int j = 0; j < k; ++j) hits += t.count(got[i * gk + j]);
  }
  return hits / (double(nq) * k);
}

struct Row {
  std::string index, param, impl;
  double r1 = 0, r10 = 0, qps1 = 0, qpsn = 0, base_qps1 = 0, base_qpsn = 0;
  double paired1 = 0, pairedn = 0;  // median of per-rep ours/raw QPS ratios (0 = none)
};

std::string Fixed(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f", v);
  return buf;
}

std::string Machine() {
  utsname u{};
  uname(&u);
  std::string cpu = "unknown cpu";
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("model name", 0) == 0) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  }
  return cpu + ", " + std::to_string(std::thread::hardware_concurrency()) + " threads, " +
         u.sysname + " " + u.release;
}

struct Flags {
  int64_t n = 50000;
  int dim = 128, nq = 500;
  std::string csv = "index_bench.csv";
  bool no_grpc = false;
  int reps = 5;
  int latency_samples = 5000;
  std::set<std::string> kinds;
};

// The pieces of the ragserve-index service the gRPC and latency sections query: a collection
// "bench" holding the data under HNSW, served on loopback.
struct GrpcSetup {
  collection::Collection* collection;
  std::unique_ptr<v1::IndexService::Stub> stub;
};

// One run: the seeded data, its exact ground truth, and the rows measured so far.
class IndexBench {
 public:
  explicit IndexBench(const Flags& f);
  void RunHnsw();
  void RunIvfFlat();
  void RunIvfPq();
  // The ragserve-index service in-process: QPS rows per RPC and the latency table.
  Status RunGrpc();
  bool has_hnsw() const { return hnsw_ != nullptr; }
  void Print(int argc, char** argv) const;

 private:
  // Times ragserve (`ours`) and the raw library (`raw`) back to back, `reps` times, and returns
  // the best queries per second of each plus the median over reps of the paired ratio ours/raw
  // (the two halves of a pair see nearly the same machine state, so the median paired ratio is
  // the robust "within x% of raw" figure on a shared machine).
  template <typename A, typename B>
  std::tuple<double, double, double> BestPair(A&& ours, B&& raw) const;
  template <typename A>
  double Best(A&& fn) const {
    return std::get<0>(BestPair(fn, [] {}));
  }
  // Records a ragserve row and its raw-library baseline row: recalls from got_ / raw_got_.
  void AddPair(Row& r, Row& b);
  // Query i through hnswlib directly (candidate list raw_ef_), ids into raw_got_.
  void RawHnswQuery(int i);
  // One IVF sweep: ragserve's IvfIndex `ours` against the FAISS index `raw` at each nprobe.
  void SweepIvf(const std::string& kind, index::IvfIndex& ours, faiss::IndexIVF& raw,
                std::initializer_list<int> nprobes);
  // One single-query Search RPC on the bench collection.
  grpc::Status GrpcSearch(GrpcSetup& g, const float* qi, int ef, v1::SearchResponse* resp) const;
  void GrpcRows(GrpcSetup& g);
  void LatencyRows(GrpcSetup& g);

  const Flags f_;
  const int threads_;
  const int nlist_;
  std::vector<float> x_, q_;
  std::vector<int64_t> ids_, truth_;
  std::vector<float> d_;
  std::vector<int64_t> got_, raw_got_;
  std::vector<Row> rows_, grpc_rows_;
  std::vector<std::string> builds_, latency_rows_;
  std::unique_ptr<index::HnswIndex> hnsw_;
  std::unique_ptr<HnswGraph> raw_hnsw_;
  int raw_ef_ = 0;  // candidate list of the raw searches
};

IndexBench::IndexBench(const Flags& f)
    : f_(f),
      threads_(omp_get_max_threads()),
      nlist_(static_cast<int>(std::round(4 * std::sqrt(double(f.n))))),
      x_(Clustered(f.n, f.dim, 100, 7)),
      q_(x_.begin(), x_.begin() + int64_t{f.nq} * f.dim),
      ids_(f.n),
      truth_(f.nq * kK),
      d_(f.nq * kK),
      got_(f.nq * kK),
      raw_got_(f.nq * kK) {
  const auto noise = Clustered(f.nq, f.dim, 1, 8);
  for (size_t i = 0; i < q_.size(); ++i) q_[i] += 0.3f * noise[i];
  for (int64_t i = 0; i < f.n; ++i) ids_[i] = i;
  // Exact ground truth.
  auto flat = index::FlatIndex::Create(f.dim, index::Metric::kL2).value();
  (void)flat->add(f.n, x_.data(), ids_.data());
  std::vector<float> td(f.nq * kK);
  (void)flat->search(f.nq, q_.data(), kK, td.data(), truth_.data());
}

template <typename A, typename B>
std::tuple<double, double, double> IndexBench::BestPair(A&& ours, B&& raw) const {
  double best_ours = 1e30, best_raw = 1e30;
  std::vector<double> ratios;
  for (int r = 0; r < f_.reps; ++r) {
    auto t0 = Clock::now();
    ours();
    const double t_ours = Since(t0);
    t0 = Clock::now();
    raw();
    const double t_raw = Since(t0);
    best_ours = std::min(best_ours, t_ours);
    best_raw = std::min(best_raw, t_raw);
    ratios.push_back(t_raw / t_ours);
  }
  std::sort(ratios.begin(), ratios.end());
  return {f_.nq / best_ours, f_.nq / best_raw, ratios[ratios.size() / 2]};
}

void IndexBench::AddPair(Row& r, Row& b) {
  r.r1 = Recall(truth_, got_, f_.nq, kK, kK, 1);
  r.r10 = Recall(truth_, got_, f_.nq, kK, kK, 10);
  b.r1 = Recall(truth_, raw_got_, f_.nq, kK, kK, 1);
  b.r10 = Recall(truth_, raw_got_, f_.nq, kK, kK, 10);
  r.base_qps1 = b.qps1;
  r.base_qpsn = b.qpsn;
  rows_.push_back(b);
  rows_.push_back(r);
}

void IndexBench::RawHnswQuery(int i) {
  std::vector<std::pair<float, int64_t>> res;
  int64_t unused = 0;
  raw_hnsw_->Search(q_.data() + i * f_.dim, kK, raw_ef_, &res, &unused);
  for (size_t j = 0; j < res.size(); ++j) raw_got_[i * kK + j] = res[j].second;
}

void IndexBench::RunHnsw() {
  const int64_t n = f_.n;
  const int dim = f_.dim, nq = f_.nq;
  auto t = Clock::now();
  hnsw_ = index::HnswIndex::Create(dim, index::Metric::kL2,
                                   {.M = 16, .ef_construction = 200, .initial_capacity = n})
              .value();
  (void)hnsw_->add(n, x_.data(), ids_.data());
  const double hb = Since(t);
  t = Clock::now();
  raw_hnsw_ = std::make_unique<HnswGraph>(
      HnswGraph::Options{.dim = dim, .M = 16, .ef_construction = 200, .seed = 100}, n);
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < n; ++i) raw_hnsw_->Insert(x_.data() + i * dim, i);
  const double rb = Since(t);
  builds_.push_back(StrCat("| hnsw M=16 efC=200 | ", hb, " s | ", rb, " s | ",
                           hnsw_->memory_bytes() / 1048576.0, " MiB | ",
                           raw_hnsw_->memory_bytes() / 1048576.0, " MiB |"));
  for (int ef : {16, 32, 64, 128, 256}) {
    Row r{"hnsw", "ef=" + std::to_string(ef), "ragserve"};
    Row b{"hnsw", "ef=" + std::to_string(ef), "hnswlib"};
    index::SearchParams sp;
    sp.ef_search = ef;
    raw_ef_ = ef;
    omp_set_num_threads(1);
    std::tie(r.qps1, b.qps1, r.paired1) = BestPair(
        [&] {
          for (int i = 0; i < nq; ++i) {
            (void)hnsw_->search(1, q_.data() + i * dim, kK, d_.data() + i * kK,
                                got_.data() + i * kK, sp);
          }
        },
        [&] {
          for (int i = 0; i < nq; ++i) RawHnswQuery(i);
        });
    omp_set_num_threads(threads_);
    std::tie(r.qpsn, b.qpsn, r.pairedn) =
        BestPair([&] { (void)hnsw_->search(nq, q_.data(), kK, d_.data(), got_.data(), sp); },
                 [&] {
#pragma omp parallel for schedule(dynamic, 4)
                   for (int i = 0; i < nq; ++i) RawHnswQuery(i);
                 });
    AddPair(r, b);
  }
}

void IndexBench::SweepIvf(const std::string& kind, index::IvfIndex& ours, faiss::IndexIVF& raw,
                          std::initializer_list<int> nprobes) {
  const int dim = f_.dim, nq = f_.nq;
  for (int nprobe : nprobes) {
    Row r{kind, "nprobe=" + std::to_string(nprobe), "ragserve"};
    Row b{kind, "nprobe=" + std::to_string(nprobe), "faiss"};
    index::SearchParams sp;
    sp.nprobe = nprobe;
    raw.nprobe = nprobe;
    omp_set_num_threads(1);
    std::tie(r.qps1, b.qps1, r.paired1) = BestPair(
        [&] {
          for (int i = 0; i < nq; ++i) {
            (void)ours.search(1, q_.data() + i * dim, kK, d_.data() + i * kK, got_.data() + i * kK,
                              sp);
          }
        },
        [&] {
          for (int i = 0; i < nq; ++i) {
            raw.search(1, q_.data() + i * dim, kK, d_.data() + i * kK, raw_got_.data() + i * kK);
          }
        });
    omp_set_num_threads(threads_);
    std::tie(r.qpsn, b.qpsn, r.pairedn) =
        BestPair([&] { (void)ours.search(nq, q_.data(), kK, d_.data(), got_.data(), sp); },
                 [&] { raw.search(nq, q_.data(), kK, d_.data(), raw_got_.data()); });
    AddPair(r, b);
  }
}

void IndexBench::RunIvfFlat() {
  const int64_t n = f_.n;
  const int dim = f_.dim;
  auto t = Clock::now();
  auto ivf = index::IvfIndex::Create(dim, index::Metric::kL2, false, {.nlist = nlist_}).value();
  (void)ivf->train(n, x_.data());
  (void)ivf->add(n, x_.data(), ids_.data());
  const double ib = Since(t);
  t = Clock::now();
  faiss::IndexFlatL2 quantizer(dim);
  faiss::IndexIVFFlat fivf(&quantizer, dim, nlist_);
  fivf.cp.niter = 20;
  fivf.cp.seed = 1234;
  fivf.train(n, x_.data());
  fivf.add_with_ids(n, x_.data(), ids_.data());
  const double fb = Since(t);
  builds_.push_back(StrCat("| ivf_flat nlist=", nlist_, " | ", ib, " s | ", fb, " s | ",
                           ivf->memory_bytes() / 1048576.0, " MiB | ",
                           (n * (dim * 4 + 8) + nlist_ * dim * 4) / 1048576.0, " MiB |"));
  SweepIvf("ivf_flat", *ivf, fivf, {1, 4, 16, 32, 64});
}

// pq_m = dim/8 sub-quantizers of 8 bits.
void IndexBench::RunIvfPq() {
  const int64_t n = f_.n;
  const int dim = f_.dim;
  const int pq_m = dim % 8 == 0 ? dim / 8 : 1;
  auto t = Clock::now();
  auto pq = index::IvfIndex::Create(dim, index::Metric::kL2, true,
                                    {.nlist = nlist_, .pq_m = pq_m, .pq_nbits = 8})
                .value();
  (void)pq->train(n, x_.data());
  (void)pq->add(n, x_.data(), ids_.data());
  const double pb = Since(t);
  t = Clock::now();
  faiss::IndexFlatL2 pq_quantizer(dim);
  faiss::IndexIVFPQ fpq(&pq_quantizer, dim, nlist_, pq_m, 8);
  fpq.cp.niter = 20;
  fpq.cp.seed = 1234;
  fpq.train(n, x_.data());
  fpq.add_with_ids(n, x_.data(), ids_.data());
  const double fpb = Since(t);
  builds_.push_back(StrCat("| ivf_pq nlist=", nlist_, " m=", pq_m, " | ", pb, " s | ", fpb, " s | ",
                           pq->memory_bytes() / 1048576.0, " MiB | ",
                           (n * (pq_m + 8) + nlist_ * dim * 4) / 1048576.0, " MiB |"));
  SweepIvf("ivf_pq", *pq, fpq, {4, 16, 64});
}

grpc::Status IndexBench::GrpcSearch(GrpcSetup& g, const float* qi, int ef,
                                    v1::SearchResponse* resp) const {
  v1::SearchRequest req;
  req.set_collection("bench");
  req.set_k(kK);
  req.set_ef_search(ef);
  req.add_queries()->mutable_vector()->Add(qi, qi + f_.dim);
  grpc::ClientContext ctx;
  return g.stub->Search(&ctx, req, resp);
}

void IndexBench::GrpcRows(GrpcSetup& g) {
  const int nq = f_.nq;
  for (int ef : {16, 32, 64, 128, 256}) {
    Row r{"hnsw", "ef=" + std::to_string(ef), "ragserve gRPC"};
    auto one = [&](int i) {
      v1::SearchResponse resp;
      if (GrpcSearch(g, q_.data() + int64_t{i} * f_.dim, ef, &resp).ok() &&
          resp.results_size() == 1) {
        for (int j = 0; j < resp.results(0).hits_size() && j < kK; ++j) {
          got_[i * kK + j] = std::stoll(resp.results(0).hits(j).id());
        }
      }
    };
    std::fill(got_.begin(), got_.end(), -1);
    r.qps1 = Best([&] {
      for (int i = 0; i < nq; ++i) one(i);
    });
    r.qpsn = Best([&] {
      std::vector<std::thread> ts;
      for (int w = 0; w < threads_; ++w) {
        ts.emplace_back([&, w] {
          for (int i = w; i < nq; i += threads_) one(i);
        });
      }
      for (auto& th : ts) th.join();
    });
    r.r1 = Recall(truth_, got_, nq, kK, kK, 1);
    r.r10 = Recall(truth_, got_, nq, kK, kK, 10);
    for (const Row& b : rows_) {
      if (b.impl == "hnswlib" && b.param == r.param) {
        r.base_qps1 = b.qps1;
        r.base_qpsn = b.qpsn;
      }
    }
    grpc_rows_.push_back(r);
  }
}

// Latency of single-query calls, the four implementations sampled round-robin.
void IndexBench::LatencyRows(GrpcSetup& g) {
  for (int ef : {16, 64, 256}) {
    index::SearchParams sp;
    sp.ef_search = ef;
    raw_ef_ = ef;
    std::vector<std::pair<float, int64_t>> raw_res;
    int64_t unused = 0;
    collection::SearchOptions so;
    so.k = kK;
    so.ef_search = ef;
    so.include_text = false;  // as the gRPC request
    std::vector<double> lat[4];
    std::vector<float> dd(kK);
    std::vector<int64_t> ii(kK);
    for (int s = 0; s < f_.latency_samples; ++s) {
      const float* qi = q_.data() + int64_t{s % f_.nq} * f_.dim;
      for (int impl = 0; impl < 4; ++impl) {
        const auto t0 = Clock::now();
        if (impl == 0) {
          raw_hnsw_->Search(qi, kK, raw_ef_, &raw_res, &unused);
        } else if (impl == 1) {
          (void)hnsw_->search(1, qi, kK, dd.data(), ii.data(), sp);
        } else if (impl == 2) {
          (void)g.collection->Search({collection::Query{std::vector<float>(qi, qi + f_.dim), ""}},
                                     so);
        } else {
          v1::SearchResponse resp;
          (void)GrpcSearch(g, qi, ef, &resp);
        }
        lat[impl].push_back(Since(t0) * 1e6);
      }
    }
    for (auto& v : lat) std::sort(v.begin(), v.end());
    auto pct = [](const std::vector<double>& v, double p) {
      return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
    };
    std::string row = StrCat("| hnsw | ef=", ef, " |");
    for (const auto& v : lat)
      row += StrCat(" ", Fixed(pct(v, 0.5)), " / ", Fixed(pct(v, 0.99)), " |");
    latency_rows_.push_back(StrCat(row, " ", Fixed(pct(lat[3], 0.5) - pct(lat[2], 0.5)), " / ",
                                   Fixed(pct(lat[3], 0.99) - pct(lat[2], 0.99)), " |"));
  }
}

Status IndexBench::RunGrpc() {
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("index_bench_" + std::to_string(getpid())))
          .string();
  Status st;
  {
    // One Upsert of all f_.n documents: lift the per-call limits meant for gRPC clients.
    collection::StoreLimits limits;
    limits.max_docs_per_upsert = std::max<int64_t>(f_.n, 1);
    limits.max_embed_batch_bytes = std::numeric_limits<int64_t>::max();
    auto store = collection::CollectionStore::Open(dir, limits).value();
    ServerConfig cfg;
    cfg.service = "index";
    cfg.metrics_port = -1;
    cfg.log_level = "warn";
    ServiceServer server(cfg);
    collection::IndexGrpcService svc(&server, store.get());
    server.AddService(&svc, "ragserve.v1.IndexService");
    st = server.Start();
    if (st.ok()) {
      auto c = store
                   ->Create({.name = "bench",
                             .dim = f_.dim,
                             .metric = index::Metric::kL2,
                             .index_kind = "flat"})
                   .value();
      std::vector<collection::Document> docs(f_.n);
      for (int64_t i = 0; i < f_.n; ++i) {
        docs[i].id = std::to_string(i);
        docs[i].vector.assign(x_.begin() + i * f_.dim, x_.begin() + (i + 1) * f_.dim);
      }
      (void)c->Upsert(std::move(docs));
      (void)c->Rebuild("hnsw", R"({"M": 16, "ef_construction": 200})");
      GrpcSetup g{c.get(), v1::IndexService::NewStub(MakeChannel(server.address()).value())};
      GrpcRows(g);
      LatencyRows(g);
      server.Shutdown();
    }
  }
  std::filesystem::remove_all(dir);
  return st;
}

void IndexBench::Print(int argc, char** argv) const {
  std::printf("## index_bench\n\nmachine: %s\ncommand:", Machine().c_str());
  for (int i = 0; i < argc; ++i) std::printf(" %s", argv[i]);
  std::printf(
      "\ndata: %lld clustered vectors (100 clusters), dim %d, %d queries, k=%d, %d "
      "threads\n\n",
      static_cast<long long>(f_.n), f_.dim, f_.nq, kK, threads_);
  std::printf("| index | build ragserve | build raw | memory ragserve | memory raw (est.) |\n");
  std::printf("|---|---|---|---|---|\n");
  for (const auto& b : builds_) std::printf("%s\n", b.c_str());
  std::printf(
      "\n| index | param | impl | recall@1 | recall@10 | QPS 1 thread | QPS %d threads | "
      "ratio 1t vs raw | ratio %dt vs raw |\n|---|---|---|---|---|---|---|---|---|\n",
      threads_, threads_);
  std::ofstream out(f_.csv);
  out << "index,param,impl,recall1,recall10,qps1,qpsn,ratio1,ration\n";
  std::vector<Row> rows = rows_;
  rows.insert(rows.end(), grpc_rows_.begin(), grpc_rows_.end());
  for (const Row& r : rows) {
    const bool base = r.impl == "hnswlib" || r.impl == "faiss";
    const double r1 = base ? 1.0 : r.paired1 > 0 ? r.paired1 : r.qps1 / r.base_qps1;
    const double rn = base ? 1.0 : r.pairedn > 0 ? r.pairedn : r.qpsn / r.base_qpsn;
    std::printf("| %s | %s | %s | %.4f | %.4f | %.0f | %.0f | %.3f | %.3f |\n", r.index.c_str(),
                r.param.c_str(), r.impl.c_str(), r.r1, r.r10, r.qps1, r.qpsn, r1, rn);
    out << r.index << "," << r.param << "," << r.impl << "," << r.r1 << "," << r.r10 << ","
        << r.qps1 << "," << r.qpsn << "," << r1 << "," << rn << "\n";
  }
  if (!latency_rows_.empty()) {
    std::printf(
        "\nSingle-query latency, microseconds p50 / p99 (%d samples each, sampled round-robin):\n\n"
        "| index | param | raw hnswlib | ragserve index | ragserve collection | ragserve gRPC | "
        "gRPC adds |\n|---|---|---|---|---|---|---|\n",
        f_.latency_samples);
    for (const auto& r : latency_rows_) std::printf("%s\n", r.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"index_bench: ragserve indexes vs raw hnswlib / FAISS"};
  Flags f;
  std::string kinds_arg = "hnsw,ivf_flat,ivf_pq";
  app.add_option("--n", f.n, "Base vectors");
  app.add_option("--dim", f.dim, "Dimension");
  app.add_option("--queries", f.nq, "Queries");
  app.add_option("--csv", f.csv, "CSV output path");
  app.add_flag("--no-grpc", f.no_grpc, "Skip the gRPC loopback column and the latency table");
  app.add_option("--reps", f.reps, "Timed repetitions per cell (the best is reported)");
  app.add_option("--kinds", kinds_arg, "Comma list of index kinds: hnsw, ivf_flat, ivf_pq");
  app.add_option("--latency-samples", f.latency_samples,
                 "Single-query calls per implementation in the latency table");
  CLI11_PARSE(app, argc, argv);
  for (size_t pos = 0; pos <= kinds_arg.size();) {
    const size_t comma = std::min(kinds_arg.find(',', pos), kinds_arg.size());
    if (comma > pos) f.kinds.insert(kinds_arg.substr(pos, comma - pos));
    pos = comma + 1;
  }
  IndexBench bench(f);
  if (f.kinds.count("hnsw")) bench.RunHnsw();
  if (f.kinds.count("ivf_flat")) bench.RunIvfFlat();
  if (f.kinds.count("ivf_pq")) bench.RunIvfPq();
  if (!f.no_grpc && bench.has_hnsw()) {
    if (Status st = bench.RunGrpc(); !st.ok()) {
      std::fprintf(stderr, "grpc server: %s\n", st.ToString().c_str());
      return 1;
    }
  }
  bench.Print(argc, argv);
  return 0;
}
