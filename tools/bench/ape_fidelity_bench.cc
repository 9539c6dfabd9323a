// ape_fidelity_bench: how close APE parallel encoding stays to sequential prefill on a trained
// reader model, over a file of RAG items, for a list of (temperature T, scaling S) pairs.
//
// Each item ({"passages": [...], "question": ..., "answer": ...}, one JSON object a line; written
// by tools/bench/make_ape_items.py) is laid out exactly as services/common/rag_template.h says:
//   BOS + kRagPrefix + passage_1 + "\n\n" + ... + "Question: <q>\nAnswer:"
// and run through the engine in these variants:
//   (a) sequential: the whole prompt tokenized and prefilled as one causal sequence (what a
//       decoder does with --context-mode sequential); greedy answer of up to --answer-tokens
//       tokens, stopping at EOS. The reference.
//   (b) APE at each --ts pair: the decoders' path (--context-mode ape): every passage encoded on
//       its own after the shared prefix by ctxcache::ApeEncoder (RAM cache, f32), the question
//       prefilled after the longest passage through engine::ApeKvSource(T, S). T = S = 1 is plain
//       parallel encoding.
//   (c) no passages: BOS + kRagPrefix + question, prefilled sequentially (what the model knows
//       without the passages; calibrates the KL scale).
// Per variant: (a)'s greedy answer (EOS included when (a) stopped) is teacher-forced through the
// variant; per answer step KL(p_seq || p_variant) in nats (mean over all steps of all items, and
// the max) and top-1 agreement (the variant's argmax equals (a)'s token). The variant's own greedy
// answer: exact match (stripped text == stripped gold answer) and contains (gold answer appears in
// the text) -> accuracy, and greedy agreement = the share of items whose answer is token for token
// (a)'s. Deterministic (greedy, f32): reruns give the same numbers.
//
//   usage: ape_fidelity_bench --items FILE [--model data/models/reader]
//            [--ts T:S,1:1] [--answer-tokens 16] [--max-items 0] [--prefill-chunk 256]
//            [--json FILE] [--verbose]
//   Run with OMP_NUM_THREADS=1 on a shared machine (one sequence at a time).
#include <nlohmann/json.hpp>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "services/common/rag_template.h"
#include "services/ctxcache/ape_encoder.h"
#include "services/ctxcache/block_cache.h"
#include "services/ctxcache/cache_key.h"
#include "services/engine/model.h"
#include "services/engine/sampling.h"
#include "services/engine/tokenizer.h"
#include "tools/bench/bench_util.h"

namespace {

using ragserve::Status;
using ragserve::StatusOr;
namespace ctxcache = ragserve::ctxcache;
namespace engine = ragserve::engine;
using json = nlohmann::json;

using ragserve::bench::Must;

struct Item {
  std::vector<std::string> passages;
  std::string question, answer;
};

std::vector<Item> ReadItems(const std::string& path, int max_items) {
  std::ifstream f(path);
  if (!f) {
    std::fprintf(stderr, "--items %s: cannot read\n", path.c_str());
    std::exit(2);
  }
  std::vector<Item> items;
  int line_no = 0;
  for (std::string line; std::getline(f, line);) {
    ++line_no;
    if (line.empty()) continue;
    if (max_items > 0 && static_cast<int>(items.size()) >= max_items) break;
    try {
      const json j = json::parse(line);
      Item it;
      it.passages = j.at("passages").get<std::vector<std::string>>();
      it.question = j.at("question").get<std::string>();
      it.answer = j.at("answer").get<std::string>();
      items.push_back(std::move(it));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "--items %s:%d: %s\n", path.c_str(), line_no, e.what());
      std::exit(2);
    }
  }
  return items;
}

// "0.9:0.9,1:1" -> {{0.9, 0.9}, {1, 1}}; exits naming the bad entry.
std::vector<std::pair<float, float>> ParseTs(const std::string& s) {
  std::vector<std::pair<float, float>> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) {
    if (item.empty()) continue;
    float t = 0, sc = 0;
    char extra = 0;
    if (std::sscanf(item.c_str(), "%f:%f%c", &t, &sc, &extra) != 2 || !(t > 0 && t <= 4) ||
        !(sc > 0 && sc <= 4)) {
      std::fprintf(stderr, "--ts: '%s' is not T:S with both in (0, 4]\n", item.c_str());
      std::exit(2);
    }
    out.emplace_back(t, sc);
  }
  return out;
}

