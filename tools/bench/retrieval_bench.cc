// retrieval_bench: how often retrieval finds the gold passage of a question, per method.
//
//   retrieval_bench --passages P.jsonl --questions Q.jsonl [--distractors D.jsonl --total N]
//                   [--dim 256] [--index flat] [--methods hashing,bm25,hybrid,hybrid-weighted]
//
// Loads the passages (and distractor passages up to --total) into an in-process collection
// (services/index/collection.h, hashing embedder), asks every question ({"question",
// "answer_passage_id"} per line) with each method, and prints hit@1, hit@5 and MRR@10 of the gold
// passage and the per-query search latency (one query per call, text embedding included):
//   hashing          dense: the hashing embedder + the vector index (exact with --index flat)
//   bm25             the BM25 index (k1 1.2, b 0.75)
//   hybrid           both, reciprocal rank fusion (k 60, 50 candidates each)
//   hybrid-weighted  both, 0.5 x min-max normalised dense + 0.5 x BM25
// Dense rows of a trained embedder come with issue 22 item 3 (model:<dir> embedders).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "index/vector_io.h"
#include "services/index/collection.h"
#include "tools/bench/bench_util.h"

namespace {

using ragserve::bench::Must;
using ragserve::collection::Collection;
using ragserve::collection::Document;
using ragserve::collection::SearchOptions;

struct Question {
  std::string text;
  std::string gold;
};

struct Row {
  std::string method;
  double hit1 = 0, hit5 = 0, mrr = 0, p50_ms = 0, p95_ms = 0;
};

std::vector<Question> ReadQuestions(const std::string& path) {
  std::ifstream f(path);
  std::vector<Question> out;
  for (std::string line; std::getline(f, line);) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line);
    out.push_back(
        {j.at("question").get<std::string>(), j.at("answer_passage_id").get<std::string>()});
  }
  return out;
}

// Upserts the documents of a JSONL file in batches of 1000 until the collection holds `limit`.
int64_t Load(Collection* c, const std::string& path, int64_t limit, int64_t have) {
  std::vector<Document> batch;
  auto flush = [&] {
    if (!batch.empty()) have += Must(c->Upsert(std::move(batch)), "upsert");
    batch.clear();
  };
  CHECK_OK(ragserve::index::ReadJsonl(path, [&](int64_t, ragserve::index::JsonlDocument&& d) {
    if (have + static_cast<int64_t>(batch.size()) >= limit) return ragserve::OkStatus();
    batch.push_back(Document{d.id, std::move(d.text), std::move(d.metadata_json)});
    if (batch.size() == 1000) flush();
    return ragserve::OkStatus();
  }));
  flush();
  return have;
}

SearchOptions MethodOptions(const std::string& method) {
  SearchOptions o;
  o.k = 10;
  o.include_text = false;
  if (method == "hashing") {
    o.retrieval = "dense";
  } else if (method == "bm25") {
    o.retrieval = "bm25";
  } else if (method == "hybrid-weighted") {
    o.retrieval = "hybrid";
    o.fusion = ragserve::collection::FusionSpec{.method = "weighted", .dense_weight = 0.5};
  } else {
    o.retrieval = "hybrid";
    o.fusion = ragserve::collection::FusionSpec{.method = "rrf"};
  }
  return o;
}

