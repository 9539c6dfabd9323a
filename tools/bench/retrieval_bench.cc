// retrieval_bench: how often retrieval finds the gold passage of a question, per method.
//
//   retrieval_bench --passages P.jsonl --questions Q.jsonl [--distractors D.jsonl --total N]
//                   [--dim 256] [--index flat] [--methods hashing,bm25,hybrid,hybrid-weighted]
//                   [--model DIR --dense-weight 0.5] [--split dev|test]
//                   [--style name|description] [--by-style]
//
// Loads the passages (and distractor passages up to --total) into an in-process collection
// (services/index/collection.h, hashing embedder), asks every question ({"question",
// "answer_passage_id"} per line) with each method, and prints hit@1, hit@5 and MRR@10 of the gold
// passage and the per-query search latency (one query per call, text embedding included):
//   hashing          dense: the hashing embedder + the vector index (exact with --index flat)
//   bm25             the BM25 index (k1 1.2, b 0.75)
//   hybrid           both, reciprocal rank fusion (k 60, 50 candidates each)
//   hybrid-weighted  both, 0.5 x min-max normalised dense + 0.5 x BM25
//   dense            dense: the BERT encoder of --model (a second collection, embedder
//                    "model:DIR", dim = the model's hidden size) + the vector index
//   dense-hybrid     --model's dense + BM25, weighted: --dense-weight x dense + the rest x BM25
//   dense-hybrid-rrf --model's dense + BM25, reciprocal rank fusion (k 60)
//   dense-hybrid@W   dense-hybrid with dense weight W instead of --dense-weight (a dev sweep
//                    in one load: --methods dense-hybrid@0.3,dense-hybrid@0.5,...)
// A collection is loaded only when a method needs it (bm25 uses the hashing one if it is loaded).
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
#include "services/engine/bert_config.h"
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
  std::string style;  // the "style" field, empty when there is none
};

struct Row {
  std::string method;
  double hit1 = 0, hit5 = 0, mrr = 0, p50_ms = 0, p95_ms = 0;
};

// Reads the questions of a JSONL file; with a non-empty `split` (`style`), only the lines whose
// "split" ("style") field equals it (data/eval/paraphrase-handwritten.jsonl has "dev" and "test",
// "name" and "description").
std::vector<Question> ReadQuestions(const std::string& path, const std::string& split,
                                    const std::string& style) {
  std::ifstream f(path);
  std::vector<Question> out;
  for (std::string line; std::getline(f, line);) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line);
    if (!split.empty() && j.value("split", "") != split) continue;
    if (!style.empty() && j.value("style", "") != style) continue;
    out.push_back({j.at("question").get<std::string>(),
                   j.at("answer_passage_id").get<std::string>(), j.value("style", "")});
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

bool IsModelMethod(const std::string& m) { return m.rfind("dense", 0) == 0; }

