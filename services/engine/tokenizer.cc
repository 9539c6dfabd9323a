#include "services/engine/tokenizer.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <functional>
#include <queue>
#include <sstream>

#include <nlohmann/json.hpp>

#include "services/common/logging.h"
#include "services/common/mutex.h"
#include "services/engine/unicode.h"

namespace ragserve::engine {

using json = nlohmann::json;
using unicode::RegexSplitter;
using unicode::SplitBehavior;

namespace {

constexpr int32_t kMaxVocab = 1 << 21;        // Gemma's 256k fits; a hostile id cannot OOM us
constexpr size_t kMaxCachedPieceBytes = 128;  // longer pieces are rare and not worth caching
constexpr size_t kMaxCacheEntries = 1 << 17;
constexpr int kShortPiece = 12;  // symbols; longer pieces use the heap + linked-list merge loop
constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581 "▁"

enum class Prepend { kAlways, kFirst, kNever };

struct NormStep {
  enum Kind { kPrepend, kReplace } kind;
  std::string text;                   // Prepend: the prefix; Replace: the replacement
  std::shared_ptr<RegexSplitter> re;  // Replace: the pattern
};

struct PreStep {
  enum Kind { kSplit, kByteLevel, kMetaspace, kDigits } kind;
  std::shared_ptr<RegexSplitter> re;  // Split / ByteLevel(use_regex) / Metaspace(split) / Digits
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;
  std::string replacement;  // Metaspace
  Prepend prepend = Prepend::kAlways;
};

struct AddedToken {
  int32_t id;
  std::string content;
  bool special, lstrip, rstrip;
};

// Transparent hash so the word cache is probed with a string_view (no allocation on a hit).
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
};

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

bool IsAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

std::string ReplaceAll(std::string_view s, const RegexSplitter& re, std::string_view with) {
  std::string out;
  size_t last = 0;
  for (auto [b, e] : re.Matches(s)) {
    out.append(s.substr(last, b - last));
    out.append(with);
    last = e;
  }
  out.append(s.substr(last));
  return out;
}

// The "<0xHH>" byte-fallback spelling of byte b.
std::string ByteFallbackToken(int b) {
  static const char* kHex = "0123456789ABCDEF";
  return StrCat("<0x", kHex[b >> 4], kHex[b & 15], ">");
}

// Typed field access that reports the JSON path of a bad value.
const json* Field(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

StatusOr<bool> GetBool(const json& obj, const char* key, bool dflt, std::string_view path) {
  const json* v = Field(obj, key);
  if (v == nullptr) return dflt;
  RS_CHECK_ARG(v->is_boolean(), path, ".", key, " must be a boolean, got ", v->dump());
  return v->get<bool>();
}

StatusOr<std::string> GetString(const json& obj, const char* key, std::string_view dflt,
                                std::string_view path) {
  const json* v = Field(obj, key);
  if (v == nullptr) return std::string(dflt);
  RS_CHECK_ARG(v->is_string(), path, ".", key, " must be a string, got ", v->dump());
  return v->get<std::string>();
}

StatusOr<SplitBehavior> ParseBehavior(const std::string& s, std::string_view path) {
  if (s == "Isolated") return SplitBehavior::kIsolated;
  if (s == "Removed") return SplitBehavior::kRemoved;
  if (s == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (s == "Contiguous") return SplitBehavior::kContiguous;
  return InvalidArgument(StrCat(path, ".behavior: unknown split behavior '", s, "'"));
}

// {"Regex": "..."} or {"String": "..."} -> a compiled splitter.
StatusOr<std::shared_ptr<RegexSplitter>> ParsePattern(const json& obj, std::string_view path) {
  const json* p = Field(obj, "pattern");
  RS_CHECK_ARG(p != nullptr && p->is_object(), path, ".pattern must be {\"Regex\": ...} or ",
               "{\"String\": ...}");
  if (const json* r = Field(*p, "Regex"); r != nullptr && r->is_string()) {
    return RegexSplitter::Compile(r->get<std::string>(), /*literal=*/false);
  }
  if (const json* s = Field(*p, "String"); s != nullptr && s->is_string()) {
    RS_CHECK_ARG(!s->get<std::string>().empty(), path, ".pattern.String must not be empty");
    return RegexSplitter::Compile(s->get<std::string>(), /*literal=*/true);
  }
  return InvalidArgument(
      StrCat(path, ".pattern must hold a string \"Regex\" or \"String\", got ", p->dump()));
}

StatusOr<Prepend> ParsePrependScheme(const json& obj, std::string_view path) {
  RS_ASSIGN_OR_RETURN(bool add_prefix, GetBool(obj, "add_prefix_space", true, path));
  if (!add_prefix) return Prepend::kNever;
  RS_ASSIGN_OR_RETURN(std::string scheme, GetString(obj, "prepend_scheme", "always", path));
  if (scheme == "always") return Prepend::kAlways;
  if (scheme == "first") return Prepend::kFirst;
  if (scheme == "never") return Prepend::kNever;
  return InvalidArgument(StrCat(path, ".prepend_scheme: unknown value '", scheme, "'"));
}

}  // namespace

struct TokenizerImpl {
  std::unordered_map<std::string, int32_t> vocab;  // vocab and added-token spellings
  std::vector<std::string> id_to_token;            // [vocab_size]
  std::vector<std::string> id_bytes;               // [vocab_size] decoded bytes of each id
  std::vector<uint8_t> special;                    // [vocab_size] 1 for special added tokens
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (a, b) -> (rank, a+b)
  std::array<int32_t, 256> byte_ids;  // byte-level: byte -> id; else the <0xHH> fallback id
  bool byte_level = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
  bool fuse_unk = false;
  std::optional<int32_t> unk;
  std::vector<NormStep> normalizers;
  std::vector<PreStep> pre_tokenizers;
  std::vector<AddedToken> added;                   // longest content first
  std::array<std::vector<int32_t>, 256> added_at;  // first byte -> indexes into `added`
  bool strip_leading_space = false;                // decoder strips one leading ' ' of the output
  bool views_only = false;  // no step rewrites text: pre-tokenize on views of the input
  std::optional<int32_t> bos, eos;

  mutable Mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache
      ABSL_GUARDED_BY(cache_mu);

  Status ParseModel(const json& model);
  Status ParseAddedTokens(const json& added_tokens);
  Status ParseNormalizer(const json& n, std::string_view path);
  Status ParsePreTokenizer(const json& p, std::string_view path);
  Status ParseDecoderStep(const json& d, std::string_view path,
                          std::vector<std::function<std::string(const std::string&)>>* steps);
  Status ParseDecoder(const json& d);
  void FindBosEos(const json* post_processor);

  void EncodeSegment(std::string_view text, bool is_first, std::vector<int32_t>* out) const;
  void EncodePiece(std::string_view piece, std::vector<int32_t>* out) const;
  std::vector<int32_t> Bpe(std::string_view piece) const;
};

Status TokenizerImpl::ParseModel(const json& model) {
  RS_CHECK_ARG(model.is_object(), "model must be an object");
  RS_ASSIGN_OR_RETURN(std::string type, GetString(model, "type", "BPE", "model"));
  RS_CHECK_ARG(type == "BPE", "model.type '", type,
               "' is not supported (only BPE: byte-level or SentencePiece-style)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    RS_ASSIGN_OR_RETURN(std::string v, GetString(model, key, "", "model"));
    RS_CHECK_ARG(v.empty(), "model.", key, " '", v, "' is not supported");
  }
  RS_ASSIGN_OR_RETURN(byte_fallback, GetBool(model, "byte_fallback", false, "model"));
  RS_ASSIGN_OR_RETURN(fuse_unk, GetBool(model, "fuse_unk", false, "model"));
  RS_ASSIGN_OR_RETURN(ignore_merges, GetBool(model, "ignore_merges", false, "model"));

  const json* v = Field(model, "vocab");
  RS_CHECK_ARG(v != nullptr && v->is_object(), "model.vocab must be an object {token: id}");
  int32_t max_id = -1;
  for (auto it = v->begin(); it != v->end(); ++it) {
    RS_CHECK_ARG(it.value().is_number_integer(), "model.vocab['", it.key(),
                 "'] must be an integer id, got ", it.value().dump());
    const int64_t id = it.value().get<int64_t>();
    RS_CHECK_ARG(id >= 0 && id < kMaxVocab, "model.vocab['", it.key(), "'] = ", id,
                 " is outside [0, ", kMaxVocab, ")");
    RS_CHECK_ARG(vocab.emplace(it.key(), static_cast<int32_t>(id)).second,
                 "model.vocab: duplicate token '", it.key(), "'");
    max_id = std::max(max_id, static_cast<int32_t>(id));
  }
  id_to_token.assign(max_id + 1, std::string());
  std::vector<uint8_t> used(max_id + 1, 0);
  for (const auto& [tok, id] : vocab) {
    RS_CHECK_ARG(!used[id], "model.vocab: id ", id, " is used by two tokens, one is '", tok, "'");
    used[id] = 1;
    id_to_token[id] = tok;
  }

  if (const json* u = Field(model, "unk_token")) {
    RS_CHECK_ARG(u->is_string(), "model.unk_token must be a string or null");
    auto it = vocab.find(u->get<std::string>());
    RS_CHECK_ARG(it != vocab.end(), "model.unk_token '", u->get<std::string>(),
                 "' is not in model.vocab");
    unk = it->second;
  }

  const json* m = Field(model, "merges");
  if (m != nullptr) {
    RS_CHECK_ARG(m->is_array(), "model.merges must be an array");
    merges.reserve(m->size());
    int32_t rank = 0;
    for (const json& e : *m) {
      std::string a, b;
      if (e.is_string()) {
        const std::string s = e.get<std::string>();
        const size_t sp = s.find(' ');
        RS_CHECK_ARG(sp != std::string::npos && sp > 0 && sp + 1 < s.size() &&
                         s.find(' ', sp + 1) == std::string::npos,
                     "model.merges[", rank, "] = '", s, "' is not 'left right'");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        a = e[0].get<std::string>();
        b = e[1].get<std::string>();
      } else {
        return InvalidArgument(StrCat("model.merges[", rank, "] = ", e.dump(),
                                      " is neither 'left right' nor [left, right]"));
      }
      auto ia = vocab.find(a), ib = vocab.find(b), iab = vocab.find(a + b);
      RS_CHECK_ARG(ia != vocab.end() && ib != vocab.end(), "model.merges[", rank, "]: '", a,
                   "' or '", b, "' is not in model.vocab");
      RS_CHECK_ARG(iab != vocab.end(), "model.merges[", rank, "]: merged token '", a + b,
                   "' is not in model.vocab");
      // A repeated pair keeps its first (lowest) rank, as the reference implementations do.
      merges.emplace(PairKey(ia->second, ib->second), std::make_pair(rank, iab->second));
      ++rank;
    }
  }
  return OkStatus();
}

Status TokenizerImpl::ParseAddedTokens(const json& a) {
  RS_CHECK_ARG(a.is_array(), "added_tokens must be an array");
  for (size_t i = 0; i < a.size(); ++i) {
    const json& t = a[i];
    const std::string path = StrCat("added_tokens[", i, "]");
    RS_CHECK_ARG(t.is_object(), path, " must be an object");
    const json* id = Field(t, "id");
    RS_CHECK_ARG(id != nullptr && id->is_number_integer(), path, ".id must be an integer");
    const int64_t idv = id->get<int64_t>();
    RS_CHECK_ARG(idv >= 0 && idv < kMaxVocab, path, ".id = ", idv, " is outside [0, ", kMaxVocab,
                 ")");
    RS_ASSIGN_OR_RETURN(std::string content, GetString(t, "content", "", path));
    RS_CHECK_ARG(!content.empty(), path, ".content must be a non-empty string");
    AddedToken tok{static_cast<int32_t>(idv), content, false, false, false};
    RS_ASSIGN_OR_RETURN(tok.special, GetBool(t, "special", false, path));
    RS_ASSIGN_OR_RETURN(tok.lstrip, GetBool(t, "lstrip", false, path));
    RS_ASSIGN_OR_RETURN(tok.rstrip, GetBool(t, "rstrip", false, path));
    auto it = vocab.find(content);
    RS_CHECK_ARG(it == vocab.end() || it->second == tok.id, path, ": '", content, "' has id ",
                 tok.id, " but model.vocab gives it id ", it == vocab.end() ? -1 : it->second);
    if (static_cast<size_t>(tok.id) >= id_to_token.size()) id_to_token.resize(tok.id + 1);
    RS_CHECK_ARG(id_to_token[tok.id].empty() || id_to_token[tok.id] == content, path, ": id ",
                 tok.id, " is already the token '", id_to_token[tok.id], "'");
    RS_CHECK_ARG(std::none_of(added.begin(), added.end(),
                              [&](const AddedToken& o) { return o.content == content; }),
                 path, ": '", content, "' is listed twice");
    id_to_token[tok.id] = content;
    vocab[content] = tok.id;
    added.push_back(std::move(tok));
  }
  std::stable_sort(added.begin(), added.end(), [](const AddedToken& x, const AddedToken& y) {
    return x.content.size() > y.content.size();
  });
  for (size_t i = 0; i < added.size(); ++i) {
    added_at[static_cast<unsigned char>(added[i].content[0])].push_back(static_cast<int32_t>(i));
  }
  return OkStatus();
}

Status TokenizerImpl::ParseNormalizer(const json& n, std::string_view path) {
  RS_ASSIGN_OR_RETURN(std::string type, GetString(n, "type", "", path));
  if (type == "Sequence") {
    const json* list = Field(n, "normalizers");
    RS_CHECK_ARG(list != nullptr && list->is_array(), path, ".normalizers must be an array");
    for (size_t i = 0; i < list->size(); ++i) {
      RS_RETURN_IF_ERROR(ParseNormalizer((*list)[i], StrCat(path, ".normalizers[", i, "]")));
    }
    return OkStatus();
  }
  if (type == "Prepend") {
    RS_ASSIGN_OR_RETURN(std::string p, GetString(n, "prepend", "", path));
    normalizers.push_back({NormStep::kPrepend, p, nullptr});
    return OkStatus();
  }
  if (type == "Replace") {
    RS_ASSIGN_OR_RETURN(auto re, ParsePattern(n, path));
    RS_ASSIGN_OR_RETURN(std::string content, GetString(n, "content", "", path));
    normalizers.push_back({NormStep::kReplace, content, re});
    return OkStatus();
  }
  if (type == "NFC" || type == "NFKC") return OkStatus();  // see the header: not applied
  return InvalidArgument(StrCat(path, ".type: normalizer '", type, "' is not supported"));
}

Status TokenizerImpl::ParsePreTokenizer(const json& p, std::string_view path) {
  RS_ASSIGN_OR_RETURN(std::string type, GetString(p, "type", "", path));
  PreStep step;
  if (type == "Sequence") {
    const json* list = Field(p, "pretokenizers");
    RS_CHECK_ARG(list != nullptr && list->is_array(), path, ".pretokenizers must be an array");
    for (size_t i = 0; i < list->size(); ++i) {
      RS_RETURN_IF_ERROR(ParsePreTokenizer((*list)[i], StrCat(path, ".pretokenizers[", i, "]")));
    }
    return OkStatus();
  }
  if (type == "Split") {
    step.kind = PreStep::kSplit;
    RS_ASSIGN_OR_RETURN(step.re, ParsePattern(p, path));
    RS_ASSIGN_OR_RETURN(std::string behavior, GetString(p, "behavior", "Isolated", path));
    RS_ASSIGN_OR_RETURN(step.behavior, ParseBehavior(behavior, path));
    RS_ASSIGN_OR_RETURN(step.invert, GetBool(p, "invert", false, path));
  } else if (type == "ByteLevel") {
    step.kind = PreStep::kByteLevel;
    RS_ASSIGN_OR_RETURN(step.add_prefix_space, GetBool(p, "add_prefix_space", false, path));
    RS_ASSIGN_OR_RETURN(bool use_regex, GetBool(p, "use_regex", true, path));
    if (use_regex) {
      RS_ASSIGN_OR_RETURN(step.re, RegexSplitter::Compile(unicode::kGpt2Pattern, false));
    }
    byte_level = true;
  } else if (type == "Metaspace") {
    step.kind = PreStep::kMetaspace;
    RS_ASSIGN_OR_RETURN(step.replacement, GetString(p, "replacement", kSpaceMark, path));
    RS_CHECK_ARG(!step.replacement.empty(), path, ".replacement must not be empty");
    RS_ASSIGN_OR_RETURN(step.prepend, ParsePrependScheme(p, path));
    RS_ASSIGN_OR_RETURN(bool split, GetBool(p, "split", true, path));
    if (split) {
      RS_ASSIGN_OR_RETURN(step.re, RegexSplitter::Compile(step.replacement, true));
      step.behavior = SplitBehavior::kMergedWithNext;
    }
  } else if (type == "Digits") {
    step.kind = PreStep::kDigits;
    RS_ASSIGN_OR_RETURN(bool individual, GetBool(p, "individual_digits", false, path));
    RS_ASSIGN_OR_RETURN(step.re, RegexSplitter::Compile(R"(\p{N})", false));
    step.behavior = individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous;
  } else {
    return InvalidArgument(StrCat(path, ".type: pre_tokenizer '", type, "' is not supported"));
  }
  pre_tokenizers.push_back(std::move(step));
  return OkStatus();
}

Status TokenizerImpl::ParseDecoderStep(
    const json& d, std::string_view path,
    std::vector<std::function<std::string(const std::string&)>>* steps) {
  RS_ASSIGN_OR_RETURN(std::string type, GetString(d, "type", "", path));
  if (type == "Sequence") {
    const json* list = Field(d, "decoders");
    RS_CHECK_ARG(list != nullptr && list->is_array(), path, ".decoders must be an array");
    for (size_t i = 0; i < list->size(); ++i) {
      RS_RETURN_IF_ERROR(ParseDecoderStep((*list)[i], StrCat(path, ".decoders[", i, "]"), steps));
    }
  } else if (type == "ByteLevel") {
    steps->push_back([](const std::string& tok) {
      std::string out;
      size_t pos = 0;
      while (pos < tok.size()) {
        const size_t start = pos;
        const int32_t cp = unicode::DecodeUtf8(tok, &pos);
        const int b = cp < 0 ? -1 : unicode::CodepointToByte(static_cast<uint32_t>(cp));
        if (b >= 0) {
          out.push_back(static_cast<char>(b));
        } else {
          out.append(tok, start, pos - start);  // not a byte symbol: keep the text itself
        }
      }
      return out;
    });
  } else if (type == "Metaspace") {
    RS_ASSIGN_OR_RETURN(std::string rep, GetString(d, "replacement", kSpaceMark, path));
    RS_CHECK_ARG(!rep.empty(), path, ".replacement must not be empty");
    RS_ASSIGN_OR_RETURN(Prepend prepend, ParsePrependScheme(d, path));
    RS_ASSIGN_OR_RETURN(auto re, RegexSplitter::Compile(rep, true));
    steps->push_back([re](const std::string& tok) { return ReplaceAll(tok, *re, " "); });
    if (prepend != Prepend::kNever) strip_leading_space = true;
  } else if (type == "Replace") {
    RS_ASSIGN_OR_RETURN(auto re, ParsePattern(d, path));
    RS_ASSIGN_OR_RETURN(std::string content, GetString(d, "content", "", path));
    steps->push_back(
        [re, content](const std::string& tok) { return ReplaceAll(tok, *re, content); });
  } else if (type == "ByteFallback") {
    steps->push_back([](const std::string& tok) {
      auto hex = [](char c) {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
      };
      if (tok.size() == 6 && tok.compare(0, 3, "<0x") == 0 && tok[5] == '>' && hex(tok[3]) >= 0 &&
          hex(tok[4]) >= 0) {
        return std::string(1, static_cast<char>(hex(tok[3]) * 16 + hex(tok[4])));
      }
      return tok;
    });
  } else if (type == "Fuse") {
    // Tokens are concatenated anyway.
  } else if (type == "Strip") {
    RS_ASSIGN_OR_RETURN(std::string content, GetString(d, "content", " ", path));
    const json* start = Field(d, "start");
    const json* stop = Field(d, "stop");
    const int64_t nstart =
        start != nullptr && start->is_number_integer() ? start->get<int64_t>() : 0;
    const int64_t nstop = stop != nullptr && stop->is_number_integer() ? stop->get<int64_t>() : 0;
    RS_CHECK_ARG(content == " " && nstart <= 1 && nstop == 0, path,
                 ": only Strip(content=' ', start<=1, stop=0) is supported, got ", d.dump());
    if (nstart == 1) strip_leading_space = true;
  } else {
    return InvalidArgument(StrCat(path, ".type: decoder '", type, "' is not supported"));
  }
  return OkStatus();
}

Status TokenizerImpl::ParseDecoder(const json& d) {
  std::vector<std::function<std::string(const std::string&)>> steps;
  if (!d.is_null()) RS_RETURN_IF_ERROR(ParseDecoderStep(d, "decoder", &steps));
  id_bytes.assign(id_to_token.size(), std::string());
  for (size_t id = 0; id < id_to_token.size(); ++id) {
    std::string s = id_to_token[id];
    for (const auto& f : steps) s = f(s);
    id_bytes[id] = std::move(s);
  }
  special.assign(id_to_token.size(), 0);
  for (const AddedToken& t : added) {
    id_bytes[t.id] = t.content;  // added tokens decode to their text as written
    special[t.id] = t.special ? 1 : 0;
  }
  return OkStatus();
}

void TokenizerImpl::FindBosEos(const json* post) {
  auto special_id = [&](std::string_view name) -> std::optional<int32_t> {
    for (const AddedToken& t : added) {
      if (t.special && t.content == name) return t.id;
    }
    return std::nullopt;
  };
  // A TemplateProcessing post-processor that starts with a special token names the BOS.
  std::vector<const json*> procs;
  if (post != nullptr && post->is_object()) {
    procs.push_back(post);
    if (const json* list = Field(*post, "processors"); list != nullptr && list->is_array()) {
      for (const json& p : *list) procs.push_back(&p);
    }
  }
  for (const json* p : procs) {
    const json* single = Field(*p, "single");
    if (single == nullptr || !single->is_array() || single->empty()) continue;
    const json* st = Field((*single)[0], "SpecialToken");
    const json* id = st != nullptr ? Field(*st, "id") : nullptr;
    if (id != nullptr && id->is_string()) {
      auto it = vocab.find(id->get<std::string>());
      if (it != vocab.end()) bos = it->second;
    }
  }
  for (std::string_view name :
       {"<|begin_of_text|>", "<s>", "<|startoftext|>", "<bos>", "<|bos|>"}) {
    if (!bos) bos = special_id(name);
  }
  for (std::string_view name : {"<|end_of_text|>", "</s>", "<|endoftext|>", "<|im_end|>",
                                "<|eot_id|>", "<eos>", "<|eos|>"}) {
    if (!eos) eos = special_id(name);
  }
}

std::vector<int32_t> TokenizerImpl::Bpe(std::string_view piece) const {
  std::vector<int32_t> sym;
  sym.reserve(piece.size());
  auto push_unk = [&] {
    if (!unk) return;
    if (fuse_unk && !sym.empty() && sym.back() == *unk) return;
    sym.push_back(*unk);
  };
  if (byte_level) {
    if (ignore_merges) {
      auto it = vocab.find(unicode::BytesToVocabString(piece));
      if (it != vocab.end()) return {it->second};
    }
    for (unsigned char b : piece) {
      if (byte_ids[b] >= 0) {
        sym.push_back(byte_ids[b]);
      } else {
        push_unk();
      }
    }
  } else {
    if (ignore_merges) {
      auto it = vocab.find(std::string(piece));
      if (it != vocab.end()) return {it->second};
    }
    std::string ch;
    for (size_t pos = 0; pos < piece.size();) {
      const size_t len = unicode::Utf8CharLen(piece, pos);
      ch.assign(piece.substr(pos, len));
      auto it = vocab.find(ch);
      bool fallback_ok = byte_fallback;
      for (size_t i = 0; fallback_ok && i < len; ++i) {
        fallback_ok = byte_ids[static_cast<unsigned char>(ch[i])] >= 0;
      }
      if (it != vocab.end()) {
        sym.push_back(it->second);
      } else if (fallback_ok) {
        for (unsigned char b : ch) sym.push_back(byte_ids[b]);
      } else {
        push_unk();
      }
      pos += len;
    }
  }
  const int n = static_cast<int>(sym.size());
  if (n < 2 || merges.empty()) return sym;
  if (n <= kShortPiece) {
    // Short pieces (most words): rescanning the pairs beats a heap (same result: lowest rank,
    // leftmost among equal ranks).
    while (sym.size() > 1) {
      size_t best = 0;
      int32_t best_rank = -1, merged = -1;
      for (size_t i = 0; i + 1 < sym.size(); ++i) {
        auto it = merges.find(PairKey(sym[i], sym[i + 1]));
        if (it != merges.end() && (best_rank < 0 || it->second.first < best_rank)) {
          best = i;
          best_rank = it->second.first;
          merged = it->second.second;
        }
      }
      if (best_rank < 0) break;
      sym[best] = merged;
      sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(best) + 1);
    }
    return sym;
  }

  // Lowest rank first, leftmost first among equal ranks; a linked list over `sym` so a merge is
  // O(log n). Stale heap entries are recognised by the ids they recorded.
  struct Cand {
    int32_t rank, pos, left, right;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<int32_t> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto consider = [&](int i) {
    if (i < 0 || next[i] < 0) return;
    auto it = merges.find(PairKey(sym[i], sym[next[i]]));
    if (it != merges.end()) heap.push({it->second.first, i, sym[i], sym[next[i]]});
  };
  for (int i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    const int j = next[c.pos];
    if (sym[c.pos] != c.left || j < 0 || sym[j] != c.right) continue;
    sym[c.pos] = merges.find(PairKey(c.left, c.right))->second.second;
    sym[j] = -1;
    next[c.pos] = next[j];
    if (next[j] >= 0) prev[next[j]] = c.pos;
    consider(prev[c.pos]);
    consider(c.pos);
  }
  std::vector<int32_t> out;
  out.reserve(n);
  for (int i = 0; i >= 0; i = next[i]) out.push_back(sym[i]);
  return out;
}

void TokenizerImpl::EncodePiece(std::string_view piece, std::vector<int32_t>* out) const {
  if (piece.empty()) return;
  const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
  if (cacheable) {
    MutexLock lock(cache_mu);
    auto it = cache.find(piece);
    if (it != cache.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids = Bpe(piece);
  out->insert(out->end(), ids.begin(), ids.end());
  if (cacheable) {
    MutexLock lock(cache_mu);
    if (cache.size() >= kMaxCacheEntries) cache.clear();
    cache.emplace(std::string(piece), std::move(ids));
  }
}

void TokenizerImpl::EncodeSegment(std::string_view text, bool is_first,
                                  std::vector<int32_t>* out) const {
  if (text.empty()) return;
  if (views_only) {  // GPT-2 / Llama-3 / Qwen2: regex splits only, no copies of the text
    std::vector<std::string_view> pieces{text}, next;
    for (const PreStep& p : pre_tokenizers) {
      if (p.re == nullptr) continue;
      next.clear();
      for (std::string_view s : pieces) {
        for (std::string_view v : p.re->Split(s, p.behavior, p.invert)) next.push_back(v);
      }
      pieces.swap(next);
    }
    for (std::string_view piece : pieces) EncodePiece(piece, out);
    return;
  }
  std::string normalized(text);
  for (const NormStep& n : normalizers) {
    if (n.kind == NormStep::kPrepend) {
      if (!normalized.empty()) normalized.insert(0, n.text);
    } else {
      normalized = ReplaceAll(normalized, *n.re, n.text);
    }
  }
  std::vector<std::string> pieces{std::move(normalized)};
  for (const PreStep& p : pre_tokenizers) {
    std::vector<std::string> next;
    for (size_t i = 0; i < pieces.size(); ++i) {
      std::string s = std::move(pieces[i]);
      if (p.kind == PreStep::kByteLevel && p.add_prefix_space && !s.empty() && s[0] != ' ') {
        s.insert(0, " ");
      }
      if (p.kind == PreStep::kMetaspace) {
        std::string replaced;
        for (char c : s) {
          if (c == ' ') {
            replaced += p.replacement;
          } else {
            replaced.push_back(c);
          }
        }
        s = std::move(replaced);
        const bool prepend =
            p.prepend == Prepend::kAlways || (p.prepend == Prepend::kFirst && is_first && i == 0);
        if (prepend && s.compare(0, p.replacement.size(), p.replacement) != 0) {
          s.insert(0, p.replacement);
        }
      }
      if (p.re == nullptr) {
        if (!s.empty()) next.push_back(std::move(s));
        continue;
      }
      for (std::string_view v : p.re->Split(s, p.behavior, p.invert)) next.emplace_back(v);
    }
    pieces = std::move(next);
  }
  for (const std::string& piece : pieces) EncodePiece(piece, out);
}

Tokenizer::Tokenizer(std::unique_ptr<TokenizerImpl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(StrCat("cannot read tokenizer file '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  auto tok = FromJson(ss.str());
  if (!tok.ok()) return Annotate(tok.status(), path);
  return tok;
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view text) {
  auto impl = std::make_unique<TokenizerImpl>();
  auto load = [&]() -> Status {
    json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
    RS_CHECK_ARG(!doc.is_discarded(), "not valid JSON");
    RS_CHECK_ARG(doc.is_object(), "the document must be a JSON object");
    const json* model = Field(doc, "model");
    RS_CHECK_ARG(model != nullptr, "missing \"model\"");
    RS_RETURN_IF_ERROR(impl->ParseModel(*model));
    if (const json* a = Field(doc, "added_tokens")) RS_RETURN_IF_ERROR(impl->ParseAddedTokens(*a));
    if (const json* n = Field(doc, "normalizer")) {
      RS_RETURN_IF_ERROR(impl->ParseNormalizer(*n, "normalizer"));
    }
    if (const json* p = Field(doc, "pre_tokenizer")) {
      RS_RETURN_IF_ERROR(impl->ParsePreTokenizer(*p, "pre_tokenizer"));
    }
    const json* d = Field(doc, "decoder");
    RS_RETURN_IF_ERROR(impl->ParseDecoder(d != nullptr ? *d : json()));
    impl->FindBosEos(Field(doc, "post_processor"));
    impl->views_only =
        impl->normalizers.empty() &&
        std::all_of(impl->pre_tokenizers.begin(), impl->pre_tokenizers.end(), [](const PreStep& p) {
          return p.kind != PreStep::kMetaspace &&
                 !(p.kind == PreStep::kByteLevel && p.add_prefix_space);
        });
    for (int b = 0; b < 256; ++b) {
      const std::string spelling =
          impl->byte_level ? unicode::BytesToVocabString(std::string(1, static_cast<char>(b)))
                           : ByteFallbackToken(b);
      auto it = impl->vocab.find(spelling);
      impl->byte_ids[b] = it != impl->vocab.end() ? it->second : -1;
    }
    RS_CHECK_ARG(!impl->id_to_token.empty(), "the vocab is empty");
    return OkStatus();
  };
  Status s;
  try {
    s = load();
  } catch (const std::exception& e) {  // nlohmann::json type errors; should not happen
    s = InvalidArgument(e.what());
  }
  if (!s.ok()) return Annotate(s, "tokenizer.json");
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_bos,
                                       bool allow_special) const {
  const TokenizerImpl& t = *impl_;
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (add_bos && t.bos) ids.push_back(*t.bos);
  size_t seg_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    const AddedToken* hit = nullptr;
    for (int32_t k : t.added_at[static_cast<unsigned char>(text[pos])]) {
      const AddedToken& a = t.added[k];
      if ((!a.special || allow_special) && text.compare(pos, a.content.size(), a.content) == 0) {
        hit = &a;
        break;
      }
    }
    if (hit == nullptr) {
      ++pos;
      continue;
    }
    size_t seg_end = pos;
    if (hit->lstrip) {
      while (seg_end > seg_start && IsAsciiSpace(text[seg_end - 1])) --seg_end;
    }
    t.EncodeSegment(text.substr(seg_start, seg_end - seg_start), seg_start == 0, &ids);
    ids.push_back(hit->id);
    pos += hit->content.size();
    if (hit->rstrip) {
      while (pos < text.size() && IsAsciiSpace(text[pos])) ++pos;
    }
    seg_start = pos;
  }
  t.EncodeSegment(text.substr(seg_start), seg_start == 0, &ids);
  return ids;
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special) const {
  const TokenizerImpl& t = *impl_;
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || (skip_special && t.special[id])) continue;
    out += t.id_bytes[id];
  }
  if (t.strip_leading_space && !out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_to_token.size()); }

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  auto it = impl_->vocab.find(std::string(token));
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

std::string Tokenizer::IdToToken(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return std::string();
  return impl_->id_to_token[id];
}

std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->special[id] != 0;
}

Tokenizer::StreamDecoder::StreamDecoder(const Tokenizer& tokenizer) : tok_(tokenizer) {}

std::string Tokenizer::StreamDecoder::Push(int32_t id) {
  const TokenizerImpl& t = *tok_.impl_;
  if (id < 0 || id >= tok_.vocab_size() || t.special[id]) return std::string();
  pending_ += t.id_bytes[id];
  if (!started_ && !pending_.empty()) {
    started_ = true;
    if (t.strip_leading_space && pending_[0] == ' ') pending_.erase(0, 1);
  }
  const size_t keep = unicode::IncompleteUtf8Tail(pending_);
  std::string out = pending_.substr(0, pending_.size() - keep);
  pending_.erase(0, pending_.size() - keep);
  return out;
}

std::string Tokenizer::StreamDecoder::Flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace ragserve::engine