Row Measure(const Collection& c, const std::vector<Question>& qs, const std::string& method) {
  Row r;
  r.method = method;
  const SearchOptions o = MethodOptions(method);
  std::vector<double> ms;
  for (const Question& q : qs) {
    const auto t0 = std::chrono::steady_clock::now();
    auto hits = Must(c.Search({{.text = q.text}}, o), "search");
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    for (size_t rank = 0; rank < hits[0].size(); ++rank) {
      if (hits[0][rank].id != q.gold) continue;
      r.hit1 += rank == 0;
      r.hit5 += rank < 5;
      r.mrr += 1.0 / static_cast<double>(rank + 1);
      break;
    }
  }
  const double n = static_cast<double>(qs.size());
  r.hit1 /= n;
  r.hit5 /= n;
  r.mrr /= n;
  std::sort(ms.begin(), ms.end());
  r.p50_ms = ms[ms.size() / 2];
  r.p95_ms = ms[std::min(ms.size() - 1, ms.size() * 95 / 100)];
  return r;
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) out.push_back(item);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("retrieval_bench: hit@1 / hit@5 / MRR of the gold passage per retrieval method");
  std::string passages, questions, distractors, index_kind = "flat", methods, json_out;
  std::string label = "corpus";
  int dim = 256;
  int64_t total = 0;
  methods = "hashing,bm25,hybrid,hybrid-weighted";
  app.add_option("--passages", passages, "JSONL passages holding the gold ones")->required();
  app.add_option("--questions", questions, "JSONL {question, answer_passage_id}")->required();
  app.add_option("--distractors", distractors, "JSONL passages added up to --total");
  app.add_option("--total", total, "Passages in the collection (0 = just --passages)");
  app.add_option("--dim", dim, "Hashing embedder dimension")->capture_default_str();
  app.add_option("--index", index_kind, "flat | hnsw | ivf_flat")->capture_default_str();
  app.add_option("--methods", methods, "Comma-separated methods")->capture_default_str();
  app.add_option("--label", label, "Name of the set in the table")->capture_default_str();
  app.add_option("--json", json_out, "Also write the rows as JSON here");
  CLI11_PARSE(app, argc, argv);

  const std::string dir =
      (std::filesystem::temp_directory_path() / ("retrieval_bench_" + std::to_string(getpid())))
          .string();
  std::filesystem::remove_all(dir);
  auto store = Must(ragserve::collection::CollectionStore::Open(dir), "open store");
  auto c = Must(store->Create({.name = "bench", .dim = dim, .index_kind = index_kind}), "create");
  const auto t0 = std::chrono::steady_clock::now();
  int64_t n = Load(c.get(), passages, INT64_MAX, 0);
  if (!distractors.empty() && total > n) n = Load(c.get(), distractors, total, n);
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto qs = ReadQuestions(questions);

  std::printf("## retrieval_bench\n\nmachine: %s, %d cpus, load %s\ncommand:",
              ragserve::bench::CpuModel().c_str(), ragserve::bench::CpuCount(),
              ragserve::bench::LoadAvg().c_str());
  for (int i = 0; i < argc; ++i) std::printf(" %s", argv[i]);
  std::printf(
      "\n%s: %lld passages (loaded and indexed in %.1f s), %zu questions, %s index, dim %d\n\n",
      label.c_str(), static_cast<long long>(n), load_s, qs.size(), index_kind.c_str(), dim);
  std::printf("| set | passages | method | hit@1 | hit@5 | MRR@10 | p50 ms | p95 ms |\n");
  std::printf("|---|---:|---|---:|---:|---:|---:|---:|\n");
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& m : Split(methods)) {
    const Row r = Measure(*c, qs, m);
    std::printf("| %s | %lld | %s | %.3f | %.3f | %.3f | %.2f | %.2f |\n", label.c_str(),
                static_cast<long long>(n), r.method.c_str(), r.hit1, r.hit5, r.mrr, r.p50_ms,
                r.p95_ms);
    std::fflush(stdout);
    rows.push_back({{"set", label},
                    {"passages", n},
                    {"method", r.method},
                    {"hit1", r.hit1},
                    {"hit5", r.hit5},
                    {"mrr", r.mrr},
                    {"p50_ms", r.p50_ms},
                    {"p95_ms", r.p95_ms}});
  }
  if (!json_out.empty()) std::ofstream(json_out) << rows.dump(2) << "\n";
  c.reset();
  store.reset();
  std::filesystem::remove_all(dir);
  return 0;
}
