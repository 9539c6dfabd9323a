// ragctl: command-line client for a ragserve cluster.
//
//   ragctl health [--addr host:port] [--service NAME]      gRPC health of any ragserve service
//   ragctl query "question" [--collection C] [--top-k K]  streamed RAG answer from the router
//   ragctl collections                                     collections known to the router
//
// Every command takes --addr (RAGSERVE_ADDR), --token (RAGSERVE_AUTH_TOKEN), --tls-ca and
// --timeout. Exit codes: 0 ok, 1 usage, 2 the call failed (the gRPC code and message are printed).
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

#include "ragserve/v1/decoder.grpc.pb.h"
#include "ragserve/v1/rag.grpc.pb.h"
#include "services/common/auth.h"
#include "services/common/client.h"
#include "services/common/grpc_status.h"

namespace {

struct Common {
  std::string addr = "127.0.0.1:50051";
  std::string token;
  std::string tls_ca;
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

void Prepare(const Common& c, grpc::ClientContext* ctx) {
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(c.timeout_s * 1000)));
  ragserve::AttachToken(ctx, c.token);
}

int Health(const Common& c, const std::string& service) {
  ragserve::ChannelOptions opts;
  opts.tls_ca = c.tls_ca;
  auto ch = ragserve::MakeChannel(c.addr, opts);
  if (!ch.ok()) return Fail(ch.status(), "connect");
  ragserve::Status st = ragserve::CheckHealth(*ch, service, c.timeout_s);
  if (!st.ok()) return Fail(st, "health of " + c.addr);
  std::printf("%s%s%s: SERVING\n", c.addr.c_str(), service.empty() ? "" : " ", service.c_str());
  return 0;
}

int Query(const Common& c, const ragserve::v1::QueryRequest& req, bool show_passages) {
  ragserve::ChannelOptions opts;
  opts.tls_ca = c.tls_ca;
  auto ch = ragserve::MakeChannel(c.addr, opts);
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
      std::fwrite(ev.delta().text().data(), 1, ev.delta().text().size(), stdout);
      std::fflush(stdout);
    } else if (ev.has_stats()) {
      const auto& s = ev.stats();
      const auto& t = s.timings();
      if (answering) std::printf("\n");
      std::printf(
          "stats: embed %.1f ms, search %.1f ms, context %.1f ms, prefill %.1f ms, "
          "TTFT %.1f ms, decode %.1f tok/s, total %.1f ms\n"
          "       prompt %d tokens (%d cached), generated %d, finish %s, worker %s, retries %d\n",
          t.embed_ms(), t.search_ms(), t.context_ms(), t.prefill_ms(), t.ttft_ms(),
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
  ragserve::ChannelOptions opts;
  opts.tls_ca = c.tls_ca;
  auto ch = ragserve::MakeChannel(c.addr, opts);
  if (!ch.ok()) return Fail(ch.status(), "connect");
  auto stub = ragserve::v1::DecoderService::NewStub(*ch);
  grpc::ClientContext ctx;
  Prepare(c, &ctx);
  auto reader = stub->Generate(&ctx, req);
  ragserve::v1::GenerateEvent ev;
  while (reader->Read(&ev)) {
    if (ev.has_delta()) {
      std::fwrite(ev.delta().text().data(), 1, ev.delta().text().size(), stdout);
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

int Collections(const Common& c) {
  ragserve::ChannelOptions opts;
  opts.tls_ca = c.tls_ca;
  auto ch = ragserve::MakeChannel(c.addr, opts);
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
  app.add_option("--tls-ca", c.tls_ca, "PEM CA bundle: use TLS")->check(CLI::ExistingFile);
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
  query->add_option("--context-cache", cache, "Use pre-encoded passage KV (true/false)");

  auto* colls = app.add_subcommand("collections", "List collections");

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
    return Query(c, qreq, !no_passages);
  }
  if (colls->parsed()) return Collections(c);
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
