#include "services/engine/wordpiece.h"

#include <utf8proc.h>

#include <algorithm>
#include <exception>
#include <fstream>
#include <sstream>

#include "nlohmann/json.hpp"
#include "services/common/utf8.h"

namespace ragserve::engine {
namespace {

using nlohmann::json;

// Token ids above this are rejected (no real vocabulary comes near; bounds the embedding table).
constexpr int64_t kMaxTokenId = int64_t{1} << 24;

bool IsOther(int32_t cp) {
  switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
      return true;
    default:
      return false;
  }
}

// Rust's char::is_whitespace (the White_Space property), which the Hugging Face code uses.
bool IsWhitespace(int32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

bool IsChineseChar(int32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
         (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
         (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B920 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

bool IsPunctuation(int32_t cp) {
  if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) ||
      (cp >= 123 && cp <= 126)) {
    return true;
  }
  switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_PC:
    case UTF8PROC_CATEGORY_PD:
    case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI:
    case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO:
      return true;
    default:
      return false;
  }
}

// Code points of `text`; an invalid or truncated sequence becomes one U+FFFD per byte.
std::vector<int32_t> Decode(std::string_view text) {
  std::vector<int32_t> out;
  out.reserve(text.size());
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(text.size());
  while (left > 0) {
    utf8proc_int32_t cp = 0;
    utf8proc_ssize_t n = utf8proc_iterate(p, left, &cp);
    if (n <= 0) {
      cp = 0xFFFD;
      n = 1;
    }
    out.push_back(cp);
    p += n;
    left -= n;
  }
  return out;
}

StatusOr<bool> OptBool(const json& j, const char* key, bool def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_boolean()) {
    return InvalidArgument(StrCat("tokenizer.json: normalizer \"", key, "\" must be a boolean"));
  }
  return it->get<bool>();
}

// The id of a post-processor entry ["[CLS]", 101] (BertProcessing), or -1 when absent.
int64_t ProcessorId(const json& pp, const char* key) {
  auto it = pp.find(key);
  if (it == pp.end() || !it->is_array() || it->size() != 2 || !(*it)[1].is_number_integer()) {
    return -1;
  }
  return (*it)[1].get<int64_t>();
}

}  // namespace