std::string Strip(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\n\r");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t\n\r");
  return s.substr(b, e - b + 1);
}

// The logits of each answer step of one decode: steps[i] predicts answer token i.
struct Run {
  std::vector<std::vector<float>> steps;
  std::vector<int32_t> tokens;  // the fed (forced) or chosen (greedy) answer tokens
};

class Decoder {
 public:
  Decoder(engine::Model* model, std::vector<int32_t> eos, int answer_tokens, int chunk)
      : m_(model), eos_(std::move(eos)), max_(answer_tokens), chunk_(chunk) {}

  // Prefills `prompt` at positions start.. through kv, then either feeds `forced` (teacher
  // forcing: one step per forced token) or, when forced is null, its own greedy tokens until EOS
  // or answer_tokens.
  Run Decode(engine::KvSource* kv, const std::vector<int32_t>& prompt, int32_t start,
             const std::vector<int32_t>* forced) const {
    std::vector<float> logits;
    CHECK_OK(m_->Prefill(prompt, start, kv, chunk_, &logits));
    int32_t pos = start + static_cast<int32_t>(prompt.size());
    Run r;
    const int steps = forced ? static_cast<int>(forced->size()) : max_;
    for (int i = 0; i < steps; ++i) {
      r.steps.push_back(logits);
      const int32_t next = forced ? (*forced)[i] : engine::ArgMax(logits);
      r.tokens.push_back(next);
      if (i + 1 == steps || (!forced && IsEos(next))) break;
      engine::SequenceStep st{std::span<const int32_t>(&next, 1), pos++, kv};
      CHECK_OK(m_->Forward(std::span<const engine::SequenceStep>(&st, 1), engine::LogitsMode::kLast,
                           &logits));
    }
    return r;
  }

  bool IsEos(int32_t id) const { return std::find(eos_.begin(), eos_.end(), id) != eos_.end(); }
  // The answer tokens without a final EOS.
  std::vector<int32_t> Text(const std::vector<int32_t>& t) const {
    std::vector<int32_t> out = t;
    if (!out.empty() && IsEos(out.back())) out.pop_back();
    return out;
  }

 private:
  engine::Model* m_;
  std::vector<int32_t> eos_;
  int max_, chunk_;
};

// Sums over items for one variant.
struct Tally {
  std::string name;
  float t = 0, s = 0;
  bool ape = false;
  double kl_sum = 0, kl_max = 0;
  int64_t steps = 0, top1 = 0;
  int items = 0, greedy_same = 0, exact = 0, contains = 0;
  std::vector<int> exact_items;  // 1/0 per item, for paired comparisons between variants

  // `ref`: (a)'s greedy run; `forced`: ref's tokens teacher-forced through this variant; `free`:
  // this variant's own greedy run.
  void Add(const Run& ref, const Run& forced, const Run& free, const std::string& text,
           const std::string& answer) {
    for (size_t i = 0; i < ref.steps.size(); ++i) {
      const double kl = ragserve::bench::Kl(ragserve::bench::Softmax(ref.steps[i]),
                                            ragserve::bench::Softmax(forced.steps[i]));
      kl_sum += kl;
      kl_max = std::max(kl_max, kl);
      top1 += engine::ArgMax(forced.steps[i]) == ref.tokens[i];
      ++steps;
    }
    ++items;
    greedy_same += free.tokens == ref.tokens;
    exact_items.push_back(Strip(text) == Strip(answer));
    exact += exact_items.back();
    contains += text.find(answer) != std::string::npos;
  }
  double mean_kl() const { return steps ? kl_sum / steps : 0; }
  double top1_rate() const { return steps ? static_cast<double>(top1) / steps : 0; }
  double Rate(int n) const { return items ? static_cast<double>(n) / items : 0; }
};

// 16 hex digits of HashBytes(model.safetensors): tells checkpoints of one architecture apart (the
// model fingerprint hashes the config and the weights header only).
std::string WeightsHash(const std::string& dir) {
  std::ifstream f(dir + "/model.safetensors", std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx",
                static_cast<unsigned long long>(ctxcache::HashBytes(bytes)));
  return hex;
}

