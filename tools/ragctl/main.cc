// ragctl: command-line client for a ragserve cluster.
//
//   ragctl health [--addr host:port] [--service NAME]      gRPC health of any ragserve service
//   ragctl query "question" [--collection C] [--top-k K]  streamed RAG answer from the router
//   ragctl collections                                     collections known to the router
//   ragctl ingest PATH... [--collection C] [--create]     JSONL documents or text files
//   ragctl generate "prompt" --addr decoder               a decode worker directly
//   ragctl load --addr decoder                             a decode worker's load report
//   ragctl stats [--collection C]                          a collection's statistics
//
// Every command takes --addr (RAGSERVE_ADDR), --token (RAGSERVE_AUTH_TOKEN), --admin-token
// (RAGSERVE_ADMIN_TOKEN: sent instead of --token by the admin commands stats, load and
// ingest --create), --tls-ca, --tls-cert/--tls-key (mutual TLS) and --timeout. Exit codes: 0 ok, 1
// usage, 2 the call failed (the gRPC code and message are printed).
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "ragserve/v1/decoder.grpc.pb.h"
#include "ragserve/v1/rag.grpc.pb.h"
#include "services/common/auth.h"
#include "services/common/client.h"
#include "services/common/grpc_status.h"

namespace {

struct Common {
  std::string addr = "127.0.0.1:50051";
  std::string token;
  std::string admin_token;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  double timeout_s = 120;
};

int Fail(const grpc::Status& st, const std::string& what) {
  std::fprintf(
      stderr, "ragctl: %s failed: %s: %s\n", what.c_str(),
      std::string(ragserve::StatusCodeName(static_cast<ragserve::StatusCode>(st.error_code())))
          .c_str(),
      st.error_message().c_str());
  return 2;
}

int Fail(const ragserve::Status& st, const std::string& what) {
  std::fprintf(stderr, "ragctl: %s failed: %s\n", what.c_str(), st.ToString().c_str());
  return 2;
}

// Model output for a terminal: control characters (a random model emits NUL, ESC, ...) other
// than newline and tab become U+FFFD.
std::string Printable(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char ch : text) {
    const auto u = static_cast<unsigned char>(ch);
    if ((u < 0x20 && ch != '\n' && ch != '\t') || u == 0x7f) {
      out += "\xEF\xBF\xBD";
    } else {
      out += ch;
    }
  }
  return out;
}

ragserve::StatusOr<std::shared_ptr<grpc::Channel>> Connect(const Common& c) {
  ragserve::ChannelOptions opts;
  opts.tls_ca = c.tls_ca;
  opts.tls_client_cert = c.tls_cert;
  opts.tls_client_key = c.tls_key;
  return ragserve::MakeChannel(c.addr, opts);
}

// `admin`: the call needs the admin credential (--admin-token, when given, instead of --token).
void Prepare(const Common& c, grpc::ClientContext* ctx, bool admin = false) {
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(c.timeout_s * 1000)));
  ragserve::AttachToken(ctx, admin && !c.admin_token.empty() ? c.admin_token : c.token);
}

int Health(const Common& c, const std::string& service) {
  auto ch = Connect(c);
  if (!ch.ok()) return Fail(ch.status(), "connect");
  ragserve::Status st = ragserve::CheckHealth(*ch, service, c.timeout_s);
  if (!st.ok()) return Fail(st, "health of " + c.addr);
  std::printf("%s%s%s: SERVING\n", c.addr.c_str(), service.empty() ? "" : " ", service.c_str());
  return 0;
}

