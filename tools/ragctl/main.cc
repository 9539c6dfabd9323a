// ragctl: command-line client for a ragserve cluster.
//
//   ragctl health [--addr host:port] [--service NAME]      gRPC health of any ragserve service
//   ragctl query "question" [--collection C] [--top-k K]  streamed RAG answer from the router
//   ragctl collections                                     collections known to the router
//   ragctl ingest PATH... [--collection C] [--create]     JSONL, .txt/.md/.html files, folders,
//                                                          streamed and cut into passages
//   ragctl generate "prompt" --addr decoder               a decode worker directly
//   ragctl load --addr decoder                             a decode worker's load report
//   ragctl stats [--collection C]                          a collection's statistics
//   ragctl delete ID... [--document D] [--collection C]    delete documents / a document's passages
//
// Every command takes --addr (RAGSERVE_ADDR), --token (RAGSERVE_AUTH_TOKEN), --admin-token
// (RAGSERVE_ADMIN_TOKEN: sent instead of --token by the admin commands stats, load and
// ingest --create), --tls-ca, --tls-cert/--tls-key (mutual TLS) and --timeout. Exit codes: 0 ok, 1
// usage, 2 the call failed (the gRPC code and message are printed).
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "ragserve/v1/decoder.grpc.pb.h"
#include "ragserve/v1/rag.grpc.pb.h"
#include "services/common/auth.h"
#include "services/common/chunker.h"
#include "services/common/client.h"
#include "services/common/grpc_status.h"
#include "services/common/wire.h"

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
        std::string where;  // a passage of a longer document: which one, where
        if (!p.document_id().empty() && p.document_id() != p.id()) {
          where = " (" + p.document_id() + " #" + std::to_string(p.chunk_index()) + " @" +
                  std::to_string(p.offset()) + ")";
        }
        std::printf("  [%s]%s %.4f  %s%s\n", p.id().c_str(), where.c_str(), p.score(), text.c_str(),
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
  std::string retrieval = "hybrid";
  std::string embedder = "hashing";
  int batch = 64;
  bool pre_encode = false;
  int chunk_tokens = 200;  // 0 = one passage per document
  int chunk_overlap = 32;
  bool progress = true;
};

// The router's Ingest stream, fed passage by passage: a batch is sent as soon as it is full, so
// memory holds one batch whatever the corpus size.
class IngestStream {
 public:
  IngestStream(ragserve::v1::RagService::Stub* stub, grpc::ClientContext* ctx, int batch)
      : writer_(stub->Ingest(ctx, &resp_)), batch_(batch) {}
  bool Start(const ragserve::v1::IngestRequest& first) { return ok_ = writer_->Write(first); }
  bool Add(ragserve::v1::Document d) {
    *pending_.add_documents() = std::move(d);
    ++sent_;
    return pending_.documents_size() < batch_ || Flush();
  }
  bool Flush() {
    if (ok_ && pending_.documents_size() > 0) ok_ = writer_->Write(pending_);
    pending_.Clear();
    return ok_;
  }
  grpc::Status Finish() {
    Flush();
    writer_->WritesDone();
    return writer_->Finish();
  }
  int64_t sent() const { return sent_; }
  const ragserve::v1::IngestResponse& response() const { return resp_; }

 private:
  ragserve::v1::IngestResponse resp_;
  std::unique_ptr<grpc::ClientWriter<ragserve::v1::IngestRequest>> writer_;
  const int batch_;
  ragserve::v1::IngestRequest pending_;
  bool ok_ = true;
  int64_t sent_ = 0;
};

// A progress bar on stderr: redrawn in place on a terminal (at most 10 times a second), a line
// per 10% otherwise.
class Progress {
 public:
  Progress(uint64_t total, bool enabled) : total_(total), enabled_(enabled), tty_(isatty(2)) {}
  void Update(uint64_t done, int64_t passages, bool last = false) {
    if (!enabled_) return;
    const int pct =
        total_ == 0 ? 100 : static_cast<int>(std::min<uint64_t>(100, done * 100 / total_));
    if (!tty_ && !last && pct == 100) return;  // the last line says it
    const auto now = std::chrono::steady_clock::now();
    if (!last &&
        (tty_ ? now - shown_ < std::chrono::milliseconds(100) : pct / 10 == shown_pct_ / 10)) {
      return;
    }
    shown_ = now;
    shown_pct_ = pct;
    std::string bar(30, '.');
    std::fill(bar.begin(), bar.begin() + pct * 30 / 100, '#');
    std::fprintf(stderr, "%singest [%s] %3d%% %.1f/%.1f MB, %lld passages%s", tty_ ? "\r" : "",
                 bar.c_str(), pct, static_cast<double>(done) / 1e6,
                 static_cast<double>(total_) / 1e6, static_cast<long long>(passages),
                 tty_ && !last ? "" : "\n");
  }