StatusOr<std::unique_ptr<WordPieceTokenizer>> WordPieceTokenizer::FromJson(
    std::string_view json_text) {
  json doc = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return InvalidArgument("tokenizer.json: not a JSON object");
  }
  std::unique_ptr<WordPieceTokenizer> t(new WordPieceTokenizer());
  try {
    WordPieceOptions& o = t->opts_;
    auto norm = doc.find("normalizer");
    if (norm == doc.end() || norm->is_null()) {
      o.clean_text = o.handle_chinese_chars = o.strip_accents = o.lowercase = false;
    } else {
      if (!norm->is_object() || !norm->contains("type") || (*norm)["type"] != "BertNormalizer") {
        return InvalidArgument(
            "tokenizer.json: unsupported normalizer for a WordPiece encoder (supported: "
            "BertNormalizer or none)");
      }
      RS_ASSIGN_OR_RETURN(o.clean_text, OptBool(*norm, "clean_text", true));
      RS_ASSIGN_OR_RETURN(o.handle_chinese_chars, OptBool(*norm, "handle_chinese_chars", true));
      RS_ASSIGN_OR_RETURN(o.lowercase, OptBool(*norm, "lowercase", true));
      RS_ASSIGN_OR_RETURN(o.strip_accents, OptBool(*norm, "strip_accents", o.lowercase));
    }
    auto pre = doc.find("pre_tokenizer");
    if (pre != doc.end() && !pre->is_null() &&
        (!pre->is_object() || !pre->contains("type") || (*pre)["type"] != "BertPreTokenizer")) {
      return InvalidArgument(
          "tokenizer.json: unsupported pre_tokenizer for a WordPiece encoder (supported: "
          "BertPreTokenizer)");
    }
    auto model = doc.find("model");
    if (model == doc.end() || !model->is_object()) {
      return InvalidArgument("tokenizer.json: missing \"model\" object");
    }
    auto type = model->find("type");
    if (type == model->end() || !type->is_string() || *type != "WordPiece") {
      return InvalidArgument(StrCat("tokenizer.json: model type is ",
                                    type == model->end() ? std::string("missing") : type->dump(),
                                    ", a BERT encoder needs \"WordPiece\""));
    }
    auto vocab = model->find("vocab");
    if (vocab == model->end() || !vocab->is_object() || vocab->empty()) {
      return InvalidArgument("tokenizer.json: WordPiece model has no vocab object");
    }
    std::vector<bool> used;
    for (auto it = vocab->begin(); it != vocab->end(); ++it) {
      if (!it.value().is_number_integer()) {
        return InvalidArgument(
            StrCat("tokenizer.json: vocab entry \"", it.key(), "\" is not an integer id"));
      }
      const int64_t id = it.value().get<int64_t>();
      if (id < 0 || id >= kMaxTokenId) {
        return InvalidArgument(StrCat("tokenizer.json: vocab entry \"", it.key(), "\" has id ",
                                      it.value().dump(), " outside [0, ", kMaxTokenId, ")"));
      }
      if (static_cast<size_t>(id) >= used.size()) used.resize(id + 1, false);
      if (used[id]) return InvalidArgument(StrCat("tokenizer.json: vocab id ", id, " repeats"));
      used[id] = true;
      t->vocab_.emplace(it.key(), static_cast<int32_t>(id));
      t->id_limit_ = std::max<int32_t>(t->id_limit_, static_cast<int32_t>(id + 1));
    }
    auto prefix = model->find("continuing_subword_prefix");
    if (prefix != model->end() && !prefix->is_null()) {
      if (!prefix->is_string()) {
        return InvalidArgument("tokenizer.json: continuing_subword_prefix is not a string");
      }
      o.continuing_prefix = prefix->get<std::string>();
    }
    auto maxc = model->find("max_input_chars_per_word");
    if (maxc != model->end() && !maxc->is_null()) {
      if (!maxc->is_number_integer() || maxc->get<int64_t>() < 1 ||
          maxc->get<int64_t>() > 1000000) {
        return InvalidArgument("tokenizer.json: max_input_chars_per_word out of range");
      }
      o.max_input_chars_per_word = static_cast<int>(maxc->get<int64_t>());
    }
    std::string unk = "[UNK]";
    auto unk_it = model->find("unk_token");
    if (unk_it != model->end() && unk_it->is_string()) unk = unk_it->get<std::string>();
    auto find = [&](const std::string& tok) -> int32_t {
      auto f = t->vocab_.find(tok);
      return f == t->vocab_.end() ? -1 : f->second;
    };
    t->unk_id_ = find(unk);
    t->cls_id_ = find("[CLS]");
    t->sep_id_ = find("[SEP]");
    auto pp = doc.find("post_processor");
    if (pp != doc.end() && pp->is_object() && pp->value("type", "") == "BertProcessing") {
      const int64_t c = ProcessorId(*pp, "cls"), s = ProcessorId(*pp, "sep");
      if (c >= 0 && c < t->id_limit_) t->cls_id_ = static_cast<int32_t>(c);
      if (s >= 0 && s < t->id_limit_) t->sep_id_ = static_cast<int32_t>(s);
    }
    if (t->unk_id_ < 0) {
      return InvalidArgument(StrCat("tokenizer.json: unk token \"", unk, "\" not in the vocab"));
    }
    if (t->cls_id_ < 0 || t->sep_id_ < 0) {
      return InvalidArgument("tokenizer.json: [CLS] or [SEP] not in the vocab");
    }
    auto trunc = doc.find("truncation");
    if (trunc != doc.end() && trunc->is_object()) {
      auto ml = trunc->find("max_length");
      if (ml != trunc->end() && ml->is_number_integer() && ml->get<int64_t>() >= 2 &&
          ml->get<int64_t>() <= (int64_t{1} << 20)) {
        o.truncation_max_length = static_cast<int>(ml->get<int64_t>());
      }
    }
  } catch (const std::exception& e) {  // nlohmann type errors; the checks above should prevent them
    return InvalidArgument(StrCat("tokenizer.json: ", e.what()));
  }
  return t;
}