int Query(const Common& c, const ragserve::v1::QueryRequest& req, bool show_passages) {
  auto ch = Connect(c);
  if (!ch.ok()) return Fail(ch.status(), "connect");
  auto stub = ragserve::v1::RagService::NewStub(*ch);
  grpc::ClientContext ctx;
  Prepare(c, &ctx);
  auto reader = stub->Query(&ctx, req);
  ragserve::v1::QueryEvent ev;
  bool answering = false;
  while (reader->Read(&ev)) {
    if (ev.has_passages()) {
      if (!show_passages) continue;
      std::printf("retrieved %d passages:\n", ev.passages().passages_size());
      for (const auto& p : ev.passages().passages()) {
        std::string text = p.text().substr(0, 100);
        std::printf("  [%s] %.4f  %s%s\n", p.id().c_str(), p.score(), text.c_str(),
                    p.text().size() > 100 ? "..." : "");
      }
    } else if (ev.has_delta()) {
      if (!answering) std::printf("answer: ");
      answering = true;
      const std::string shown = Printable(ev.delta().text());
      std::fwrite(shown.data(), 1, shown.size(), stdout);
      std::fflush(stdout);
    } else if (ev.has_stats()) {
      const auto& s = ev.stats();
      const auto& t = s.timings();
      if (answering) std::printf("\n");
      std::printf(
          "stats: search %.1f ms (embedding included), context %.1f ms, prefill %.1f ms, "
          "TTFT %.1f ms, decode %.1f tok/s, total %.1f ms\n"
          "       prompt %d tokens (%d cached), generated %d, finish %s, worker %s, retries %d\n",
          t.embed_ms() + t.search_ms(), t.context_ms(), t.prefill_ms(), t.ttft_ms(),
          t.decode_tokens_per_s(), t.total_ms(), s.prompt_tokens(), s.cached_prompt_tokens(),
          s.generated_tokens(), s.finish_reason().c_str(), s.worker_id().c_str(), s.retries());
    }
  }
  if (answering) std::printf("\n");
  grpc::Status st = reader->Finish();
  if (!st.ok()) return Fail(st, "query");
  return 0;
}

int Generate(const Common& c, const ragserve::v1::GenerateRequest& req) {
  auto ch = Connect(c);
  if (!ch.ok()) return Fail(ch.status(), "connect");
  auto stub = ragserve::v1::DecoderService::NewStub(*ch);
  grpc::ClientContext ctx;
  Prepare(c, &ctx);
  auto reader = stub->Generate(&ctx, req);
  ragserve::v1::GenerateEvent ev;
  while (reader->Read(&ev)) {
    if (ev.has_delta()) {
      const std::string shown = Printable(ev.delta().text());
      std::fwrite(shown.data(), 1, shown.size(), stdout);
      std::fflush(stdout);
    } else if (ev.has_stats()) {
      const auto& s = ev.stats();
      std::printf(
          "\nstats: prompt %d tokens, generated %d, finish %s, TTFT %.1f ms, "
          "decode %.1f tok/s, worker %s\n",
          s.prompt_tokens(), s.generated_tokens(), s.finish_reason().c_str(), s.timings().ttft_ms(),
          s.timings().decode_tokens_per_s(), s.worker_id().c_str());
    }
  }
  grpc::Status st = reader->Finish();
  if (!st.ok()) return Fail(st, "generate");
  return 0;
}

struct IngestOptions {
  std::vector<std::string> paths;
  std::string collection = "docs";
  bool create = false;
  int dimension = 1024;
  std::string index = "hnsw";
  std::string metric = "cosine";
  int batch = 64;
  bool pre_encode = false;
};