SearchOptions MethodOptions(const std::string& method, double dense_weight) {
  SearchOptions o;
  o.k = 10;
  o.include_text = false;
  if (method == "dense") {
    o.retrieval = "dense";
  } else if (method == "dense-hybrid") {
    o.retrieval = "hybrid";
    o.fusion = ragserve::collection::FusionSpec{.method = "weighted", .dense_weight = dense_weight};
  } else if (method.rfind("dense-hybrid@", 0) == 0) {
    o.retrieval = "hybrid";
    o.fusion = ragserve::collection::FusionSpec{
        .method = "weighted", .dense_weight = std::stod(method.substr(method.find('@') + 1))};
  } else if (method == "dense-hybrid-rrf") {
    o.retrieval = "hybrid";
    o.fusion = ragserve::collection::FusionSpec{.method = "rrf"};
  } else if (method == "hashing") {
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

Row Measure(const Collection& c, const std::vector<Question>& qs, const std::string& method,
            double dense_weight) {
  Row r;
  r.method = method;
  const SearchOptions o = MethodOptions(method, dense_weight);
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
  std::string split;
  app.add_option("--split", split, "Only the questions whose \"split\" field is this (dev, test)");
  std::string style;
  app.add_option("--style", style,
                 "Only the questions whose \"style\" field is this (name, description)");
  bool by_style = false;
  app.add_flag("--by-style", by_style,
               "Also rows per \"style\" of question (set label \"<label> <style>\"), same load");
  std::string model;
  double dense_weight = 0.5;
  app.add_option("--model", model, "BERT encoder directory for the dense* methods");
  app.add_option("--dense-weight", dense_weight, "dense-hybrid: weight of the dense list")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const auto method_list = Split(methods);
  bool need_model = false, need_hashing = false;
  for (const auto& m : method_list) {
    need_model |= IsModelMethod(m);
    need_hashing |= !IsModelMethod(m) && m != "bm25";
  }
  if (need_model && model.empty()) {
    std::fprintf(stderr, "retrieval_bench: dense* methods need --model DIR\n");
    return 2;
  }
  need_hashing |= !need_model;  // bm25 alone runs on the hashing collection
  const auto qs = ReadQuestions(questions, split, style);
  if (qs.empty()) {
    std::fprintf(stderr, "retrieval_bench: no questions in %s (split '%s', style '%s')\n",
                 questions.c_str(), split.c_str(), style.c_str());
    return 2;
  }
  int model_dim = 0;
  if (need_model) {
    std::ifstream f(model + "/config.json");
    std::stringstream text;
    text << f.rdbuf();
    model_dim = Must(ragserve::engine::ParseBertConfig(text.str()), "model config").hidden_size;
  }

  const std::string dir =
      (std::filesystem::temp_directory_path() / ("retrieval_bench_" + std::to_string(getpid())))
          .string();
  std::filesystem::remove_all(dir);
  auto store = Must(ragserve::collection::CollectionStore::Open(dir), "open store");
  std::shared_ptr<Collection> hashing_c, model_c;
  int64_t n = 0;
  double load_s = 0, model_load_s = 0;
  auto load = [&](std::shared_ptr<Collection> c, double* seconds) {
    const auto t0 = std::chrono::steady_clock::now();
    int64_t have = Load(c.get(), passages, INT64_MAX, 0);
    if (!distractors.empty() && total > have) have = Load(c.get(), distractors, total, have);
    *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    n = have;
    return c;
  };
  if (need_hashing) {
    hashing_c =
        load(Must(store->Create({.name = "bench", .dim = dim, .index_kind = index_kind}), "create"),
             &load_s);
  }
  if (need_model) {
    model_c = load(Must(store->Create({.name = "bench_model",
                                       .dim = model_dim,
                                       .index_kind = index_kind,
                                       .embedder = "model:" + model}),
                        "create model collection"),
                   &model_load_s);
  }

  std::printf("## retrieval_bench\n\nmachine: %s, %d cpus, load %s\ncommand:",
              ragserve::bench::CpuModel().c_str(), ragserve::bench::CpuCount(),
              ragserve::bench::LoadAvg().c_str());
  for (int i = 0; i < argc; ++i) std::printf(" %s", argv[i]);
  std::printf("\n%s: %lld passages, %zu questions, %s index", label.c_str(),
              static_cast<long long>(n), qs.size(), index_kind.c_str());
  if (hashing_c) std::printf("; hashing dim %d (loaded and indexed in %.1f s)", dim, load_s);
  if (model_c) {
    std::printf("; model %s dim %d, dense-weight %.2f (loaded and indexed in %.1f s)",
                model.c_str(), model_dim, dense_weight, model_load_s);
  }
  std::printf("\n\n");
  std::printf("| set | passages | method | hit@1 | hit@5 | MRR@10 | p50 ms | p95 ms |\n");
  std::printf("|---|---:|---|---:|---:|---:|---:|---:|\n");
  nlohmann::json rows = nlohmann::json::array();
  std::vector<std::pair<std::string, std::vector<Question>>> sets = {{label, qs}};
  if (by_style) {
    for (const Question& q : qs) {
      const std::string set = label + " " + q.style;
      auto it =
          std::find_if(sets.begin() + 1, sets.end(), [&](const auto& s) { return s.first == set; });
      if (it == sets.end()) it = sets.insert(sets.end(), {set, {}});
      it->second.push_back(q);
    }
  }
  for (const auto& [set, set_qs] : sets) {
    for (const auto& m : method_list) {
      const Collection& c = IsModelMethod(m) || !hashing_c ? *model_c : *hashing_c;
      const Row r = Measure(c, set_qs, m, dense_weight);
      std::printf("| %s | %lld | %s | %.3f | %.3f | %.3f | %.2f | %.2f |\n", set.c_str(),
                  static_cast<long long>(n), r.method.c_str(), r.hit1, r.hit5, r.mrr, r.p50_ms,
                  r.p95_ms);
      std::fflush(stdout);
      rows.push_back({{"set", set},
                      {"passages", n},
                      {"method", r.method},
                      {"hit1", r.hit1},
                      {"hit5", r.hit5},
                      {"mrr", r.mrr},
                      {"p50_ms", r.p50_ms},
                      {"p95_ms", r.p95_ms}});
    }
  }
  if (!json_out.empty()) std::ofstream(json_out) << rows.dump(2) << "\n";
  hashing_c.reset();
  model_c.reset();
  store.reset();
  std::filesystem::remove_all(dir);
  return 0;
}