 private:
  const uint64_t total_;
  const bool enabled_, tty_;
  std::chrono::steady_clock::time_point shown_{};
  int shown_pct_ = -1;
};

bool IsTextInput(const std::filesystem::path& p) {
  const auto ext = p.extension();
  return ext == ".txt" || ext == ".md" || ext == ".markdown" || ext == ".html" || ext == ".htm" ||
         ext == ".jsonl";
}

// The input files (a folder's text inputs, sorted) and their total size.
bool ListInputs(const std::vector<std::string>& paths, std::vector<std::string>* files,
                uint64_t* total) {
  namespace fs = std::filesystem;
  for (const auto& path : paths) {
    if (fs::is_directory(path)) {
      std::vector<std::string> found;
      for (const auto& e : fs::recursive_directory_iterator(path)) {
        if (e.is_regular_file() && IsTextInput(e.path())) found.push_back(e.path().string());
      }
      std::sort(found.begin(), found.end());
      files->insert(files->end(), found.begin(), found.end());
    } else if (fs::is_regular_file(path)) {
      files->push_back(path);
    } else {
      std::fprintf(stderr, "ragctl: %s: no such file or folder\n", path.c_str());
      return false;
    }
  }
  std::error_code ec;
  for (const auto& f : *files) *total += fs::file_size(f, ec);
  return true;
}

// Sends one document's passages: a document that fits one passage keeps its id; otherwise the
// passages are "<id>#<n>" with document_id, chunk_index and offset set. The first passage is
// held back until it is known whether a second one follows.
class DocumentSender {
 public:
  DocumentSender(IngestStream* out, std::string id, std::string metadata_json)
      : out_(out), id_(std::move(id)), meta_(std::move(metadata_json)) {}
  bool Send(std::vector<ragserve::chunking::Chunk>* chunks) {
    for (auto& c : *chunks) {
      if (held_ && !Put(std::move(*held_), true)) return false;
      held_.reset();
      if (c.index == 0) {
        held_ = std::move(c);
      } else if (!Put(std::move(c), true)) {
        return false;
      }
    }
    chunks->clear();
    return true;
  }
  bool Finish() { return !held_ || Put(std::move(*held_), false); }

 private:
  bool Put(ragserve::chunking::Chunk c, bool part) {
    if (part) return out_->Add(ragserve::wire::ChunkDocument(id_, meta_, std::move(c)));
    ragserve::v1::Document d;
    d.set_id(id_);
    d.set_text(std::move(c.text));
    d.set_metadata_json(meta_);
    return out_->Add(std::move(d));
  }
  IngestStream* out_;
  const std::string id_, meta_;
  std::optional<ragserve::chunking::Chunk> held_;
};

ragserve::chunking::ChunkOptions ChunkOpts(const IngestOptions& o) {
  // --chunk-tokens 0: one passage per document (the chunker's largest window).
  if (o.chunk_tokens == 0) return {ragserve::chunking::kMaxChunkTokens, 0};
  return {o.chunk_tokens, o.chunk_overlap};
}

// A .txt / .md / .html file, read in 1 MiB blocks (HTML without its tags), chunked as it streams.
bool IngestTextFile(const std::string& path, const IngestOptions& o, IngestStream* out,
                    Progress* progress, uint64_t* done) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "ragctl: %s: cannot read\n", path.c_str());
    return false;
  }
  const auto ext = std::filesystem::path(path).extension();
  const bool html = ext == ".html" || ext == ".htm";
  ragserve::chunking::Chunker chunker(ChunkOpts(o));
  ragserve::chunking::HtmlToText strip;
  DocumentSender sender(out, path, nlohmann::json{{"source", path}}.dump());
  std::vector<ragserve::chunking::Chunk> chunks;
  std::string block(1 << 20, '\0'), text;
  while (f) {
    f.read(block.data(), static_cast<std::streamsize>(block.size()));
    const auto n = static_cast<size_t>(f.gcount());
    if (n == 0) break;
    std::string_view piece(block.data(), n);
    if (html) {
      text.clear();
      strip.Feed(piece, &text);
      piece = text;
    }
    chunker.Feed(piece, &chunks);
    if (!sender.Send(&chunks)) return false;
    *done += n;
    progress->Update(*done, out->sent());
  }
  if (html) {
    text.clear();
    strip.Finish(&text);
    chunker.Feed(text, &chunks);
  }
  chunker.Finish(&chunks);
  return sender.Send(&chunks) && sender.Finish();
}