// Documents from a JSONL file ({"id","text","metadata"} per line), a text file (id = path), or a
// folder of .txt/.md files. Malformed JSONL names the file and line.
bool ReadDocuments(const std::string& path, std::vector<ragserve::v1::Document>* docs) {
  namespace fs = std::filesystem;
  auto add_text_file = [&](const fs::path& p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    ragserve::v1::Document d;
    d.set_id(p.string());
    d.set_text(ss.str());
    docs->push_back(std::move(d));
  };
  if (fs::is_directory(path)) {
    for (const auto& e : fs::recursive_directory_iterator(path)) {
      const auto ext = e.path().extension();
      if (e.is_regular_file() && (ext == ".txt" || ext == ".md")) add_text_file(e.path());
    }
    return true;
  }
  if (!fs::is_regular_file(path)) {
    std::fprintf(stderr, "ragctl: %s: no such file or folder\n", path.c_str());
    return false;
  }
  if (fs::path(path).extension() != ".jsonl") {
    add_text_file(path);
    return true;
  }
  std::ifstream f(path);
  std::string line;
  int n = 0;
  while (std::getline(f, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("id") || !j["id"].is_string() ||
        !j.contains("text") || !j["text"].is_string()) {
      std::fprintf(stderr, "ragctl: %s:%d: expected {\"id\": string, \"text\": string, ...}\n",
                   path.c_str(), n);
      return false;
    }
    ragserve::v1::Document d;
    d.set_id(j["id"].get<std::string>());
    d.set_text(j["text"].get<std::string>());
    if (j.contains("metadata")) d.set_metadata_json(j["metadata"].dump());
    docs->push_back(std::move(d));
  }
  return true;
}

int Ingest(const Common& c, const IngestOptions& o) {
  std::vector<ragserve::v1::Document> docs;
  for (const auto& p : o.paths) {
    if (!ReadDocuments(p, &docs)) return 1;
  }
  auto ch = Connect(c);
  if (!ch.ok()) return Fail(ch.status(), "connect");
  auto stub = ragserve::v1::RagService::NewStub(*ch);
  grpc::ClientContext ctx;
  Prepare(c, &ctx, /*admin=*/o.create);
  ragserve::v1::IngestResponse resp;
  auto writer = stub->Ingest(&ctx, &resp);
  ragserve::v1::IngestRequest first;
  first.set_collection(o.collection);
  first.set_pre_encode(o.pre_encode);
  if (o.create) {
    auto* spec = first.mutable_create_spec();
    spec->set_name(o.collection);
    spec->set_dimension(o.dimension);
    spec->set_metric(o.metric == "l2"   ? ragserve::v1::METRIC_L2
                     : o.metric == "ip" ? ragserve::v1::METRIC_INNER_PRODUCT
                                        : ragserve::v1::METRIC_COSINE);
    spec->set_index_kind(o.index == "flat"       ? ragserve::v1::INDEX_KIND_FLAT
                         : o.index == "ivf_flat" ? ragserve::v1::INDEX_KIND_IVF_FLAT
                         : o.index == "ivf_pq"   ? ragserve::v1::INDEX_KIND_IVF_PQ
                                                 : ragserve::v1::INDEX_KIND_HNSW);
    spec->set_embedder("hashing");
  }
  bool ok = writer->Write(first);
  for (size_t i = 0; ok && i < docs.size(); i += o.batch) {
    ragserve::v1::IngestRequest req;
    for (size_t j = i; j < std::min(docs.size(), i + o.batch); ++j) {
      *req.add_documents() = docs[j];
    }
    ok = writer->Write(req);
  }
  writer->WritesDone();
  grpc::Status st = writer->Finish();
  if (!st.ok()) return Fail(st, "ingest");
  std::printf(
      "ingested %lld documents into '%s'%s\n", static_cast<long long>(resp.ingested()),
      o.collection.c_str(),
      o.pre_encode ? (" (" + std::to_string(resp.pre_encoded()) + " pre-encoded)").c_str() : "");
  return 0;
}

int Stats(const Common& c, const std::string& collection) {
  auto ch = Connect(c);
  if (!ch.ok()) return Fail(ch.status(), "connect");
  auto stub = ragserve::v1::RagService::NewStub(*ch);
  grpc::ClientContext ctx;
  Prepare(c, &ctx, /*admin=*/true);
  ragserve::v1::StatsRequest req;
  req.set_collection(collection);
  ragserve::v1::StatsResponse r;
  grpc::Status st = stub->Stats(&ctx, req, &r);
  if (!st.ok()) return Fail(st, "stats");
  const auto& i = r.info();
  std::printf(
      "collection %s: dimension %d, %lld documents, %lld vectors, index %lld KiB, "
      "disk %lld KiB%s\n",
      i.spec().name().c_str(), i.spec().dimension(), static_cast<long long>(i.num_documents()),
      static_cast<long long>(i.num_vectors()), static_cast<long long>(i.index_bytes() >> 10),
      static_cast<long long>(i.disk_bytes() >> 10), i.rebuilding() ? ", rebuilding" : "");
  return 0;
}

