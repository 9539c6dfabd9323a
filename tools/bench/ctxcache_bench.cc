// ctxcache_bench: the context cache's acceptance benchmark, two sections.
//
// ttft   Time to first token on one random-weight Llama for n passages x L tokens, all in one run:
//          (a) sequential prefill of everything (prefix + all passages + question, one causal
//              sequence; the baseline),
//          (b) APE parallel encoding with a cold cache (each passage encoded alone after the shared
//              prefix through ApeEncoder::Encode -> BlockCache (RAM + RocksDB tier), then the
//              question prefilled through engine::ApeKvSource),
//          (c) the same with the passages in the warm RAM tier,
//          (d) the same after a restart: the cache re-opened from its RocksDB directory with an
//              empty RAM tier (fresh BlockCache and ApeEncoder; the prefix is re-encoded untimed,
//              as a worker does at startup).
//        TTFT = from the request's passages to the first token's logits + argmax (greedy).
//        Fidelity vs (a): the sequential greedy answer (--answer-tokens) is teacher-forced through
//        the APE join with the corrections (T, S) and without (T = S = 1); per step KL(p_seq ||
//        p_ape) of the next-token distributions and top-1 agreement; plus free-running greedy
//        agreement (position by position). A "no passages" row (prefix + question only) calibrates
//        how much the passages move the distribution at all.
// tiers  Cost of serving one passage's KV from each tier (RAM hit, disk hit, compute miss) against
//        a raw RocksDB get of the same bytes (synthetic blocks).
//
//   usage: ctxcache_bench [--section all|ttft|tiers] [--n 4,16,32] [--L 256,1024] [--reps 3]
//            [--seq-reps 1]
//            [--answer-tokens 16] [--layers 4] [--hidden 256] [--heads 4] [--kv-heads 2]
//            [--ffn 1024] [--vocab 1024] [--prefill-chunk 256] [--temperature T] [--scaling S]
//            [--entries 32] [--tokens 256]
//   T and S default to the decoders' APE defaults (ctxcache::ApeSettings).
//   Run with OMP_WAIT_POLICY=PASSIVE on a shared machine.
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "services/common/rag_template.h"
#include "services/ctxcache/ape_encoder.h"
#include "services/ctxcache/block_cache.h"
#include "services/engine/bpe_trainer.h"
#include "services/engine/model.h"
#include "services/engine/sampling.h"
#include "services/engine/tiny_model.h"
#include "services/engine/tokenizer.h"
#include "tools/bench/bench_util.h"

namespace {

using namespace ragserve::ctxcache;  // NOLINT: a benchmark program
using ragserve::Status;
using ragserve::StatusOr;
using Clock = std::chrono::steady_clock;
namespace engine = ragserve::engine;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

using ragserve::bench::Must;

std::vector<int> ParseList(const char* s) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(std::max(1, std::atoi(item.c_str())));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Section "tiers": the storage tiers alone (synthetic blocks).

StoredBlock SyntheticBlock(int64_t tokens, uint32_t seed) {
  const int layers = 8, kv_heads = 4, head_dim = 64;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-2, 2);
  std::vector<std::vector<float>> k(layers), v(layers);
  for (int l = 0; l < layers; ++l) {
    k[l].resize(tokens * kv_heads * head_dim);
    v[l].resize(tokens * kv_heads * head_dim);
    for (float& x : k[l]) x = u(rng);
    for (float& x : v[l]) x = u(rng);
  }
  return MakeStoredBlock(kv_heads, head_dim, tokens, k, v, "benchfingerprint").value();
}