// JSONL documents ({"id","text","metadata"} per line), each chunked when it is long. Malformed
// lines name the file and line.
bool IngestJsonl(const std::string& path, const IngestOptions& o, IngestStream* out,
                 Progress* progress, uint64_t* done) {
  std::ifstream f(path);
  std::string line;
  int n = 0;
  std::vector<ragserve::chunking::Chunk> chunks;
  while (std::getline(f, line)) {
    ++n;
    *done += line.size() + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("id") || !j["id"].is_string() ||
        !j.contains("text") || !j["text"].is_string()) {
      std::fprintf(stderr, "ragctl: %s:%d: expected {\"id\": string, \"text\": string, ...}\n",
                   path.c_str(), n);
      return false;
    }
    DocumentSender sender(out, j["id"].get<std::string>(),
                          j.contains("metadata") ? j["metadata"].dump() : "");
    ragserve::chunking::Chunker chunker(ChunkOpts(o));
    chunker.Feed(j["text"].get<std::string>(), &chunks);
    chunker.Finish(&chunks);
    if (!sender.Send(&chunks) || !sender.Finish()) return false;
    progress->Update(*done, out->sent());
  }
  return true;
}

ragserve::v1::RetrievalMode RetrievalProto(const std::string& r) {
  return r == "dense"  ? ragserve::v1::RETRIEVAL_MODE_DENSE
         : r == "bm25" ? ragserve::v1::RETRIEVAL_MODE_BM25
                       : ragserve::v1::RETRIEVAL_MODE_HYBRID;
}

ragserve::v1::IngestRequest FirstIngestRequest(const IngestOptions& o) {
  ragserve::v1::IngestRequest first;
  first.set_collection(o.collection);
  first.set_pre_encode(o.pre_encode);
  if (!o.create) return first;
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
  spec->set_embedder(o.embedder);
  spec->set_retrieval(RetrievalProto(o.retrieval));
  return first;
}

