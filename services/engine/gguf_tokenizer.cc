// GgufTokenizerJson / LoadModelTokenizer: a GGUF file's tokenizer.ggml.* metadata as the
// equivalent Hugging Face tokenizer.json document, loaded by tokenizer.h.
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <unordered_map>

#include "nlohmann/json.hpp"
#include "services/engine/gguf_model.h"
#include "services/engine/unicode.h"

namespace ragserve::engine {
namespace {

using ojson = nlohmann::ordered_json;

constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

enum TokenType {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6
};

struct Vocab {
  std::vector<std::string_view> tokens;
  std::vector<int> types;      // per id (kNormal when the file has no token_type)
  std::vector<double> scores;  // per id (empty when the file has none)
  std::unordered_map<std::string_view, int32_t> ids;  // first id of each spelling
};

StatusOr<Vocab> ReadVocab(const GgufHeader& h) {
  Vocab v;
  RS_ASSIGN_OR_RETURN(const GgufValue* tokens,
                      h.GetArray("tokenizer.ggml.tokens", GgufValueType::kString));
  if (tokens == nullptr || tokens->count == 0) {
    return InvalidArgument("gguf: missing or empty tokenizer.ggml.tokens");
  }
  if (tokens->count > (uint64_t{1} << 21)) {
    return InvalidArgument(
        StrCat("gguf: tokenizer.ggml.tokens has ", tokens->count, " entries (limit 2^21)"));
  }
  v.tokens = tokens->strings;
  const size_t n = v.tokens.size();
  RS_ASSIGN_OR_RETURN(const GgufValue* types,
                      h.GetArray("tokenizer.ggml.token_type", GgufValueType::kF32));
  RS_ASSIGN_OR_RETURN(const GgufValue* scores,
                      h.GetArray("tokenizer.ggml.scores", GgufValueType::kF32));
  for (auto [arr, key] : {std::pair{types, "token_type"}, {scores, "scores"}}) {
    if (arr != nullptr && arr->count != n) {
      return InvalidArgument(StrCat("gguf: tokenizer.ggml.", key, " has ", arr->count,
                                    " entries, tokenizer.ggml.tokens ", n));
    }
  }
  v.types.assign(n, kNormal);
  for (size_t i = 0; types != nullptr && i < n; ++i) {
    const double t = types->NumberAt(i);  // any numeric array: keep casts defined
    v.types[i] = t >= 0 && t <= 16 ? static_cast<int>(t) : 0;
  }
  // A NaN score would break the merge order's strict weak ordering: it ranks last.
  for (size_t i = 0; scores != nullptr && i < n; ++i) {
    const double sc = scores->NumberAt(i);
    v.scores.push_back(std::isfinite(sc) ? sc : -1e300);
  }
  for (size_t i = 0; i < n; ++i) v.ids.emplace(v.tokens[i], static_cast<int32_t>(i));
  return v;
}

// Whether id is the first (kept) spelling of its token: later duplicates and empty tokens are
// left out of the document (a tokenizer.json vocab maps each spelling to one id).
bool Kept(const Vocab& v, size_t id) {
  return !v.tokens[id].empty() && v.ids.at(v.tokens[id]) == static_cast<int32_t>(id);
}

ojson VocabAndAdded(const Vocab& v, bool unk_special, ojson* added) {
  ojson vocab = ojson::object();
  *added = ojson::array();
  for (size_t id = 0; id < v.tokens.size(); ++id) {
    if (!Kept(v, id)) continue;
    const std::string tok(v.tokens[id]);
    vocab[tok] = id;
    const int t = v.types[id];
    if (t == kControl || t == kUserDefined || (unk_special && t == kUnknown)) {
      added->push_back({{"id", id},
                        {"content", tok},
                        {"single_word", false},
                        {"lstrip", false},
                        {"rstrip", false},
                        {"normalized", t == kUserDefined},
                        {"special", t != kUserDefined}});
    }
  }
  return vocab;
}

// SentencePiece-style merges from scores: every split of a normal token into two vocab entries,
// the pair whose merged token scores highest first (ties: lower merged id, then lower left id).
ojson MergesFromScores(const Vocab& v) {
  std::vector<std::tuple<double, int32_t, int32_t, int32_t>> cand;  // -score, merged, left, right
  for (size_t id = 0; id < v.tokens.size(); ++id) {
    if (v.types[id] != kNormal || !Kept(v, id)) continue;
    const std::string_view t = v.tokens[id];
    for (size_t p = 1; p < t.size(); ++p) {
      if ((static_cast<unsigned char>(t[p]) & 0xC0) == 0x80) continue;  // inside a code point
      auto l = v.ids.find(t.substr(0, p)), r = v.ids.find(t.substr(p));
      if (l == v.ids.end() || r == v.ids.end()) continue;
      cand.emplace_back(-v.scores[id], static_cast<int32_t>(id), l->second, r->second);
    }
  }
  std::sort(cand.begin(), cand.end());
  ojson merges = ojson::array();
  for (const auto& [s, m, l, r] : cand) {
    merges.push_back({std::string(v.tokens[l]), std::string(v.tokens[r])});
  }
  return merges;
}

StatusOr<std::string_view> PrePattern(const std::string& pre) {
  if (pre == "default" || pre == "gpt-2" || pre == "gpt2") return unicode::kGpt2Pattern;
  if (pre == "llama-bpe" || pre == "llama3" || pre == "smaug-bpe") return unicode::kLlama3Pattern;
  if (pre == "qwen2") return kQwen2Pattern;
  return InvalidArgument(StrCat("gguf: unsupported tokenizer.ggml.pre \"", pre,
                                "\" (supported: default, gpt-2, llama-bpe, llama3, qwen2)"));
}

StatusOr<ojson> Gpt2Document(const GgufHeader& h, const Vocab& v) {
  RS_ASSIGN_OR_RETURN(const GgufValue* merges,
                      h.GetArray("tokenizer.ggml.merges", GgufValueType::kString));
  if (merges == nullptr)
    return InvalidArgument("gguf: gpt2 tokenizer without tokenizer.ggml.merges");
  RS_ASSIGN_OR_RETURN(std::string pre, h.GetString("tokenizer.ggml.pre", "default"));
  RS_ASSIGN_OR_RETURN(std::string_view pattern, PrePattern(pre));
  ojson merge_list = ojson::array();
  for (std::string_view m : merges->strings) merge_list.push_back(std::string(m));
  ojson added;
  ojson vocab = VocabAndAdded(v, /*unk_special=*/true, &added);
  const ojson byte_level = {{"type", "ByteLevel"},
                            {"add_prefix_space", false},
                            {"trim_offsets", true},
                            {"use_regex", false}};
  ojson split = {{"type", "Split"},
                 {"pattern", {{"Regex", std::string(pattern)}}},
                 {"behavior", "Isolated"},
                 {"invert", false}};
  return ojson{{"added_tokens", added},
               {"normalizer", nullptr},
               {"pre_tokenizer",
                {{"type", "Sequence"}, {"pretokenizers", ojson::array({split, byte_level})}}},
               {"decoder", byte_level},
               {"model",
                {{"type", "BPE"},
                 {"ignore_merges", pre == "llama-bpe" || pre == "llama3"},
                 {"vocab", vocab},
                 {"merges", merge_list}}}};
}

StatusOr<ojson> LlamaDocument(const GgufHeader& h, const Vocab& v) {
  if (v.scores.empty())
    return InvalidArgument("gguf: llama tokenizer without tokenizer.ggml.scores");
  ojson added;
  ojson vocab = VocabAndAdded(v, /*unk_special=*/true, &added);
  ojson model = {{"type", "BPE"},
                 {"fuse_unk", true},
                 {"byte_fallback", true},
                 {"vocab", vocab},
                 {"merges", MergesFromScores(v)}};
  std::optional<int64_t> unk;
  if (h.Find("tokenizer.ggml.unknown_token_id") != nullptr) {
    RS_ASSIGN_OR_RETURN(unk, h.GetInt("tokenizer.ggml.unknown_token_id"));
  } else {
    auto it = std::find(v.types.begin(), v.types.end(), kUnknown);
    if (it != v.types.end()) unk = it - v.types.begin();
  }
  if (unk) {
    if (*unk < 0 || *unk >= static_cast<int64_t>(v.tokens.size()) || !Kept(v, *unk)) {
      return InvalidArgument(
          StrCat("gguf: tokenizer.ggml.unknown_token_id ", *unk, " is not a token"));
    }
    model["unk_token"] = std::string(v.tokens[*unk]);
  }
  const std::string space = "\xE2\x96\x81";
  return ojson{
      {"added_tokens", added},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         ojson::array(
             {{{"type", "Prepend"}, {"prepend", space}},
              {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", space}}})}}},
      {"pre_tokenizer", nullptr},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         ojson::array({{{"type", "Replace"}, {"pattern", {{"String", space}}}, {"content", " "}},
                       {{"type", "ByteFallback"}},
                       {{"type", "Fuse"}},
                       {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
      {"model", model}};
}

// A TemplateProcessing post-processor naming the BOS when the file adds one.
Status AddBos(const GgufHeader& h, const Vocab& v, bool default_add, ojson* doc) {
  RS_ASSIGN_OR_RETURN(bool add_bos, h.GetBool("tokenizer.ggml.add_bos_token", default_add));
  if (!add_bos || h.Find("tokenizer.ggml.bos_token_id") == nullptr) return OkStatus();
  RS_ASSIGN_OR_RETURN(int64_t bos, h.GetInt("tokenizer.ggml.bos_token_id"));
  if (bos < 0 || bos >= static_cast<int64_t>(v.tokens.size()) || !Kept(v, bos)) {
    return InvalidArgument(StrCat("gguf: tokenizer.ggml.bos_token_id ", bos, " is not a token"));
  }
  (*doc)["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single",
       ojson::array({{{"SpecialToken", {{"id", std::string(v.tokens[bos])}, {"type_id", 0}}}},
                     {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})}};
  return OkStatus();
}

}  // namespace

StatusOr<std::string> GgufTokenizerJson(const GgufHeader& h) {
  RS_ASSIGN_OR_RETURN(std::string model, h.GetString("tokenizer.ggml.model"));
  if (model != "gpt2" && model != "llama") {
    return InvalidArgument(
        StrCat("gguf: unsupported tokenizer.ggml.model \"", model, "\" (supported: gpt2, llama)"));
  }
  RS_ASSIGN_OR_RETURN(Vocab v, ReadVocab(h));
  ojson doc;
  if (model == "gpt2") {
    RS_ASSIGN_OR_RETURN(doc, Gpt2Document(h, v));
  } else {
    RS_ASSIGN_OR_RETURN(doc, LlamaDocument(h, v));
  }
  RS_RETURN_IF_ERROR(AddBos(h, v, model == "llama", &doc));
  return doc.dump(-1, ' ', false, ojson::error_handler_t::replace);
}

bool IsGgufModelPath(const std::string& path) {
  if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".gguf") == 0) return true;
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && IsGgufFile(path);
}

StatusOr<std::unique_ptr<Tokenizer>> LoadModelTokenizer(const std::string& model_path) {
  if (!IsGgufModelPath(model_path)) return Tokenizer::FromFile(model_path + "/tokenizer.json");
  RS_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> f, OpenGguf(model_path));
  auto text = GgufTokenizerJson(f->header);
  if (!text.ok()) return Annotate(text.status(), model_path);
  auto tok = Tokenizer::FromJson(*text);
  if (!tok.ok()) return Annotate(tok.status(), StrCat(model_path, " (embedded tokenizer)"));
  return tok;
}

}  // namespace ragserve::engine
