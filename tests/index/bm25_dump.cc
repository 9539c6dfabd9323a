// bm25_dump: runs index/bm25.h on a corpus given as JSON on stdin and prints the hits as JSON,
// for the independent Python reference (tests/reference/bm25_ref.py).
//   in:  {"k1": f, "b": f, "k": n, "docs": [[label, text], ...], "remove": [label, ...],
//         "queries": [text, ...], "save": "path"}
//   out: {"results": [[[label, score], ...] per query], "reloaded": same after Save + Load}
#include <cstdio>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "index/bm25.h"

namespace {

nlohmann::json Run(const ragserve::index::Bm25Index& idx, const std::vector<std::string>& queries,
                   int k) {
  std::vector<float> scores(queries.size() * k);
  std::vector<int64_t> labels(queries.size() * k);
  auto st = idx.Search(static_cast<int64_t>(queries.size()), queries.data(), k, scores.data(),
                       labels.data());
  if (!st.ok()) {
    std::fprintf(stderr, "bm25_dump: %s\n", st.ToString().c_str());
    std::exit(1);
  }
  nlohmann::json out = nlohmann::json::array();
  for (size_t i = 0; i < queries.size(); ++i) {
    nlohmann::json hits = nlohmann::json::array();
    for (int j = 0; j < k && labels[i * k + j] >= 0; ++j) {
      hits.push_back({labels[i * k + j], static_cast<double>(scores[i * k + j])});
    }
    out.push_back(hits);
  }
  return out;
}

}  // namespace

int main() {
  const std::string in((std::istreambuf_iterator<char>(std::cin)),
                       std::istreambuf_iterator<char>());
  const auto j = nlohmann::json::parse(in);
  auto idx =
      ragserve::index::Bm25Index::Create({j.at("k1").get<double>(), j.at("b").get<double>()});
  if (!idx.ok()) {
    std::fprintf(stderr, "bm25_dump: %s\n", idx.status().ToString().c_str());
    return 1;
  }
  std::vector<int64_t> labels;
  std::vector<std::string> texts;
  for (const auto& d : j.at("docs")) {
    labels.push_back(d.at(0).get<int64_t>());
    texts.push_back(d.at(1).get<std::string>());
  }
  std::vector<std::string_view> views(texts.begin(), texts.end());
  (*idx)->Add(static_cast<int64_t>(labels.size()), labels.data(), views.data());
  const auto removed = j.at("remove").get<std::vector<int64_t>>();
  (*idx)->Remove(static_cast<int64_t>(removed.size()), removed.data());
  const auto queries = j.at("queries").get<std::vector<std::string>>();
  const int k = j.at("k").get<int>();
  nlohmann::json out;
  out["results"] = Run(**idx, queries, k);
  const std::string path = j.at("save").get<std::string>();
  if (auto st = (*idx)->Save(path); !st.ok()) {
    std::fprintf(stderr, "bm25_dump: %s\n", st.ToString().c_str());
    return 1;
  }
  auto loaded = ragserve::index::Bm25Index::Load(path);
  if (!loaded.ok()) {
    std::fprintf(stderr, "bm25_dump: %s\n", loaded.status().ToString().c_str());
    return 1;
  }
  out["reloaded"] = Run(**loaded, queries, k);
  std::cout << out.dump() << "\n";
  return 0;
}
