// ragserve-tokenize: command-line access to the engine's tokenizers.
//
//   ragserve-tokenize train --corpus data/corpus/passages.jsonl --vocab-size 2048
//       --special '<|begin_of_text|>' --special '<|end_of_text|>' --out tokenizer.json
//   echo 'Hello world' | ragserve-tokenize encode --tokenizer tokenizer.json     -> [9906, 1917]
//   echo '[9906, 1917]' | ragserve-tokenize decode --tokenizer tokenizer.json    -> Hello world
//   ragserve-tokenize encode --tokenizer t.json --json-lines < in.jsonl   (one JSON string per
//       line in, one JSON id array per line out)
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "services/common/logging.h"
#include "services/engine/bpe_trainer.h"
#include "services/engine/gguf_model.h"
#include "services/engine/tokenizer.h"

namespace {

using ragserve::engine::Tokenizer;

int Fail(const std::string& msg) {
  std::cerr << "ragserve-tokenize: " << msg << "\n";
  return 1;
}

std::string ReadAll(std::istream& in) {
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string IdsJson(const std::vector<int32_t>& ids) { return nlohmann::json(ids).dump(); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Train, encode and decode with ragserve's tokenizers"};
  app.require_subcommand(1);

  std::string corpus, out_path, text_field = "text";
  int vocab_size = 2048;
  std::vector<std::string> specials;
  auto* train =
      app.add_subcommand("train", "Train a byte-level BPE tokenizer.json on a JSONL corpus");
  train->add_option("--corpus", corpus, "JSONL file; each line an object with a text field")
      ->required();
  train->add_option("--text-field", text_field, "Name of the text field");
  train->add_option("--vocab-size", vocab_size, "Bytes + merges + special tokens");
  train->add_option("--special", specials, "Special token (repeatable; ids 0.. in order)");
  train->add_option("--out", out_path, "Where to write tokenizer.json")->required();

  std::string tok_path;
  bool add_bos = false, allow_special = false, json_lines = false, keep_special = false;
  auto* encode = app.add_subcommand("encode", "Text on stdin -> JSON id array on stdout");
  encode->add_option("--tokenizer", tok_path, "tokenizer.json or a .gguf model")->required();
  encode->add_flag("--add-bos", add_bos, "Prepend the BOS token");
  encode->add_flag("--allow-special", allow_special, "Match special tokens written in the text");
  encode->add_flag("--json-lines", json_lines, "Each stdin line is a JSON string; one array each");
  auto* decode = app.add_subcommand("decode", "JSON id array on stdin -> text on stdout");
  decode->add_option("--tokenizer", tok_path, "tokenizer.json or a .gguf model")->required();
  decode->add_flag("--keep-special", keep_special, "Print special tokens too");
  CLI11_PARSE(app, argc, argv);
  // Library log lines (a fallback dtype, a tokenizer warning) go to stderr: stdout is the JSON.
  if (auto st = ragserve::InitLogging("tokenize", "info"); !st.ok()) return Fail(st.ToString());

  if (train->parsed()) {
    std::ifstream in(corpus);
    if (!in) return Fail("cannot read corpus '" + corpus + "'");
    std::vector<std::string> texts;
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
      if (line.empty()) continue;
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains(text_field) ||
          !j[text_field].is_string()) {
        return Fail(corpus + ":" + std::to_string(n) + ": not an object with a string '" +
                    text_field + "'");
      }
      texts.push_back(j[text_field].get<std::string>());
    }
    auto doc = ragserve::engine::TrainByteLevelBpe(texts, vocab_size, specials);
    if (!doc.ok()) return Fail(doc.status().ToString());
    std::ofstream out(out_path, std::ios::binary);
    out << *doc;
    if (!out.flush()) return Fail("cannot write '" + out_path + "'");
    return 0;
  }

  // A .gguf file carries its own vocabulary (gguf_model.h); anything else is a tokenizer.json.
  auto tok = ragserve::engine::IsGgufModelPath(tok_path)
                 ? ragserve::engine::LoadModelTokenizer(tok_path)
                 : Tokenizer::FromFile(tok_path);
  if (!tok.ok()) return Fail(tok.status().ToString());
  if (encode->parsed()) {
    if (!json_lines) {
      std::cout << IdsJson((*tok)->Encode(ReadAll(std::cin), add_bos, allow_special)) << "\n";
      return 0;
    }
    std::string line;
    for (int n = 1; std::getline(std::cin, line); ++n) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_string()) {
        return Fail("stdin line " + std::to_string(n) + " is not a JSON string");
      }
      std::cout << IdsJson((*tok)->Encode(j.get<std::string>(), add_bos, allow_special)) << "\n";
    }
    return 0;
  }
  auto j = nlohmann::json::parse(ReadAll(std::cin), nullptr, false);
  if (j.is_discarded() || !j.is_array()) return Fail("stdin is not a JSON array of ids");
  std::vector<int32_t> ids;
  for (const auto& v : j) {
    if (!v.is_number_integer()) return Fail("id " + v.dump() + " is not an integer");
    ids.push_back(v.get<int32_t>());
  }
  std::cout << (*tok)->Decode(ids, !keep_special);
  return 0;
}
