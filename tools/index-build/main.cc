// ragserve-index-build: builds a collection directory (RocksDB + index file) offline from
// .fvecs/.bvecs/.npy vectors or JSONL documents, for `ragserve-index --data-dir <out>`.
//
// Vectors get document ids "0", "1", ... (row numbers). JSONL documents are embedded with the
// collection's embedder. The input is read and validated completely before anything is
// written; then every document is stored (durably), the ANN index is built once over all of
// them, saved, and its recall@10 against exact search is printed for a sample of queries.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <limits>
#include <random>
#include <set>

#include "index/flat.h"
#include "index/vector_io.h"
#include "services/index/collection.h"

namespace {

using namespace ragserve;  // NOLINT: a tool's main file
using collection::CollectionStore;
using collection::Document;

class Progress {
 public:
  Progress(std::string label, int64_t total)
      : label_(std::move(label)), total_(total), tty_(isatty(STDERR_FILENO)) {}
  void Update(int64_t done) {
    if (!tty_ || total_ <= 0) return;
    const int width = 40;
    const int filled = static_cast<int>(width * done / total_);
    std::fprintf(stderr, "\r%-10s [%s%s] %3d%% %lld/%lld", label_.c_str(),
                 std::string(filled, '=').c_str(), std::string(width - filled, ' ').c_str(),
                 static_cast<int>(100 * done / total_), static_cast<long long>(done),
                 static_cast<long long>(total_));
    if (done >= total_) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  std::string label_;
  int64_t total_;
  bool tty_;
};

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Status Run(const std::string& input, const std::string& out, const std::string& name,
           const std::string& kind, const std::string& metric_name, const std::string& params,
           int jsonl_dim, int batch, int recall_queries) {
  RS_ASSIGN_OR_RETURN(index::Metric metric, index::ParseMetric(metric_name));
  RS_CHECK_ARG(batch >= 1, "--batch must be >= 1, got ", batch);
  RS_CHECK_ARG(recall_queries >= 0, "--recall-queries must be >= 0, got ", recall_queries);
  // 1. Read and validate the whole input.
  std::vector<Document> docs;
  int dim = 0;
  if (EndsWith(input, ".jsonl")) {
    RS_CHECK_ARG(jsonl_dim >= 1, "--dim must be >= 1 for JSONL input, got ", jsonl_dim);
    dim = jsonl_dim;
    RS_RETURN_IF_ERROR(index::ReadJsonl(input, [&](int64_t, index::JsonlDocument&& d) {
      docs.push_back(Document{std::move(d.id), std::move(d.text), std::move(d.metadata_json), {}});
      return OkStatus();
    }));
    RS_CHECK_ARG(!docs.empty(), input, ": no documents");
  } else {
    RS_ASSIGN_OR_RETURN(auto m, index::ReadVectorFile(input));
    RS_CHECK_ARG(m.n >= 1, input, ": no vectors");
    dim = m.dim;
    docs.resize(m.n);
    for (int64_t i = 0; i < m.n; ++i) {
      docs[i].id = std::to_string(i);
      docs[i].vector.assign(m.row(i), m.row(i) + dim);
    }
  }
  std::fprintf(stderr, "read %zu documents of dimension %d from %s\n", docs.size(), dim,
               input.c_str());
  // Validate the final kind and params before writing anything.
  RS_RETURN_IF_ERROR(index::MakeIndexSpec(kind, metric, dim, params).status());
  // 2. Store every document (exact flat index while loading), then build the ANN index once.
  // An offline build is not a hostile client: its batches are as large as it asks for.
  collection::StoreLimits limits;
  limits.max_docs_per_upsert = std::max<int64_t>(batch, limits.max_docs_per_upsert);
  limits.max_embed_batch_bytes = std::numeric_limits<int64_t>::max();
  RS_ASSIGN_OR_RETURN(auto store, CollectionStore::Open(out, limits));
  RS_ASSIGN_OR_RETURN(
      auto c,
      store->Create(
          {.name = name, .dim = dim, .metric = metric, .index_kind = "flat", .params_json = "{}"}));
  const auto t0 = std::chrono::steady_clock::now();
  Progress load("store", static_cast<int64_t>(docs.size()));
  for (size_t i = 0; i < docs.size(); i += batch) {
    const size_t end = std::min(docs.size(), i + batch);
    RS_RETURN_IF_ERROR(
        c->Upsert(std::vector<Document>(docs.begin() + i, docs.begin() + end)).status());
    load.Update(static_cast<int64_t>(end));
  }
  const auto t1 = std::chrono::steady_clock::now();
  std::fprintf(stderr, "building %s index...\n", kind.c_str());
  RS_RETURN_IF_ERROR(c->Rebuild(kind, params));
  const auto t2 = std::chrono::steady_clock::now();
  RS_RETURN_IF_ERROR(c->Checkpoint());
  // 3. recall@10 against exact search on a sample of stored vectors.
  const int64_t n = static_cast<int64_t>(docs.size());
  const int nq = static_cast<int>(std::min<int64_t>(recall_queries, n));
  double recall = 1.0;
  if (nq > 0) {
    std::vector<std::string> ids(docs.size());
    for (size_t i = 0; i < docs.size(); ++i) ids[i] = docs[i].id;
    std::vector<Document> stored;
    std::vector<std::string> missing;
    RS_RETURN_IF_ERROR(c->Get(ids, &stored, &missing));
    RS_CHECK_ARG(missing.empty(), "documents missing after the build");
    auto exact = index::FlatIndex::Create(dim, metric).value();
    std::vector<float> x(n * dim);
    std::vector<int64_t> rows(n);
    for (int64_t i = 0; i < n; ++i) {
      std::copy(stored[i].vector.begin(), stored[i].vector.end(), x.begin() + i * dim);
      rows[i] = i;
    }
    RS_RETURN_IF_ERROR(exact->add(n, x.data(), rows.data()));
    std::mt19937_64 rng(42);
    std::vector<collection::Query> queries(nq);
    std::vector<float> qx(static_cast<size_t>(nq) * dim);
    for (int i = 0; i < nq; ++i) {
      const int64_t r = static_cast<int64_t>(rng() % n);
      queries[i].vector.assign(x.begin() + r * dim, x.begin() + (r + 1) * dim);
      std::copy(queries[i].vector.begin(), queries[i].vector.end(), qx.begin() + i * dim);
    }
    const int k = static_cast<int>(std::min<int64_t>(10, n));
    std::vector<float> d(static_cast<size_t>(nq) * k);
    std::vector<int64_t> truth(static_cast<size_t>(nq) * k);
    RS_RETURN_IF_ERROR(exact->search(nq, qx.data(), k, d.data(), truth.data()));
    RS_ASSIGN_OR_RETURN(auto got, c->Search(queries, {.k = k, .include_text = false}));
    double hits = 0;
    for (int i = 0; i < nq; ++i) {
      std::set<std::string> t;
      for (int j = 0; j < k; ++j) {
        if (truth[i * k + j] >= 0) t.insert(ids[truth[i * k + j]]);
      }
      for (const auto& h : got[i]) hits += t.count(h.id);
    }
    recall = hits / (static_cast<double>(nq) * k);
  }
  const auto info = c->Info();
  auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  std::printf("collection %s: %lld documents, dim %d, metric %s, index %s %s\n", name.c_str(),
              static_cast<long long>(info.num_documents), dim, metric_name.c_str(),
              info.active_kind.c_str(), info.spec.params_json.c_str());
  std::printf("store %.2f s, index build %.2f s, index memory %.1f MiB\n", secs(t0, t1),
              secs(t1, t2), info.index_bytes / 1048576.0);
  std::printf("recall@10 = %.4f (%d sampled queries vs exact search)\n", recall, nq);
  std::printf("serve it with: ragserve-index --data-dir %s\n", out.c_str());
  return OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ragserve-index-build: build a collection directory offline"};
  std::string input, out, name, kind = "hnsw", metric = "l2", params = "{}";
  int dim = 256, batch = 10000, recall_queries = 100;
  app.add_option("--input", input, ".fvecs / .bvecs / .npy vectors or .jsonl documents")
      ->required();
  app.add_option("--out", out, "Collection directory (ragserve-index --data-dir)")->required();
  app.add_option("--collection", name, "Collection name")->required();
  app.add_option("--kind", kind, "flat | hnsw | ivf_flat | ivf_pq");
  app.add_option("--metric", metric, "l2 | ip | cosine");
  app.add_option("--params", params, R"(Index params JSON, e.g. {"M":32,"ef_search":128})");
  app.add_option("--dim", dim, "Embedding dimension for JSONL input");
  app.add_option("--batch", batch, "Documents per durable write batch");
  app.add_option("--recall-queries", recall_queries, "Sampled queries for the recall check");
  CLI11_PARSE(app, argc, argv);
  ragserve::Status st = Run(input, out, name, kind, metric, params, dim, batch, recall_queries);
  if (!st.ok()) {
    std::fprintf(stderr, "ragserve-index-build: %s\n", st.ToString().c_str());
    return 1;
  }
  return 0;
}