StatusOr<std::unique_ptr<WordPieceTokenizer>> WordPieceTokenizer::Load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return NotFound(StrCat("cannot read tokenizer file ", path));
  std::stringstream ss;
  ss << f.rdbuf();
  auto t = FromJson(ss.str());
  if (!t.ok()) return Annotate(t.status(), path);
  return t;
}

std::vector<std::string> WordPieceTokenizer::Words(std::string_view text) const {
  std::vector<int32_t> cps = Decode(text);
  // BertNormalizer.
  std::vector<int32_t> norm;
  norm.reserve(cps.size() + 8);
  for (int32_t cp : cps) {
    if (opts_.clean_text) {
      const bool tnr = cp == '\t' || cp == '\n' || cp == '\r';
      if (cp == 0 || cp == 0xFFFD || (!tnr && IsOther(cp))) continue;
      if (IsWhitespace(cp)) cp = ' ';
    }
    if (opts_.handle_chinese_chars && IsChineseChar(cp)) {
      norm.push_back(' ');
      norm.push_back(cp);
      norm.push_back(' ');
      continue;
    }
    norm.push_back(cp);
  }
  if (opts_.strip_accents) {
    std::vector<int32_t> stripped;
    stripped.reserve(norm.size());
    utf8proc_int32_t buf[32];
    for (int32_t cp : norm) {
      int last = 0;
      const utf8proc_ssize_t n = utf8proc_decompose_char(cp, buf, 32, UTF8PROC_DECOMPOSE, &last);
      if (n < 0 || n > 32) {
        stripped.push_back(cp);
        continue;
      }
      for (utf8proc_ssize_t i = 0; i < n; ++i) {
        if (utf8proc_category(buf[i]) != UTF8PROC_CATEGORY_MN) stripped.push_back(buf[i]);
      }
    }
    norm.swap(stripped);
  }
  if (opts_.lowercase) {
    for (int32_t& cp : norm) cp = utf8proc_tolower(cp);
  }
  // BertPreTokenizer.
  std::vector<std::string> words;
  std::string cur;
  auto flush = [&] {
    if (!cur.empty()) words.push_back(std::move(cur));
    cur.clear();
  };
  for (int32_t cp : norm) {
    if (IsWhitespace(cp)) {
      flush();
    } else if (IsPunctuation(cp)) {
      flush();
      AppendUtf8(static_cast<uint32_t>(cp), &cur);
      flush();
    } else {
      AppendUtf8(static_cast<uint32_t>(cp), &cur);
    }
  }
  flush();
  return words;
}

void WordPieceTokenizer::AppendWordIds(const std::string& word, std::vector<int32_t>* out) const {
  // Byte offsets of the character boundaries (the words are valid UTF-8 by construction).
  std::vector<size_t> bounds;
  for (size_t i = 0; i < word.size(); ++i) {
    if ((static_cast<uint8_t>(word[i]) & 0xC0) != 0x80) bounds.push_back(i);
  }
  const size_t nchars = bounds.size();
  bounds.push_back(word.size());
  if (nchars > static_cast<size_t>(opts_.max_input_chars_per_word)) {
    out->push_back(unk_id_);
    return;
  }
  const size_t mark = out->size();
  size_t start = 0;
  std::string piece;
  while (start < nchars) {
    int32_t found = -1;
    size_t end = nchars;
    for (; end > start; --end) {
      piece.clear();
      if (start > 0) piece = opts_.continuing_prefix;
      piece.append(word, bounds[start], bounds[end] - bounds[start]);
      auto it = vocab_.find(piece);
      if (it != vocab_.end()) {
        found = it->second;
        break;
      }
    }
    if (found < 0) {
      out->resize(mark);
      out->push_back(unk_id_);
      return;
    }
    out->push_back(found);
    start = end;
  }
}

std::vector<int32_t> WordPieceTokenizer::Encode(std::string_view text, int max_len) const {
  std::vector<int32_t> ids{cls_id_};
  const size_t cap = static_cast<size_t>(std::max(2, max_len)) - 1;  // room for [SEP]
  for (const std::string& w : Words(text)) {
    if (ids.size() >= cap) break;
    AppendWordIds(w, &ids);
  }
  if (ids.size() > cap) ids.resize(cap);
  ids.push_back(sep_id_);
  return ids;
}

}  // namespace ragserve::engine