int RunTiers(const std::string& dir, int entries, int64_t tokens, int reps) {
  const StoredBlock proto = SyntheticBlock(tokens, 1);
  std::printf("### tiers (loadavg %s)\n\n", ragserve::bench::LoadAvg().c_str());
  std::printf("block: 8 layers x 4 kv heads x 64 dims x %lld tokens = %.2f MB f32; %d entries\n\n",
              static_cast<long long>(tokens), proto.ByteSize() / 1e6, entries);
  std::printf("| storage | path | MB/s | us/entry | vs raw RocksDB get |\n|---|---|---|---|---|\n");

  ragserve::MetricsRegistry reg;
  for (DType dtype : {DType::kF32, DType::kF16}) {
    const std::string db = dir + "/" + std::string(ragserve::kernels::DTypeName(dtype));
    std::vector<CacheKey> keys;
    for (int e = 0; e < entries; ++e) {
      keys.push_back(
          CacheKey::Make("benchfingerprint", "p", "passage " + std::to_string(e), "s").value());
    }
    double mb = 0, t_put = 0, t_flush = 0, t_ram = 1e9, t_disk = 1e9, t_raw = 1e9, t_nodisk = 0;
    for (int pass = 0; pass < 2; ++pass) {  // pass 0 warms the allocator (first-touch faults)
      BlockCacheOptions o;  // no disk tier: the compute copy, narrowing and RAM insert alone
      o.ram_limit_bytes = int64_t{1} << 40;
      o.store_dtype = dtype;
      o.metrics = &reg;
      auto cache = BlockCache::Open(o).value();
      auto t0 = Clock::now();
      for (const CacheKey& k : keys) {
        if (!cache->GetOrCompute(k, [&] { return StatusOr<StoredBlock>(proto); }).ok()) return 1;
      }
      t_nodisk = Seconds(t0, Clock::now());
    }
    auto miss = [] { return StatusOr<StoredBlock>(ragserve::Internal("miss")); };
    {
      BlockCacheOptions o;
      o.disk_dir = db;
      o.ram_limit_bytes = int64_t{1} << 40;
      o.store_dtype = dtype;
      o.metrics = &reg;
      auto cache = BlockCache::Open(o).value();
      auto t0 = Clock::now();
      for (const CacheKey& k : keys) {
        auto b = cache->GetOrCompute(k, [&] { return StatusOr<StoredBlock>(proto); });
        if (!b.ok()) return 1;
        mb += (*b)->ByteSize() / 1e6;
      }
      t_put = Seconds(t0, Clock::now());
      cache->Flush();
      t_flush = Seconds(t0, Clock::now());
      for (int r = 0; r < reps; ++r) {
        t0 = Clock::now();
        for (const CacheKey& k : keys) {
          if (!cache->GetOrCompute(k, miss).ok()) return 1;
        }
        t_ram = std::min(t_ram, Seconds(t0, Clock::now()));
      }
    }
    for (int r = 0; r < reps; ++r) {
      BlockCacheOptions o;
      o.disk_dir = db;
      o.ram_limit_bytes = 0;  // every lookup goes to disk
      o.metrics = &reg;
      auto cache = BlockCache::Open(o).value();
      auto t0 = Clock::now();
      for (const CacheKey& k : keys) {
        if (!cache->GetOrCompute(k, miss).ok()) return 1;
      }
      t_disk = std::min(t_disk, Seconds(t0, Clock::now()));
    }
    for (int r = 0; r < reps; ++r) {
      auto store = RocksDiskStore::Open(db).value();
      size_t bytes = 0;
      auto t0 = Clock::now();
      for (const CacheKey& k : keys) {
        auto v = store->Get(k.id().view());
        if (!v.ok() || !v->has_value()) return 1;
        bytes += (*v)->size();
      }
      t_raw = std::min(t_raw, Seconds(t0, Clock::now()));
      if (bytes == 0) return 1;
    }
    const char* name = dtype == DType::kF32 ? "f32" : "f16";
    auto row = [&](const char* path, double t) {
      std::printf("| %s | %s | %.0f | %.1f | %.2fx |\n", name, path, mb / t, t / entries * 1e6,
                  t_raw / t);
    };
    row("compute miss, no disk tier", t_nodisk);
    row("compute miss, request path (disk write queued)", t_put);
    row("compute miss + Flush (serialize + RocksDB put done)", t_flush);
    row("RAM hit", t_ram);
    row("disk hit: get + xxh64 + parse + RAM insert", t_disk);
    row("raw RocksDB get (baseline)", t_raw);
  }
  std::printf("\n");
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Section "ttft": sequential prefill vs APE (cold, warm RAM, warm disk after restart).

struct TtftConfig {
  std::vector<int> ns = {4, 16, 32};
  std::vector<int> ls = {256, 1024};
  int reps = 3;      // (b), (c), (d): cheap, so the median of several
  int seq_reps = 1;  // (a): the expensive baseline
  int answer_tokens = 16;
  int prefill_chunk = 256;
  float temperature = ApeSettings{}.temperature, scaling = ApeSettings{}.scaling;
  engine::TinyModelOptions model;
};

const char kQuestion[] = "Question: which passage holds the code word, and what is it?\nAnswer:";

// A decode loop over one KvSource: prefill `prompt` at start, then feed `forced` tokens (teacher
// forcing) or, when forced is empty, its own greedy tokens; returns the logits of every step.
struct Run {
  std::vector<std::vector<float>> logits;  // [steps][vocab]
  std::vector<int32_t> greedy;             // argmax of each step
};

// Steps on from a prefilled source whose last logits are `logits` and whose next position is pos.
Run Continue(engine::Model& m, engine::KvSource* kv, std::vector<float> logits, int32_t pos,
             int steps, const std::vector<int32_t>& forced) {
  Run r;
  for (int i = 0; i < steps; ++i) {
    r.logits.push_back(logits);
    r.greedy.push_back(engine::ArgMax(logits));
    if (i + 1 == steps) break;
    const int32_t next = forced.empty() ? r.greedy.back() : forced[i];
    engine::SequenceStep st{std::span<const int32_t>(&next, 1), pos++, kv};
    CHECK_OK(m.Forward(std::span<const engine::SequenceStep>(&st, 1), engine::LogitsMode::kLast,
                       &logits));
  }
  return r;
}

Run Decode(engine::Model& m, engine::KvSource* kv, const std::vector<int32_t>& prompt,
           int32_t start, int steps, int chunk, const std::vector<int32_t>& forced) {
  std::vector<float> logits;
  CHECK_OK(m.Prefill(prompt, start, kv, chunk, &logits));
  return Continue(m, kv, std::move(logits), start + static_cast<int32_t>(prompt.size()), steps,
                  forced);
}

struct Fidelity {
  double mean_kl = 0, max_kl = 0, top1 = 0, greedy = 0;
};

// Teacher-forced KL / top-1 of `forced` against the sequential run, and greedy agreement of
// `free` with the sequential greedy answer.
Fidelity Compare(const Run& seq, const Run& forced, const Run& free) {
  Fidelity f;
  const size_t n = seq.logits.size();
  for (size_t i = 0; i < n; ++i) {
    const double kl = ragserve::bench::Kl(ragserve::bench::Softmax(seq.logits[i]),
                                          ragserve::bench::Softmax(forced.logits[i]));
    f.mean_kl += kl / n;
    f.max_kl = std::max(f.max_kl, kl);
    f.top1 += (seq.greedy[i] == forced.greedy[i]) / static_cast<double>(n);
    f.greedy += (seq.greedy[i] == free.greedy[i]) / static_cast<double>(n);
  }
  return f;
}

// L-2 random lowercase letters: with the byte-level tokenizer (no merges) a passage text of
// RagPassageText (passage + "\n\n") is exactly L tokens.
std::string RandomPassage(int L, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(static_cast<size_t>(std::max(1, L - 2)), 'a');
  for (char& c : s) c = static_cast<char>('a' + rng() % 26);
  return s;
}

struct CellResult {
  int n = 0, L = 0;
  int64_t context_tokens = 0;
  double a = 0, b = 0, c = 0, d = 0;
  Fidelity ape, plain, none;
};

int RunTtft(const std::string& dir, const TtftConfig& cfg) {
  // The model: random weights, byte-level tokenizer without merges (ids 2..257 = bytes).
  const std::string model_dir = dir + "/model";
  CHECK_OK(engine::WriteTinyModel(cfg.model, {}, model_dir));
  {
    const std::string tj = Must(
        engine::TrainByteLevelBpe({"ab"}, 256 + static_cast<int>(cfg.model.special_tokens.size()),
                                  cfg.model.special_tokens),
        "tokenizer");
    std::ofstream(model_dir + "/tokenizer.json") << tj;
  }
  ModelAndTokenizer mt = Must(LoadModelDir(model_dir, "model"), "load model");
  engine::Model& model = *mt.model;
  const engine::Tokenizer& tok = *mt.tokenizer;
  const auto& mc = cfg.model;
  std::printf(
      "### ttft (random-weight llama: %d layers, hidden %d, %d heads / %d kv heads, ffn %d, vocab "
      "%d, %.1fM params, f32; max positions %d)\n\n",
      mc.num_layers, mc.hidden_size, mc.num_heads, mc.num_kv_heads, mc.intermediate_size,
      mc.vocab_size, engine::TinyModelParams(mc) / 1e6, mc.max_position_embeddings);
  std::printf(
      "reps: (a) %d, (b)-(d) %d (median), prefill chunk %d, APE T=%.2f S=%.2f, answer %d tokens, "
      "RAM tier + RocksDB "
      "tier, f32 storage\n\n",
      cfg.seq_reps, cfg.reps, cfg.prefill_chunk, cfg.temperature, cfg.scaling, cfg.answer_tokens);
  std::fflush(stdout);

  const std::vector<int32_t> question = tok.Encode(kQuestion, /*add_bos=*/false);
  std::vector<CellResult> results;
  for (int L : cfg.ls) {
    for (int n : cfg.ns) {
      CellResult res;
      res.n = n;
      res.L = L;
      const std::string cell_dir = dir + "/cell_" + std::to_string(n) + "x" + std::to_string(L);
      std::vector<std::string> passages;
      for (int i = 0; i < n; ++i) {
        passages.push_back(RandomPassage(L, static_cast<uint32_t>(1000003u * L + 7919u * n + i)));
      }
      // (b) and (c): a cache with both tiers, as a worker runs it.
      BlockCacheOptions copts;
      copts.ram_limit_bytes = int64_t{16} << 30;
      copts.disk_dir = cell_dir;
      ragserve::MetricsRegistry reg;
      copts.metrics = &reg;
      ApeSettings as;
      as.prefix = ragserve::kRagPrefix;
      as.temperature = cfg.temperature;
      as.scaling = cfg.scaling;
      as.max_passage_tokens = std::max(2048, L);
      auto cache = Must(BlockCache::Open(copts), "open cache");
      auto enc = Must(ApeEncoder::Create(&model, &tok, cache.get(), as), "encoder");
      const int32_t P = enc->passage_start();

      // The same tokens as one causal sequence.
      std::vector<int32_t> seq = enc->prefix_tokens();
      for (const std::string& p : passages) {
        const std::vector<int32_t> t = tok.Encode(ragserve::RagPassageText(p));
        seq.insert(seq.end(), t.begin(), t.end());
      }
      res.context_tokens = static_cast<int64_t>(seq.size()) - P;
      seq.insert(seq.end(), question.begin(), question.end());
      if (static_cast<int64_t>(seq.size()) + cfg.answer_tokens > mc.max_position_embeddings) {
        std::fprintf(stderr, "%d x %d needs more than --max-positions %d\n", n, L,
                     mc.max_position_embeddings);
        return 1;
      }

      // (a) sequential prefill of everything.
      std::vector<double> ta;
      std::unique_ptr<engine::KvCache> seq_kv;  // the last rep's, continued for fidelity
      std::vector<float> seq_logits;
      for (int r = 0; r < cfg.seq_reps; ++r) {
        seq_kv = model.NewKvCache();
        const auto t0 = Clock::now();
        CHECK_OK(model.Prefill(seq, 0, seq_kv.get(), cfg.prefill_chunk, &seq_logits));
        volatile int32_t first = engine::ArgMax(seq_logits);
        (void)first;
        ta.push_back(Seconds(t0, Clock::now()));
      }
      res.a = Median(ta);

      // One APE request: passages from the encoder (cache), question prefilled through the join.
      std::vector<std::shared_ptr<const engine::KvBlock>> blocks;
      auto ape_request = [&]() -> double {
        const auto t0 = Clock::now();
        blocks.clear();
        int64_t longest = 0;
        for (const std::string& p : passages) {
          EncodedPassage e = Must(enc->Encode(p), "encode");
          longest = std::max(longest, e.kv->tokens);
          blocks.push_back(std::move(e.kv));
        }
        std::vector<const engine::KvBlock*> raw;
        for (const auto& b : blocks) raw.push_back(b.get());
        auto own = model.NewKvCache();
        engine::ApeKvSource src(enc->prefix_kv().get(), raw, own.get(), cfg.temperature,
                                cfg.scaling);
        std::vector<float> logits;
        CHECK_OK(model.Prefill(question, P + static_cast<int32_t>(longest), &src, cfg.prefill_chunk,
                               &logits));
        volatile int32_t first = engine::ArgMax(logits);
        (void)first;
        return Seconds(t0, Clock::now());
      };

      // (b) cold: every rep starts from empty tiers (pending writes flushed, then evicted).
      std::vector<double> tb, tc, td;
      for (int r = 0; r < cfg.reps; ++r) {
        cache->Flush();
        cache->EvictAll(/*include_disk=*/true);
        tb.push_back(ape_request());
      }
      res.b = Median(tb);
      // (c) warm RAM.
      for (int r = 0; r < cfg.reps; ++r) tc.push_back(ape_request());
      res.c = Median(tc);

      // Fidelity vs sequential (the blocks are the cached ones; f32 storage = computed bits).
      {
        int64_t longest = 0;
        std::vector<const engine::KvBlock*> raw;
        for (const auto& b : blocks) {
          raw.push_back(b.get());
          longest = std::max(longest, b->tokens);
        }
        const int A = cfg.answer_tokens;
        const Run s =
            Continue(model, seq_kv.get(), seq_logits, static_cast<int32_t>(seq.size()), A, {});
        seq_kv.reset();
        const int32_t qpos = P + static_cast<int32_t>(longest);
        auto variant = [&](float t, float sc) {
          auto own1 = model.NewKvCache();
          engine::ApeKvSource forced_src(enc->prefix_kv().get(), raw, own1.get(), t, sc);
          const Run f = Decode(model, &forced_src, question, qpos, A, cfg.prefill_chunk, s.greedy);
          auto own2 = model.NewKvCache();
          engine::ApeKvSource free_src(enc->prefix_kv().get(), raw, own2.get(), t, sc);
          const Run g = Decode(model, &free_src, question, qpos, A, cfg.prefill_chunk, {});
          return Compare(s, f, g);
        };
        res.ape = variant(cfg.temperature, cfg.scaling);
        res.plain = variant(1.0f, 1.0f);
        // Calibration: no passages at all (prefix + question).
        std::vector<int32_t> bare = enc->prefix_tokens();
        bare.insert(bare.end(), question.begin(), question.end());
        auto kv1 = model.NewKvCache();
        const Run f = Decode(model, kv1.get(), bare, 0, A, cfg.prefill_chunk, s.greedy);
        auto kv2 = model.NewKvCache();
        const Run g = Decode(model, kv2.get(), bare, 0, A, cfg.prefill_chunk, {});
        res.none = Compare(s, f, g);
      }

      // (d) restart: flush, drop the cache and encoder, re-open from the RocksDB directory.
      cache->Flush();
      blocks.clear();
      enc.reset();
      cache.reset();
      for (int r = 0; r < cfg.reps; ++r) {
        cache = Must(BlockCache::Open(copts), "re-open cache");
        enc = Must(ApeEncoder::Create(&model, &tok, cache.get(), as), "encoder");
        const int64_t computes_before = cache->Stats().misses;
        td.push_back(ape_request());
        if (cache->Stats().misses != computes_before || cache->Stats().hits_disk != n) {
          std::fprintf(stderr, "(d) %d x %d: expected %d disk hits, got %lld (misses %lld)\n", n, L,
                       n, static_cast<long long>(cache->Stats().hits_disk),
                       static_cast<long long>(cache->Stats().misses - computes_before));
          return 1;
        }
        blocks.clear();
        enc.reset();
        cache.reset();
      }
      res.d = Median(td);
      std::error_code ec;
      std::filesystem::remove_all(cell_dir, ec);
      std::fprintf(stderr, "  %2d x %4d: a %.1f ms, b %.1f ms, c %.2f ms, d %.1f ms (loadavg %s)\n",
                   n, L, res.a * 1e3, res.b * 1e3, res.c * 1e3, res.d * 1e3,
                   ragserve::bench::LoadAvg().c_str());
      results.push_back(res);
    }
  }

  std::printf(
      "| n x L | context tokens | (a) sequential ms | (b) APE cold ms | (c) RAM warm ms | (d) disk "
      "warm ms | a/c | a/b | b/d |\n|---|---|---|---|---|---|---|---|---|\n");
  for (const CellResult& r : results) {
    std::printf("| %d x %d | %lld | %.1f | %.1f | %.2f | %.1f | %.1fx | %.2fx | %.2fx |\n", r.n,
                r.L, static_cast<long long>(r.context_tokens), r.a * 1e3, r.b * 1e3, r.c * 1e3,
                r.d * 1e3, r.a / r.c, r.a / r.b, r.b / r.d);
  }
  std::printf(
      "\nfidelity vs (a) over %d answer tokens (teacher-forced on the sequential greedy answer; "
      "greedy = free-running agreement by position):\n\n",
      cfg.answer_tokens);
  std::printf(
      "| n x L | variant | mean KL | max KL | top-1 agree | greedy agree "
      "|\n|---|---|---|---|---|---|"
      "\n");
  for (const CellResult& r : results) {
    auto row = [&](const std::string& name, const Fidelity& f) {
      std::printf("| %d x %d | %s | %.4f | %.4f | %.0f%% | %.0f%% |\n", r.n, r.L, name.c_str(),
                  f.mean_kl, f.max_kl, f.top1 * 100, f.greedy * 100);
    };
    char ape[64];
    std::snprintf(ape, sizeof(ape), "(b)/(c) APE T=%.2f S=%.2f", cfg.temperature, cfg.scaling);
    row(ape, r.ape);
    row("(b)/(c) plain parallel (T=S=1)", r.plain);
    row("no passages (calibration)", r.none);
  }
  std::printf("\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string section = "all";
  int entries = 32, tier_reps = 3;
  int64_t tokens = 256;
  TtftConfig cfg;
  cfg.model.num_layers = 4;
  cfg.model.hidden_size = 256;
  cfg.model.num_heads = 4;
  cfg.model.num_kv_heads = 2;
  cfg.model.intermediate_size = 1024;
  cfg.model.vocab_size = 1024;
  int max_positions = 0;
  std::string ns = "4,16,32", ls = "256,1024";
  CLI::App app{"ctxcache_bench: APE time to first token and the context cache's storage tiers"};
  app.add_option("--section", section, "all | ttft | tiers");
  app.add_option("--entries", entries, "tiers: cached blocks");
  app.add_option("--tokens", tokens, "tiers: tokens per block");
  app.add_option("--reps", tier_reps, "Repetitions of (b)-(d) and of each tier measurement");
  app.add_option("--seq-reps", cfg.seq_reps, "Repetitions of (a), the sequential prefill");
  app.add_option("--n", ns, "ttft: comma list of passage counts");
  app.add_option("--L", ls, "ttft: comma list of passage lengths in tokens");
  app.add_option("--answer-tokens", cfg.answer_tokens, "ttft: answer tokens for fidelity");
  app.add_option("--prefill-chunk", cfg.prefill_chunk, "ttft: prefill chunk of (a)");
  app.add_option("--temperature", cfg.temperature, "APE temperature T");
  app.add_option("--scaling", cfg.scaling, "APE scaling S");
  app.add_option("--layers", cfg.model.num_layers, "Model layers");
  app.add_option("--hidden", cfg.model.hidden_size, "Model hidden size");
  app.add_option("--heads", cfg.model.num_heads, "Query heads");
  app.add_option("--kv-heads", cfg.model.num_kv_heads, "KV heads");
  app.add_option("--ffn", cfg.model.intermediate_size, "FFN intermediate size");
  app.add_option("--vocab", cfg.model.vocab_size, "Vocabulary size (>= 258)");
  app.add_option("--max-positions", max_positions, "Model max positions (0 = what (a) needs)");
  CLI11_PARSE(app, argc, argv);
  // Out-of-range sizes are raised to their minimum, as before.
  entries = std::max(1, entries);
  tokens = std::max<int64_t>(1, tokens);
  cfg.reps = tier_reps = std::max(1, tier_reps);
  cfg.seq_reps = std::max(1, cfg.seq_reps);
  cfg.answer_tokens = std::max(1, cfg.answer_tokens);
  cfg.prefill_chunk = std::max(1, cfg.prefill_chunk);
  cfg.model.num_layers = std::max(1, cfg.model.num_layers);
  cfg.model.hidden_size = std::max(8, cfg.model.hidden_size);
  cfg.model.num_heads = std::max(1, cfg.model.num_heads);
  cfg.model.num_kv_heads = std::max(1, cfg.model.num_kv_heads);
  cfg.model.intermediate_size = std::max(8, cfg.model.intermediate_size);
  cfg.model.vocab_size = std::max(258, cfg.model.vocab_size);
  cfg.ns = ParseList(ns.c_str());
  cfg.ls = ParseList(ls.c_str());
  if (section != "all" && section != "ttft" && section != "tiers") {
    std::fprintf(stderr, "--section must be all, ttft or tiers\n");
    return 2;
  }
  if (cfg.ns.empty() || cfg.ls.empty()) {
    std::fprintf(stderr, "--n and --L need at least one value\n");
    return 2;
  }
  // Room for the longest sequential prompt + answer.
  cfg.model.max_position_embeddings =
      max_positions > 0 ? max_positions
                        : *std::max_element(cfg.ns.begin(), cfg.ns.end()) *
                                  *std::max_element(cfg.ls.begin(), cfg.ls.end()) +
                              1024;
  std::string tmpl =
      (std::filesystem::temp_directory_path() / ("ctxcache_bench_" + std::string(6, 'X'))).string();
  if (::mkdtemp(tmpl.data()) == nullptr) return 1;
  const std::string dir = tmpl;

  std::printf("## ctxcache_bench\n\nmachine: %s\ncommand:", ragserve::bench::MachineLine().c_str());
  for (int i = 0; i < argc; ++i) std::printf(" %s", argv[i]);
  std::printf("\n\n");
  int rc = 0;
  // Tiers first: after the TTFT section's GBs of KV the allocator makes fresh blocks slower.
  if (section == "all" || section == "tiers") rc = RunTiers(dir, entries, tokens, tier_reps);
  if (rc == 0 && (section == "all" || section == "ttft")) rc = RunTtft(dir, cfg);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return rc;
}