int Ingest(const Common& c, const IngestOptions& o) {
  if (auto st = ragserve::chunking::ValidateChunkOptions(ChunkOpts(o)); !st.ok()) {
    std::fprintf(stderr, "ragctl: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  std::vector<std::string> files;
  uint64_t total = 0, done = 0;
  if (!ListInputs(o.paths, &files, &total)) return 1;
  auto ch = Connect(c);
  if (!ch.ok()) return Fail(ch.status(), "connect");
  auto stub = ragserve::v1::RagService::NewStub(*ch);
  grpc::ClientContext ctx;
  Prepare(c, &ctx, /*admin=*/o.create);
  IngestStream out(stub.get(), &ctx, o.batch);
  Progress progress(total, o.progress);
  bool ok = out.Start(FirstIngestRequest(o));
  for (size_t i = 0; ok && i < files.size(); ++i) {
    const bool jsonl = std::filesystem::path(files[i]).extension() == ".jsonl";
    ok = jsonl ? IngestJsonl(files[i], o, &out, &progress, &done)
               : IngestTextFile(files[i], o, &out, &progress, &done);
    if (!ok && out.Flush()) return 1;  // a bad input (the stream itself is fine)
  }
  progress.Update(done, out.sent(), /*last=*/true);
  const grpc::Status st = out.Finish();
  if (!st.ok()) return Fail(st, "ingest");
  const auto& resp = out.response();
  std::printf(
      "ingested %lld passages from %zu files into '%s'%s\n",
      static_cast<long long>(resp.ingested()), files.size(), o.collection.c_str(),
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
      "BM25 %lld documents %lld KiB, memory %lld KiB (--memory-limit-mb counts it), retrieval %s, "
      "disk %lld KiB%s\n",
      i.spec().name().c_str(), i.spec().dimension(), static_cast<long long>(i.num_documents()),
      static_cast<long long>(i.num_vectors()), static_cast<long long>(i.index_bytes() >> 10),
      static_cast<long long>(i.lexical_documents()),
      static_cast<long long>(i.lexical_bytes() >> 10),
      static_cast<long long>(i.memory_bytes() >> 10),
      i.spec().retrieval() == ragserve::v1::RETRIEVAL_MODE_DENSE  ? "dense"
      : i.spec().retrieval() == ragserve::v1::RETRIEVAL_MODE_BM25 ? "bm25"
                                                                  : "hybrid",
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

int Delete(const Common& c, const ragserve::v1::DeleteRequest& req) {
  auto ch = Connect(c);
  if (!ch.ok()) return Fail(ch.status(), "connect");
  auto stub = ragserve::v1::RagService::NewStub(*ch);
  grpc::ClientContext ctx;
  Prepare(c, &ctx);
  ragserve::v1::DeleteResponse resp;
  grpc::Status st = stub->Delete(&ctx, req, &resp);
  if (!st.ok()) return Fail(st, "delete");
  std::printf("deleted %lld documents from '%s'\n", static_cast<long long>(resp.deleted()),
              req.collection().c_str());
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
  std::string query_retrieval;
  query
      ->add_option("--retrieval", query_retrieval,
                   "dense | bm25 | hybrid (default: the collection's)")
      ->check(CLI::IsMember({"dense", "bm25", "hybrid"}));

  ragserve::v1::DeleteRequest dreq;
  std::vector<std::string> delete_ids, delete_docs;
  std::string delete_collection = "docs";
  auto* del =
      app.add_subcommand("delete", "Delete documents (by id, or every passage of a document)");
  del->add_option("ids", delete_ids, "Document ids");
  del->add_option("--document", delete_docs, "Delete every passage of this source document");
  del->add_option("--collection", delete_collection, "Collection")->capture_default_str();
  auto* colls = app.add_subcommand("collections", "List collections");
  auto* load = app.add_subcommand("load", "Load report of a decode worker (--addr)");
  std::string stats_collection = "docs";
  auto* stats = app.add_subcommand("stats", "Statistics of a collection");
  stats->add_option("--collection", stats_collection, "Collection")->capture_default_str();

  IngestOptions io;
  auto* ing = app.add_subcommand("ingest", "Ingest JSONL documents, text files or folders");
  ing->add_option("paths", io.paths,
                  "JSONL files ({id,text,metadata}), .txt/.md/.html files, folders")
      ->required();
  ing->add_option("--collection", io.collection, "Collection")->capture_default_str();
  ing->add_flag("--create", io.create, "Create the collection if it does not exist");
  ing->add_option("--dimension", io.dimension, "Embedding dimension (with --create)")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  ing->add_option("--embedder", io.embedder,
                  "hashing | model:<dir> (a BERT checkpoint directory on the index service's "
                  "machine; --dimension must be its hidden size) (with --create)")
      ->capture_default_str();
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
  ing->add_option("--retrieval", io.retrieval, "dense | bm25 | hybrid (with --create)")
      ->capture_default_str()
      ->check(CLI::IsMember({"dense", "bm25", "hybrid"}));
  ing->add_option("--chunk-tokens", io.chunk_tokens,
                  "Words per passage of a long document (0 = one passage per document)")
      ->capture_default_str()
      ->check(CLI::Range(0, ragserve::chunking::kMaxChunkTokens));
  ing->add_option("--chunk-overlap", io.chunk_overlap, "Words repeated between passages")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  bool no_progress = false;
  ing->add_flag("--no-progress", no_progress, "No progress bar on stderr");

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
    if (!query_retrieval.empty()) qreq.set_retrieval(RetrievalProto(query_retrieval));
    return Query(c, qreq, !no_passages);
  }
  if (colls->parsed()) return Collections(c);
  if (del->parsed()) {
    dreq.set_collection(delete_collection);
    for (const auto& id : delete_ids) dreq.add_ids(id);
    for (const auto& d : delete_docs) dreq.add_document_ids(d);
    return Delete(c, dreq);
  }
  if (load->parsed()) return Load(c);
  if (stats->parsed()) return Stats(c, stats_collection);
  if (ing->parsed()) {
    io.progress = !no_progress;
    return Ingest(c, io);
  }
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
