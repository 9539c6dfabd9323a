// Test helper for bert_ref_test.py: loads a BERT encoder directory and prints, as one JSON object,
// the token ids and the embeddings of the texts in a JSON array file.
//
//   ragserve-bert-embed --model DIR --texts TEXTS.json [--pooling mean|cls] [--batch-tokens N]
//   -> {"ids": [[...], ...], "embeddings": [[...], ...]}
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "services/engine/bert.h"

int main(int argc, char** argv) {
  std::string model, texts_path;
  ragserve::engine::BertEncoderOptions opts;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model") {
      model = value;
    } else if (flag == "--texts") {
      texts_path = value;
    } else if (flag == "--pooling") {
      auto p = ragserve::engine::ParsePoolingName(value);
      if (!p.ok()) {
        std::cerr << p.status().ToString() << "\n";
        return 2;
      }
      opts.pooling = *p;
    } else if (flag == "--batch-tokens") {
      opts.batch_tokens = std::atoi(value.c_str());
    } else {
      std::cerr << "unknown flag " << flag << "\n";
      return 2;
    }
  }
  std::ifstream f(texts_path);
  std::stringstream ss;
  ss << f.rdbuf();
  const auto texts = nlohmann::json::parse(ss.str()).get<std::vector<std::string>>();
  auto enc = ragserve::engine::BertEncoder::Load(model, opts);
  if (!enc.ok()) {
    std::cerr << enc.status().ToString() << "\n";
    return 1;
  }
  std::vector<float> e(texts.size() * (*enc)->dim());
  auto s = (*enc)->Encode(texts, e.data());
  if (!s.ok()) {
    std::cerr << s.ToString() << "\n";
    return 1;
  }
  nlohmann::json out;
  out["ids"] = nlohmann::json::array();
  out["embeddings"] = nlohmann::json::array();
  for (size_t i = 0; i < texts.size(); ++i) {
    out["ids"].push_back((*enc)->Tokenize(texts[i]));
    out["embeddings"].push_back(
        std::vector<float>(e.begin() + i * (*enc)->dim(), e.begin() + (i + 1) * (*enc)->dim()));
  }
  std::cout << out.dump() << "\n";
  return 0;
}