int Load(const Common& c) {
  auto ch = Connect(c);
  if (!ch.ok()) return Fail(ch.status(), "connect");
  auto stub = ragserve::v1::DecoderService::NewStub(*ch);
  grpc::ClientContext ctx;
  Prepare(c, &ctx, /*admin=*/true);
  ragserve::v1::LoadRequest req;
  ragserve::v1::LoadReport r;
  grpc::Status st = stub->GetLoad(&ctx, req, &r);
  if (!st.ok()) return Fail(st, "load");
  std::printf(
      "worker %s device %s model %s: active %d/%d, queued %d (%lld tokens), free KV %lld MiB\n",
      r.worker_id().c_str(), r.device().c_str(), r.model().hex().c_str(), r.active_sequences(),
      r.max_active_sequences(), r.queued_requests(), static_cast<long long>(r.queued_tokens()),
      static_cast<long long>(r.free_kv_bytes() >> 20));
  return 0;
}

int Collections(const Common& c) {
  auto ch = Connect(c);
  if (!ch.ok()) return Fail(ch.status(), "connect");
  auto stub = ragserve::v1::RagService::NewStub(*ch);
  grpc::ClientContext ctx;
  Prepare(c, &ctx);
  ragserve::v1::ListCollectionsRequest req;
  ragserve::v1::ListCollectionsResponse resp;
  grpc::Status st = stub->ListCollections(&ctx, req, &resp);
  if (!st.ok()) return Fail(st, "list collections");
  std::printf("%-24s %6s %10s %10s\n", "name", "dim", "documents", "vectors");
  for (const auto& col : resp.collections()) {
    std::printf("%-24s %6d %10lld %10lld\n", col.spec().name().c_str(), col.spec().dimension(),
                static_cast<long long>(col.num_documents()),
                static_cast<long long>(col.num_vectors()));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("ragctl: command-line client for a ragserve cluster", "ragctl");
  app.require_subcommand(1);
  Common c;
  app.add_option("--addr", c.addr, "Service address host:port (the router for query)")
      ->envname("RAGSERVE_ADDR");
  app.add_option("--token", c.token, "Bearer token")->envname("RAGSERVE_AUTH_TOKEN");
  app.add_option("--admin-token", c.admin_token,
                 "Admin bearer token, sent by stats, load and ingest --create")
      ->envname("RAGSERVE_ADMIN_TOKEN");
  app.add_option("--tls-ca", c.tls_ca, "PEM CA bundle: use TLS")->check(CLI::ExistingFile);
  app.add_option("--tls-cert", c.tls_cert, "PEM client certificate (mutual TLS)")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-key", c.tls_key, "PEM key of --tls-cert")->check(CLI::ExistingFile);
  app.add_option("--timeout", c.timeout_s, "Deadline of the call in seconds")
      ->check(CLI::PositiveNumber);

  std::string service;
  auto* health = app.add_subcommand("health", "gRPC health of a service");
  health->add_option("--service", service, "Service name (empty = the whole server)");

  ragserve::v1::QueryRequest qreq;
  std::string question, collection = "docs";
  int top_k = 0, max_tokens = 64;
  float temperature = 0;
  uint64_t seed = 0;
  bool no_passages = false, cache = true;
  auto* query = app.add_subcommand("query", "Ask a RAG question; the answer streams");
  query->add_option("question", question, "The question")->required();
  query->add_option("--collection", collection, "Collection to search");
  query->add_option("--top-k", top_k, "Passages to retrieve (0 = server default)");
  query->add_option("--max-tokens", max_tokens, "Tokens to generate at most")
      ->check(CLI::PositiveNumber);
  query->add_option("--temperature", temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
  query->add_option("--seed", seed, "Sampling seed");
  query->add_flag("--no-passages", no_passages, "Do not print the retrieved passages");
  bool ignore_eos = false;
  query->add_flag("--ignore-eos", ignore_eos, "Generate max-tokens tokens even past EOS");
  query->add_option("--context-cache", cache, "Use pre-encoded passage KV (true/false)");

  auto* colls = app.add_subcommand("collections", "List collections");
  auto* load = app.add_subcommand("load", "Load report of a decode worker (--addr)");
  std::string stats_collection = "docs";
  auto* stats = app.add_subcommand("stats", "Statistics of a collection");
  stats->add_option("--collection", stats_collection, "Collection")->capture_default_str();

  IngestOptions io;
  auto* ing = app.add_subcommand("ingest", "Ingest JSONL documents, text files or folders");
  ing->add_option("paths", io.paths, "JSONL files ({id,text,metadata}), .txt/.md files, folders")
      ->required();
  ing->add_option("--collection", io.collection, "Collection")->capture_default_str();
  ing->add_flag("--create", io.create, "Create the collection if it does not exist");
  ing->add_option("--dimension", io.dimension, "Embedding dimension (with --create)")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  ing->add_option("--index", io.index, "flat | hnsw | ivf_flat | ivf_pq (with --create)")
      ->capture_default_str()
      ->check(CLI::IsMember({"flat", "hnsw", "ivf_flat", "ivf_pq"}));
  ing->add_option("--metric", io.metric, "cosine | ip | l2 (with --create)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cosine", "ip", "l2"}));
  ing->add_option("--batch", io.batch, "Documents per message (router --max-ingest-docs)")
      ->capture_default_str()
      ->check(CLI::Range(1, 10000));
  ing->add_flag("--pre-encode", io.pre_encode, "Also pre-encode passages in the context cache");

  ragserve::v1::GenerateRequest greq;
  std::string prompt;
  bool raw = false;
  int gen_max_tokens = 64;
  auto* gen = app.add_subcommand("generate", "Generate from a decode worker directly (--addr)");
  gen->add_option("prompt", prompt, "Question (or raw prompt with --raw)")->required();
  gen->add_flag("--raw", raw, "Send the prompt as is, without the RAG template");
  gen->add_option("--max-tokens", gen_max_tokens, "Tokens to generate at most")
      ->check(CLI::PositiveNumber);
  gen->add_option("--temperature", temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
  gen->add_option("--seed", seed, "Sampling seed");

  CLI11_PARSE(app, argc, argv);
  if (health->parsed()) return Health(c, service);
  if (query->parsed()) {
    qreq.set_collection(collection);
    qreq.set_question(question);
    qreq.set_top_k(top_k);
    qreq.set_use_context_cache(cache);
    qreq.mutable_sampling()->set_max_tokens(max_tokens);
    qreq.mutable_sampling()->set_temperature(temperature);
    qreq.mutable_sampling()->set_seed(seed);
    qreq.mutable_sampling()->set_ignore_eos(ignore_eos);
    return Query(c, qreq, !no_passages);
  }
  if (colls->parsed()) return Collections(c);
  if (load->parsed()) return Load(c);
  if (stats->parsed()) return Stats(c, stats_collection);
  if (ing->parsed()) return Ingest(c, io);
  if (gen->parsed()) {
    if (raw) {
      greq.set_prompt_override(prompt);
    } else {
      greq.set_question(prompt);
    }
    greq.mutable_sampling()->set_max_tokens(gen_max_tokens);
    greq.mutable_sampling()->set_temperature(temperature);
    greq.mutable_sampling()->set_seed(seed);
    return Generate(c, greq);
  }
  return 1;
}
