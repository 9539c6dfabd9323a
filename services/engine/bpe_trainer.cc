#include "services/engine/bpe_trainer.h"

#include <algorithm>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "services/engine/unicode.h"

namespace ragserve::engine {
namespace {

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

struct HeapEntry {
  int64_t count;
  uint64_t key;
  // Max-heap on count; among equal counts the smallest pair of ids wins.
  bool operator<(const HeapEntry& o) const {
    return count != o.count ? count < o.count : key > o.key;
  }
};

}  // namespace

StatusOr<std::string> TrainByteLevelBpe(const std::vector<std::string>& texts, int vocab_size,
                                        const std::vector<std::string>& special_tokens) {
  const int n_special = static_cast<int>(special_tokens.size());
  RS_CHECK_ARG(vocab_size >= 256 + n_special && vocab_size <= 1000000, "vocab_size ", vocab_size,
               " must be in [256 + ", n_special, " special tokens, 1000000]");
  std::unordered_set<std::string> seen;
  for (const std::string& s : special_tokens) {
    RS_CHECK_ARG(!s.empty(), "special tokens must not be empty");
    RS_CHECK_ARG(seen.insert(s).second, "special token '", s, "' is listed twice");
  }
  RS_ASSIGN_OR_RETURN(auto splitter,
                      unicode::RegexSplitter::Compile(unicode::kLlama3Pattern, false));

  // Words (pre-tokens) with their frequencies, in a fixed order.
  std::unordered_map<std::string, int64_t> counts;
  for (const std::string& text : texts) {
    for (std::string_view w : splitter->Split(text, unicode::SplitBehavior::kIsolated)) {
      ++counts[std::string(w)];
    }
  }
  std::vector<std::pair<std::string, int64_t>> words(counts.begin(), counts.end());
  std::sort(words.begin(), words.end());
  counts.clear();

  // Trainer ids: 0..255 bytes, then merged tokens; the document shifts them by n_special.
  std::vector<std::string> spelling(256);
  std::unordered_map<std::string, int32_t> spelling_id;
  for (int b = 0; b < 256; ++b) {
    spelling[b] = unicode::BytesToVocabString(std::string(1, static_cast<char>(b)));
    spelling_id[spelling[b]] = b;
  }
  std::vector<std::vector<int32_t>> syms(words.size());
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;  // pair -> words that may hold it
  for (size_t w = 0; w < words.size(); ++w) {
    for (unsigned char b : words[w].first) syms[w].push_back(b);
    for (size_t i = 0; i + 1 < syms[w].size(); ++i) {
      const uint64_t k = PairKey(syms[w][i], syms[w][i + 1]);
      pair_count[k] += words[w].second;
      where[k].push_back(static_cast<int32_t>(w));
    }
  }
  std::priority_queue<HeapEntry> heap;
  for (const auto& [k, c] : pair_count) heap.push({c, k});

  const int32_t target_tokens = vocab_size - n_special;
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<uint64_t> changed;
  while (static_cast<int32_t>(spelling.size()) < target_tokens && !heap.empty()) {
    const HeapEntry top = heap.top();
    heap.pop();
    auto pc = pair_count.find(top.key);
    if (pc == pair_count.end() || pc->second != top.count || top.count <= 0) continue;  // stale
    const int32_t a = static_cast<int32_t>(top.key >> 32);
    const int32_t b = static_cast<int32_t>(top.key & 0xFFFFFFFFu);
    // Two merge paths can spell the same token ("ab"+"c", "a"+"bc"): they share one id.
    const std::string merged = spelling[a] + spelling[b];
    int32_t c;
    if (auto it = spelling_id.find(merged); it != spelling_id.end()) {
      c = it->second;
    } else {
      c = static_cast<int32_t>(spelling.size());
      spelling.push_back(merged);
      spelling_id.emplace(merged, c);
    }
    merges.emplace_back(a, b);

    std::vector<int32_t> affected = std::move(where[top.key]);
    where.erase(top.key);
    std::sort(affected.begin(), affected.end());
    affected.erase(std::unique(affected.begin(), affected.end()), affected.end());
    changed.clear();
    std::vector<int32_t> ns;
    for (int32_t w : affected) {
      std::vector<int32_t>& s = syms[w];
      const int64_t f = words[w].second;
      bool has = false;
      for (size_t i = 0; i + 1 < s.size() && !has; ++i) has = s[i] == a && s[i + 1] == b;
      if (!has) continue;
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const uint64_t k = PairKey(s[i], s[i + 1]);
        pair_count[k] -= f;
        changed.push_back(k);
      }
      ns.clear();
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          ns.push_back(c);
          i += 2;
        } else {
          ns.push_back(s[i]);
          ++i;
        }
      }
      for (size_t i = 0; i + 1 < ns.size(); ++i) {
        const uint64_t k = PairKey(ns[i], ns[i + 1]);
        pair_count[k] += f;
        changed.push_back(k);
        if (ns[i] == c || ns[i + 1] == c) where[k].push_back(w);
      }
      s.swap(ns);
    }
    std::sort(changed.begin(), changed.end());
    changed.erase(std::unique(changed.begin(), changed.end()), changed.end());
    for (uint64_t k : changed) {
      auto it = pair_count.find(k);
      if (it->second > 0) {
        heap.push({it->second, k});
      } else {
        pair_count.erase(it);
        where.erase(k);
      }
    }
  }

  using ojson = nlohmann::ordered_json;
  ojson added = ojson::array();
  for (int i = 0; i < n_special; ++i) {
    added.push_back({{"id", i},
                     {"content", special_tokens[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  ojson vocab = ojson::object();
  for (size_t id = 0; id < spelling.size(); ++id) {
    vocab[spelling[id]] = static_cast<int64_t>(id) + n_special;
  }
  ojson merge_list = ojson::array();
  for (auto [a, b] : merges) merge_list.push_back(spelling[a] + " " + spelling[b]);
  ojson byte_level = {{"type", "ByteLevel"},
                      {"add_prefix_space", false},
                      {"trim_offsets", true},
                      {"use_regex", false}};
  ojson doc = {{"version", "1.0"},
               {"truncation", nullptr},
               {"padding", nullptr},
               {"added_tokens", added},
               {"normalizer", nullptr},
               {"pre_tokenizer",
                {{"type", "Sequence"},
                 {"pretokenizers",
                  ojson::array({{{"type", "Split"},
                                 {"pattern", {{"Regex", std::string(unicode::kLlama3Pattern)}}},
                                 {"behavior", "Isolated"},
                                 {"invert", false}},
                                byte_level})}}},
               {"post_processor", byte_level},
               {"decoder", byte_level},
               {"model",
                {{"type", "BPE"},
                 {"dropout", nullptr},
                 {"unk_token", nullptr},
                 {"continuing_subword_prefix", nullptr},
                 {"end_of_word_suffix", nullptr},
                 {"fuse_unk", false},
                 {"byte_fallback", false},
                 {"ignore_merges", false},
                 {"vocab", vocab},
                 {"merges", merge_list}}}};
  return doc.dump(1);
}

}  // namespace ragserve::engine