std::string Pct(double x) {
  char b[16];
  std::snprintf(b, sizeof(b), "%.1f%%", 100 * x);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir = "data/models/reader", items_path, json_path;
  // The decoders' APE defaults and plain parallel encoding.
  char default_ts[64];
  std::snprintf(default_ts, sizeof(default_ts), "%g:%g,1:1", ctxcache::ApeSettings{}.temperature,
                ctxcache::ApeSettings{}.scaling);
  std::string ts_list = default_ts;
  int answer_tokens = 16, max_items = 0, chunk = 256;
  bool verbose = false;
  CLI::App app{"ape_fidelity_bench: APE (T, S) vs sequential prefill on a trained reader"};
  app.add_option("--model", model_dir, "Model directory (HF layout)")->capture_default_str();
  app.add_option("--items", items_path, "JSONL of {passages, question, answer}")->required();
  app.add_option("--ts", ts_list, "Comma list of APE T:S pairs (1:1 = plain parallel)")
      ->capture_default_str();
  app.add_option("--answer-tokens", answer_tokens, "Greedy answer tokens at most (EOS stops)")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  app.add_option("--max-items", max_items, "Use the first N items (0 = all)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 24));
  app.add_option("--prefill-chunk", chunk, "Prefill chunk (tokens)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--json", json_path, "Also write the results as JSON here");
  app.add_flag("--verbose", verbose, "Print each item's gold and greedy answers to stderr");
  CLI11_PARSE(app, argc, argv);
  const std::vector<std::pair<float, float>> ts = ParseTs(ts_list);
  const std::vector<Item> items = ReadItems(items_path, max_items);
  if (items.empty()) {
    std::fprintf(stderr, "--items %s: no items\n", items_path.c_str());
    return 2;
  }

  ctxcache::ModelAndTokenizer mt = Must(ctxcache::LoadModelDir(model_dir, "--model"), "model");
  engine::Model& model = *mt.model;
  const engine::Tokenizer& tok = *mt.tokenizer;
  std::vector<int32_t> eos = model.config().eos_token_ids;
  if (auto e = tok.eos_id(); e && std::find(eos.begin(), eos.end(), *e) == eos.end()) {
    eos.push_back(*e);
  }
  const Decoder dec(&model, eos, answer_tokens, chunk);

  // The decoders' APE encoder, prefix = the template's: the prefix KV once, passages on their own.
  ctxcache::BlockCacheOptions copts;
  copts.ram_limit_bytes = int64_t{4} << 30;
  ragserve::MetricsRegistry reg;
  copts.metrics = &reg;
  auto cache = Must(ctxcache::BlockCache::Open(copts), "cache");
  ctxcache::ApeSettings as;
  as.prefix = ragserve::kRagPrefix;
  as.max_passage_tokens = 1 << 20;
  auto enc = Must(ctxcache::ApeEncoder::Create(&model, &tok, cache.get(), as), "APE encoder");
  const int32_t P = enc->passage_start();

  // A prompt tokenized as the decoder does: one string, BOS when the model has one.
  auto encode_prompt = [&](const std::string& text) {
    std::vector<int32_t> t = tok.Encode(text, /*add_bos=*/true);
    if (!tok.bos_id() && model.config().bos_token_id) {
      t.insert(t.begin(), *model.config().bos_token_id);
    }
    return t;
  };

  std::vector<Tally> tallies;
  for (auto [t, s] : ts) {
    char name[64];
    if (t == 1.0f && s == 1.0f) {
      std::snprintf(name, sizeof(name), "plain parallel (T=S=1)");
    } else {
      std::snprintf(name, sizeof(name), "APE T=%.2f S=%.2f", t, s);
    }
    tallies.push_back({name, t, s, true});
  }
  tallies.push_back({"no passages (calibration)", 0, 0, false});
  Tally seq_tally{"(a) sequential", 0, 0, false};

  const auto t0 = std::chrono::steady_clock::now();
  int64_t seq_tokens = 0, split_mismatch = 0, max_pos = 0, long_answers = 0, gold_longest = 0;
  int ks_min = 1 << 30, ks_max = 0;
  for (size_t n = 0; n < items.size(); ++n) {
    const Item& it = items[n];
    ks_min = std::min(ks_min, static_cast<int>(it.passages.size()));
    ks_max = std::max(ks_max, static_cast<int>(it.passages.size()));
    std::string text = ragserve::kRagPrefix;
    for (const std::string& p : it.passages) text += ragserve::RagPassageText(p);
    text += ragserve::RagQuestionText(it.question);
    const std::vector<int32_t> seq = encode_prompt(text);
    seq_tokens += static_cast<int64_t>(seq.size());
    const std::vector<int32_t> question =
        tok.Encode(ragserve::RagQuestionText(it.question), /*add_bos=*/false);

    // (a) sequential, greedy.
    auto kv = model.NewKvCache();
    const Run ref = dec.Decode(kv.get(), seq, 0, nullptr);
    const std::string ref_text = tok.Decode(dec.Text(ref.tokens));
    seq_tally.Add(ref, ref, ref, ref_text, it.answer);
    if (verbose) {
      std::fprintf(stderr, "item %zu gold '%s' | (a) '%s'\n", n, it.answer.c_str(),
                   ref_text.c_str());
    }

    // The passages through the encoder; the pieces must tokenize as the whole prompt did.
    std::vector<std::shared_ptr<const engine::KvBlock>> blocks;
    std::vector<const engine::KvBlock*> raw;
    std::vector<int32_t> pieces = enc->prefix_tokens();
    int64_t longest = 0;
    for (const std::string& p : it.passages) {
      ctxcache::EncodedPassage e = Must(enc->Encode(p), "encode passage");
      const std::vector<int32_t> pt = tok.Encode(ragserve::RagPassageText(p));
      pieces.insert(pieces.end(), pt.begin(), pt.end());
      longest = std::max(longest, e.kv->tokens);
      blocks.push_back(std::move(e.kv));
      raw.push_back(blocks.back().get());
    }
    pieces.insert(pieces.end(), question.begin(), question.end());
    split_mismatch += pieces != seq;
    // The trained answer is " <answer>" + EOS: it must fit in answer_tokens to match exactly.
    const int64_t gold_tokens = static_cast<int64_t>(tok.Encode(" " + it.answer).size()) + 1;
    long_answers += gold_tokens > answer_tokens;
    gold_longest = std::max(gold_longest, gold_tokens);
    const int32_t qpos = P + static_cast<int32_t>(longest);
    max_pos = std::max<int64_t>(
        max_pos, std::max<int64_t>(qpos + question.size(), seq.size()) + answer_tokens);

    for (Tally& v : tallies) {
      auto run = [&](const std::vector<int32_t>* forced) {
        auto own = model.NewKvCache();
        if (v.ape) {
          engine::ApeKvSource src(enc->prefix_kv().get(), raw, own.get(), v.t, v.s);
          return dec.Decode(&src, question, qpos, forced);
        }
        return dec.Decode(
            own.get(), encode_prompt(ragserve::kRagPrefix + ragserve::RagQuestionText(it.question)),
            0, forced);
      };
      const Run free = run(nullptr);
      // Teacher forcing gives the free run's logits while the free run follows (a): reuse them
      // when it followed (a) all the way.
      const bool same = free.tokens == ref.tokens;
      const Run forced = same ? free : run(&ref.tokens);
      const std::string free_text = tok.Decode(dec.Text(free.tokens));
      v.Add(ref, forced, free, free_text, it.answer);
      if (verbose) std::fprintf(stderr, "  %s: '%s'\n", v.name.c_str(), free_text.c_str());
    }
    cache->EvictAll(/*include_disk=*/true);
    if ((n + 1) % 10 == 0 || n + 1 == items.size()) {
      std::fprintf(stderr, "  %zu/%zu items, %.0f s (loadavg %s)\n", n + 1, items.size(),
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                   ragserve::bench::LoadAvg().c_str());
    }
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const std::string k_text = ks_min == ks_max
                                 ? std::to_string(ks_min)
                                 : std::to_string(ks_min) + "-" + std::to_string(ks_max);
  std::printf("## ape_fidelity_bench\n\nmachine: %s\ncommand:",
              ragserve::bench::MachineLine().c_str());
  for (int i = 0; i < argc; ++i) std::printf(" %s", argv[i]);
  std::printf("\n\n");
  const auto& mc = model.config();
  const std::string weights_hash = WeightsHash(model_dir);
  std::printf(
      "model: %s (fingerprint %s, weights xxh64 %s; %d layers, hidden %d, %d heads / %d kv heads, "
      "vocab %d)\n"
      "items: %s: %zu items, k = %s passages, mean prompt %.0f tokens (max position used %lld); "
      "APE prefix %d tokens; answer <= %d tokens; %.0f s\n",
      model_dir.c_str(), model.fingerprint().c_str(), weights_hash.c_str(), mc.num_layers,
      mc.hidden_size, mc.num_heads, mc.num_kv_heads, mc.vocab_size, items_path.c_str(),
      items.size(), k_text.c_str(), static_cast<double>(seq_tokens) / items.size(),
      static_cast<long long>(max_pos), P, answer_tokens, wall);
  if (long_answers > 0) {
    std::printf(
        "note: %lld gold answers (+ EOS) are longer than --answer-tokens %d (longest %lld)\n",
        static_cast<long long>(long_answers), answer_tokens, static_cast<long long>(gold_longest));
  }
  if (split_mismatch > 0) {
    std::printf(
        "WARNING: %lld items tokenize differently as one prompt than as prefix + passages + "
        "question (APE sees other tokens than (a))\n",
        static_cast<long long>(split_mismatch));
  }
  std::printf(
      "\n| k | variant | mean KL | max KL | top-1 agree | greedy agree | exact | contains | "
      "exact vs (a) |\n|---|---|---|---|---|---|---|---|---|\n");
  const double seq_exact = seq_tally.Rate(seq_tally.exact);
  auto row = [&](const Tally& v, bool ref) {
    const double ex = v.Rate(v.exact);
    char kl[64] = "-", mx[64] = "-";
    if (!ref) {
      std::snprintf(kl, sizeof(kl), "%.4f", v.mean_kl());
      std::snprintf(mx, sizeof(mx), "%.3f", v.kl_max);
    }
    std::printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", k_text.c_str(), v.name.c_str(),
                kl, mx, ref ? "-" : Pct(v.top1_rate()).c_str(),
                ref ? "-" : Pct(v.Rate(v.greedy_same)).c_str(), Pct(ex).c_str(),
                Pct(v.Rate(v.contains)).c_str(), seq_exact > 0 ? Pct(ex / seq_exact).c_str() : "-");
  };
  row(seq_tally, true);
  for (const Tally& v : tallies) row(v, false);
  std::printf("\n");

  if (!json_path.empty()) {
    json out;
    out["machine"] = ragserve::bench::MachineLine();
    std::string cmd;
    for (int i = 0; i < argc; ++i) cmd += (i ? " " : "") + std::string(argv[i]);
    out["command"] = cmd;
    out["model"] = model_dir;
    out["fingerprint"] = model.fingerprint();
    out["weights_xxh64"] = weights_hash;
    out["items"] = items_path;
    out["n"] = items.size();
    out["k"] = k_text;
    out["answer_tokens"] = answer_tokens;
    out["split_mismatch"] = split_mismatch;
    out["long_answers"] = long_answers;
    out["seconds"] = wall;
    auto to_json = [&](const Tally& v) {
      json r = {{"variant", v.name},
                {"exact", v.Rate(v.exact)},
                {"contains", v.Rate(v.contains)},
                {"steps", v.steps},
                {"exact_items", v.exact_items}};
      if (v.ape) {
        r["T"] = v.t;
        r["S"] = v.s;
      }
      if (&v != &seq_tally) {
        r["mean_kl"] = v.mean_kl();
        r["max_kl"] = v.kl_max;
        r["top1"] = v.top1_rate();
        r["greedy"] = v.Rate(v.greedy_same);
      }
      return r;
    };
    out["sequential"] = to_json(seq_tally);
    for (const Tally& v : tallies) out["rows"].push_back(to_json(v));
    std::ofstream(json_path) << out.dump(1) << "\n";
  }
  return 0;
}
