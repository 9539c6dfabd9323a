#include "tests/rpcfuzz/rpc_table.h"

#include <google/protobuf/descriptor.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "ragserve/v1/ctxcache.grpc.pb.h"
#include "ragserve/v1/decoder.grpc.pb.h"
#include "ragserve/v1/index.grpc.pb.h"
#include "ragserve/v1/kvr.grpc.pb.h"
#include "ragserve/v1/rag.grpc.pb.h"

namespace ragserve::rpcfuzz {
namespace {

using grpc::StatusCode;
using C = StatusCode;

// What any request may get back (DESIGN.md "Contracts that cross services"): accepted, rejected
// as bad input, unknown object, overload, or the client's own deadline / cancellation. Never
// INTERNAL (a bug), UNKNOWN (an escaped exception), DATA_LOSS (storage corruption), UNIMPLEMENTED
// or UNAUTHENTICATED (no auth in the fuzz cluster).
const std::set<StatusCode> kBase = {
    C::OK,       C::INVALID_ARGUMENT, C::NOT_FOUND, C::RESOURCE_EXHAUSTED, C::DEADLINE_EXCEEDED,
    C::CANCELLED};

struct Row {
  const char* service;  // cluster name
  const char* path;
  std::set<StatusCode> extra;  // beyond kBase
  const char* why;             // where the extra codes come from
};

// One row per RPC. Extra codes and their reasons:
//  ALREADY_EXISTS      creating what exists (collection, sequence id, queued request id).
//  FAILED_PRECONDITION the object is in the wrong state: a released kvr sequence, KV made by
//                      another model fingerprint, an IVF index asked to train twice or with too
//                      few vectors, pre_encode without a context cache.
//  UNAVAILABLE         the router lost or could not reach a backend (DESIGN.md: "a worker lost
//                      mid-stream -> router retries elsewhere or UNAVAILABLE"); a decoder whose
//                      remote kvr/ctxcache is unreachable.
const Row kRows[] = {
    {"router", "/ragserve.v1.RagService/Query", {C::FAILED_PRECONDITION, C::UNAVAILABLE}, "worker"},
    {"router",
     "/ragserve.v1.RagService/Ingest",
     {C::ALREADY_EXISTS, C::FAILED_PRECONDITION, C::UNAVAILABLE},
     "index/ctxcache behind it"},
    {"router", "/ragserve.v1.RagService/CreateCollection", {C::ALREADY_EXISTS, C::UNAVAILABLE}, ""},
    {"router", "/ragserve.v1.RagService/DropCollection", {C::UNAVAILABLE}, ""},
    {"router", "/ragserve.v1.RagService/ListCollections", {C::UNAVAILABLE}, ""},
    {"router", "/ragserve.v1.RagService/Stats", {C::UNAVAILABLE}, ""},
    {"router", "/ragserve.v1.RagService/Delete", {C::UNAVAILABLE}, ""},
    {"router", "/ragserve.v1.RagService/Embed", {C::UNAVAILABLE}, ""},
    {"index", "/ragserve.v1.IndexService/CreateCollection", {C::ALREADY_EXISTS}, ""},
    {"index", "/ragserve.v1.IndexService/DropCollection", {}, ""},
    {"index", "/ragserve.v1.IndexService/ListCollections", {}, ""},
    {"index", "/ragserve.v1.IndexService/Upsert", {C::FAILED_PRECONDITION}, "ivf"},
    {"index", "/ragserve.v1.IndexService/Delete", {}, ""},
    {"index", "/ragserve.v1.IndexService/Search", {C::FAILED_PRECONDITION}, "ivf untrained"},
    {"index", "/ragserve.v1.IndexService/GetDocuments", {}, ""},
    {"index", "/ragserve.v1.IndexService/Stats", {}, ""},
    {"index", "/ragserve.v1.IndexService/Embed", {}, ""},
    {"index", "/ragserve.v1.IndexService/Rebuild", {C::FAILED_PRECONDITION}, "ivf training"},
    {"kvr",
     "/ragserve.v1.KvRetrievalService/CreateSequence",
     {C::ALREADY_EXISTS, C::FAILED_PRECONDITION},
     "sequence id"},
    {"kvr", "/ragserve.v1.KvRetrievalService/Append", {C::FAILED_PRECONDITION}, "released"},
    {"kvr", "/ragserve.v1.KvRetrievalService/Attend", {C::FAILED_PRECONDITION}, "released"},
    {"kvr", "/ragserve.v1.KvRetrievalService/Release", {C::FAILED_PRECONDITION}, "released"},
    {"kvr", "/ragserve.v1.KvRetrievalService/Stats", {}, ""},
    {"ctxcache", "/ragserve.v1.ContextCacheService/Encode", {C::FAILED_PRECONDITION}, "model"},
    {"ctxcache", "/ragserve.v1.ContextCacheService/Get", {C::FAILED_PRECONDITION}, "model"},
    {"ctxcache", "/ragserve.v1.ContextCacheService/Has", {C::FAILED_PRECONDITION}, "model"},
    {"ctxcache", "/ragserve.v1.ContextCacheService/Evict", {}, ""},
    {"ctxcache", "/ragserve.v1.ContextCacheService/Stats", {}, ""},
    {"decoder",
     "/ragserve.v1.DecoderService/Generate",
     {C::ALREADY_EXISTS, C::FAILED_PRECONDITION, C::UNAVAILABLE},
     "request id; cached KV"},
    {"decoder", "/ragserve.v1.DecoderService/GetLoad", {}, ""},
    {"decoder", "/ragserve.v1.DecoderService/Cancel", {}, ""},
};

const char* const kServices[] = {"ragserve.v1.RagService", "ragserve.v1.IndexService",
                                 "ragserve.v1.KvRetrievalService",
                                 "ragserve.v1.ContextCacheService", "ragserve.v1.DecoderService"};

std::vector<RpcSpec> Build() {
  std::vector<RpcSpec> out;
  const auto* pool = google::protobuf::DescriptorPool::generated_pool();
  // Touch each generated file so its descriptors are in the pool.
  (void)v1::RagService::service_full_name();
  (void)v1::IndexService::service_full_name();
  (void)v1::KvRetrievalService::service_full_name();
  (void)v1::ContextCacheService::service_full_name();
  (void)v1::DecoderService::service_full_name();
  for (const char* name : kServices) {
    const auto* sd = pool->FindServiceByName(name);
    if (sd == nullptr) {
      std::fprintf(stderr, "rpc_fuzz: service %s not in the descriptor pool\n", name);
      std::abort();
    }
    for (int i = 0; i < sd->method_count(); ++i) {
      const auto* md = sd->method(i);
      const std::string path = "/" + sd->full_name() + "/" + md->name();
      const Row* row = nullptr;
      for (const Row& r : kRows) {
        if (path == r.path) row = &r;
      }
      if (row == nullptr) {
        std::fprintf(stderr, "rpc_fuzz: %s has no row in rpc_table.cc (allowed codes)\n",
                     path.c_str());
        std::abort();
      }
      if (md->client_streaming() && md->server_streaming()) {
        std::fprintf(stderr, "rpc_fuzz: %s is bidi; add a CallKind for it\n", path.c_str());
        std::abort();
      }
      RpcSpec spec;
      spec.service = row->service;
      spec.path = path;
      spec.method = md;
      spec.kind = md->client_streaming()   ? CallKind::kClientStream
                  : md->server_streaming() ? CallKind::kServerStream
                                           : CallKind::kUnary;
      spec.allowed = kBase;
      spec.allowed.insert(row->extra.begin(), row->extra.end());
      out.push_back(std::move(spec));
    }
  }
  return out;
}

std::unique_ptr<grpc::ClientContext> Ctx(double seconds = 30, const std::string& token = "") {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
  return ctx;
}

void SetTensor(v1::Tensor* t, std::vector<int64_t> shape, float base) {
  t->set_dtype(v1::DTYPE_F32);
  int64_t n = 1;
  for (int64_t d : shape) {
    t->add_shape(d);
    n *= d;
  }
  std::string bytes(static_cast<size_t>(n * 4), '\0');
  for (int64_t i = 0; i < n; ++i) {
    const float v = base + 0.01f * static_cast<float>((i * 7) % 13);
    std::memcpy(&bytes[i * 4], &v, 4);
  }
  t->set_data(std::move(bytes));
}

// kvr seed geometry: 2 layers, 1 kv head, 2 q heads, head_dim 4, 8 tokens.
constexpr int kLayers = 2, kKvHeads = 1, kQHeads = 2, kDim = 4, kTokens = 8;

v1::SequenceSpec SeqSpec(const std::string& id, const std::string& fp) {
  v1::SequenceSpec s;
  s.set_sequence_id(id);
  s.set_num_layers(kLayers);
  s.set_num_kv_heads(kKvHeads);
  s.set_num_q_heads(kQHeads);
  s.set_head_dim(kDim);
  s.set_store_dtype(v1::DTYPE_F32);
  s.set_sink_tokens(1);
  s.set_window_tokens(2);
  s.set_index_kind(v1::KEY_INDEX_EXACT);
  s.set_ttl_seconds(600);
  if (!fp.empty()) s.mutable_model()->set_hex(fp);
  return s;
}

void AddKv(v1::KvChunk* c, int layer, int tokens, bool queries) {
  c->set_layer(layer);
  SetTensor(c->mutable_k(), {tokens, kKvHeads, kDim}, 0.1f * layer);
  SetTensor(c->mutable_v(), {tokens, kKvHeads, kDim}, -0.1f * layer);
  if (queries) SetTensor(c->mutable_prefill_queries(), {tokens, kQHeads, kDim}, 0.2f);
}

v1::CollectionSpec CollSpec(const std::string& name) {
  v1::CollectionSpec s;
  s.set_name(name);
  s.set_dimension(8);
  s.set_metric(v1::METRIC_COSINE);
  s.set_index_kind(v1::INDEX_KIND_HNSW);
  return s;
}

void AddDoc(google::protobuf::RepeatedPtrField<v1::Document>* docs, const std::string& id,
            const std::string& text, bool vector) {
  v1::Document* d = docs->Add();
  d->set_id(id);
  d->set_text(text);
  d->set_metadata_json("{\"topic\":\"physics\",\"n\":1}");
  if (vector) {
    for (int i = 0; i < 8; ++i) d->add_vector(0.1f * static_cast<float>(i + 1));
  }
}

template <typename T>
std::unique_ptr<google::protobuf::Message> Own(const T& m) {
  return std::make_unique<T>(m);
}

MessageList One(std::unique_ptr<google::protobuf::Message> m) {
  MessageList l;
  l.push_back(std::move(m));
  return l;
}

}  // namespace

const std::vector<RpcSpec>& AllRpcs() {
  static const std::vector<RpcSpec> kAll = Build();
  return kAll;
}

const RpcSpec* FindRpc(const std::string& path) {
  for (const RpcSpec& r : AllRpcs()) {
    if (r.path == path) return &r;
  }
  return nullptr;
}

bool Allowed(const RpcSpec& rpc, grpc::StatusCode code, bool invalid_utf8) {
  if (rpc.allowed.count(code)) return true;
  // protobuf's proto3 parser refuses invalid UTF-8 in a string field, and grpc++ answers a request
  // that fails to parse before any handler runs: INTERNAL from a sync handler, UNIMPLEMENTED
  // (empty message) from a callback handler. The gRPC library's answer, not the service's.
  return invalid_utf8 &&
         (code == grpc::StatusCode::INTERNAL || code == grpc::StatusCode::UNIMPLEMENTED);
}

Fixtures SetUpFixtures(const std::map<std::string, std::shared_ptr<grpc::Channel>>& channels,
                       const std::string& internal_token, const std::string& admin_token) {
  Fixtures fx;
  auto Ctx = [&](double seconds = 30) { return rpcfuzz::Ctx(seconds, internal_token); };
  {  // ctxcache: the model fingerprint and one cached passage.
    auto stub = v1::ContextCacheService::NewStub(channels.at("ctxcache"));
    v1::CtxStatsResponse stats;
    auto ctx = rpcfuzz::Ctx(30, admin_token);
    if (stub->Stats(ctx.get(), v1::CtxStatsRequest(), &stats).ok()) {
      fx.fingerprint = stats.model().hex();
    }
    v1::EncodeRequest req;
    req.mutable_model()->set_hex(fx.fingerprint);
    auto* p = req.add_passages();
    p->set_id("d0");
    p->set_text("The Quillmoor ferry leaves at nine in the morning.");
    v1::EncodeResponse resp;
    auto ctx2 = Ctx(60);
    if (stub->Encode(ctx2.get(), req, &resp).ok() && resp.results_size() > 0) {
      fx.passage_key = resp.results(0).key().hex();
      fx.prefix_key = resp.prefix_key().hex();
    }
  }
  {  // index: collection "fz" with three documents.
    auto stub = v1::IndexService::NewStub(channels.at("index"));
    v1::CreateCollectionRequest req;
    *req.mutable_spec() = CollSpec("fz");
    v1::CreateCollectionResponse resp;
    auto ctx = Ctx();
    (void)stub->CreateCollection(ctx.get(), req, &resp);
    auto ctx2 = Ctx();
    v1::UpsertResponse up;
    auto w = stub->Upsert(ctx2.get(), &up);
    v1::UpsertRequest u;
    u.set_collection("fz");
    AddDoc(u.mutable_documents(), "d0", "The Quillmoor ferry leaves at nine.", true);
    AddDoc(u.mutable_documents(), "d1", "Physics of light and heat.", false);
    AddDoc(u.mutable_documents(), "d2", "A passage about rivers.", false);
    v1::Document* chunk = u.add_documents();  // a passage of a longer document
    chunk->set_id("doc-a#1");
    chunk->set_text("Rivers carry light and heat downstream.");
    chunk->set_document_id("doc-a");
    chunk->set_chunk_index(1);
    chunk->set_offset(120);
    w->Write(u);
    w->WritesDone();
    (void)w->Finish();
  }
  {  // kvr: sequence "fzseq".
    auto stub = v1::KvRetrievalService::NewStub(channels.at("kvr"));
    auto ctx = Ctx();
    v1::CreateSequenceResponse resp;
    auto w = stub->CreateSequence(ctx.get(), &resp);
    v1::CreateSequenceRequest req;
    *req.mutable_spec() = SeqSpec("fzseq", "");
    for (int l = 0; l < kLayers; ++l) AddKv(req.add_chunks(), l, kTokens, false);
    w->Write(req);
    w->WritesDone();
    (void)w->Finish();
  }
  return fx;
}

std::vector<MessageList> Seeds(const RpcSpec& rpc, const Fixtures& fx) {
  std::vector<MessageList> out;
  const std::string& m = rpc.method->name();
  const std::string svc = rpc.method->service()->name();
  if (svc == "RagService") {
    if (m == "Query") {
      v1::QueryRequest q;
      q.set_collection("fz");
      q.set_question("When does the Quillmoor ferry leave?");
      q.set_top_k(2);
      q.mutable_sampling()->set_max_tokens(4);
      q.mutable_sampling()->set_ignore_eos(true);
      out.push_back(One(Own(q)));
      q.set_use_context_cache(true);
      q.mutable_sampling()->set_temperature(0.8f);
      q.mutable_sampling()->set_top_k(5);
      q.mutable_sampling()->add_stop("the");
      (*q.mutable_filter()->mutable_equals())["topic"] = "\"physics\"";
      out.push_back(One(Own(q)));
      // A chat (with and without retrieval) and a raw completion prompt.
      q.clear_question();
      auto* turn = q.add_messages();
      turn->set_role("user");
      turn->set_content("And the ferry back?");
      out.push_back(One(Own(q)));
      q.clear_collection();
      out.push_back(One(Own(q)));
      q.clear_messages();
      q.set_prompt("Once upon a time");
      out.push_back(One(Own(q)));
      // Query by vector, BM25 only, weighted hybrid, range and any-of filters.
      v1::QueryRequest v;
      v.set_collection("fz");
      v.set_question("ferry");
      for (int i = 0; i < 8; ++i) v.add_vector(0.1f * static_cast<float>(i + 1));
      v.mutable_sampling()->set_max_tokens(2);
      out.push_back(One(Own(v)));
      v.clear_vector();
      v.set_retrieval(v1::RETRIEVAL_MODE_BM25);
      (*v.mutable_filter()->mutable_ranges())["n"].set_gte(0.5);
      out.push_back(One(Own(v)));
      v.set_retrieval(v1::RETRIEVAL_MODE_HYBRID);
      v.mutable_fusion()->set_method(v1::FUSION_METHOD_WEIGHTED);
      v.mutable_fusion()->set_dense_weight(0.3);
      (*v.mutable_filter()->mutable_any_of())["topic"].add_values("\"physics\"");
      out.push_back(One(Own(v)));
    } else if (m == "Delete") {
      v1::DeleteRequest r;
      r.set_collection("fz");
      r.add_ids("d2");
      r.add_document_ids("doc-a");
      out.push_back(One(Own(r)));
    } else if (m == "Embed") {
      v1::EmbedRequest r;
      r.set_collection("fz");
      r.add_texts("ferry");
      r.add_texts("");
      out.push_back(One(Own(r)));
    } else if (m == "Ingest") {
      MessageList l;
      v1::IngestRequest a;
      a.set_collection("fz2");
      *a.mutable_create_spec() = CollSpec("fz2");
      AddDoc(a.mutable_documents(), "d0", "First document about ferries.", false);
      l.push_back(Own(a));
      v1::IngestRequest b;
      AddDoc(b.mutable_documents(), "d1", "Second document.", true);
      AddDoc(b.mutable_documents(), "d2", "Third document.", false);
      l.push_back(Own(b));
      out.push_back(std::move(l));
      MessageList l2;
      a.set_pre_encode(true);
      l2.push_back(Own(a));
      out.push_back(std::move(l2));
    } else if (m == "CreateCollection") {
      v1::CreateCollectionRequest r;
      *r.mutable_spec() = CollSpec("fz2");
      out.push_back(One(Own(r)));
    } else if (m == "DropCollection") {
      v1::DropCollectionRequest r;
      r.set_name("fz2");
      out.push_back(One(Own(r)));
    } else if (m == "ListCollections") {
      out.push_back(One(Own(v1::ListCollectionsRequest())));
    } else if (m == "Stats") {
      v1::StatsRequest r;
      r.set_collection("fz");
      out.push_back(One(Own(r)));
    }
  } else if (svc == "IndexService") {
    if (m == "CreateCollection") {
      v1::CreateCollectionRequest r;
      *r.mutable_spec() = CollSpec("fz2");
      out.push_back(One(Own(r)));
      r.mutable_spec()->set_index_kind(v1::INDEX_KIND_IVF_PQ);
      r.mutable_spec()->mutable_params()->set_ivf_nlist(2);
      r.mutable_spec()->mutable_params()->set_pq_m(2);
      r.mutable_spec()->mutable_params()->set_pq_nbits(4);
      out.push_back(One(Own(r)));
    } else if (m == "DropCollection") {
      v1::DropCollectionRequest r;
      r.set_name("fz2");
      out.push_back(One(Own(r)));
    } else if (m == "ListCollections") {
      out.push_back(One(Own(v1::ListCollectionsRequest())));
    } else if (m == "Upsert") {
      MessageList l;
      v1::UpsertRequest a;
      a.set_collection("fz");
      AddDoc(a.mutable_documents(), "d3", "A new document about trains.", false);
      l.push_back(Own(a));
      v1::UpsertRequest b;
      AddDoc(b.mutable_documents(), "d4", "Vectors are lists of numbers.", true);
      l.push_back(Own(b));
      out.push_back(std::move(l));
    } else if (m == "Delete") {
      v1::DeleteRequest r;
      r.set_collection("fz");
      r.add_ids("d3");
      r.add_ids("nope");
      out.push_back(One(Own(r)));
    } else if (m == "Search") {
      v1::SearchRequest r;
      r.set_collection("fz");
      r.add_queries()->set_text("ferry");
      auto* q = r.add_queries();
      for (int i = 0; i < 8; ++i) q->add_vector(0.1f * static_cast<float>(i));
      r.set_k(2);
      r.set_include_text(true);
      out.push_back(One(Own(r)));
      (*r.mutable_filter()->mutable_equals())["topic"] = "\"physics\"";
      r.set_ef_search(16);
      out.push_back(One(Own(r)));
      r.set_retrieval(v1::RETRIEVAL_MODE_BM25);
      r.clear_queries();
      r.add_queries()->set_text("rivers and light");
      (*r.mutable_filter()->mutable_ranges())["n"].set_lt(3);
      (*r.mutable_filter()->mutable_any_of())["topic"].add_values("\"physics\"");
      out.push_back(One(Own(r)));
      r.set_retrieval(v1::RETRIEVAL_MODE_HYBRID);
      r.mutable_fusion()->set_method(v1::FUSION_METHOD_RRF);
      r.mutable_fusion()->set_rrf_k(10);
      out.push_back(One(Own(r)));
    } else if (m == "GetDocuments") {
      v1::GetDocumentsRequest r;
      r.set_collection("fz");
      r.add_ids("d0");
      r.add_ids("d9");
      out.push_back(One(Own(r)));
    } else if (m == "Stats") {
      v1::StatsRequest r;
      r.set_collection("fz");
      out.push_back(One(Own(r)));
    } else if (m == "Embed") {
      v1::EmbedRequest r;
      r.set_collection("fz");
      r.add_texts("ferry");
      out.push_back(One(Own(r)));
    } else if (m == "Rebuild") {
      v1::RebuildRequest r;
      r.set_collection("fz");
      r.set_index_kind(v1::INDEX_KIND_FLAT);
      out.push_back(One(Own(r)));
      r.set_index_kind(v1::INDEX_KIND_HNSW);
      r.mutable_params()->set_hnsw_m(8);
      out.push_back(One(Own(r)));
    }
  } else if (svc == "KvRetrievalService") {
    if (m == "CreateSequence") {
      MessageList l;
      v1::CreateSequenceRequest a;
      *a.mutable_spec() = SeqSpec("fzq", fx.fingerprint);
      a.mutable_spec()->set_index_kind(v1::KEY_INDEX_ATTENTION_AWARE);
      AddKv(a.add_chunks(), 0, kTokens / 2, true);
      AddKv(a.add_chunks(), 1, kTokens / 2, true);
      l.push_back(Own(a));
      v1::CreateSequenceRequest b;
      AddKv(b.add_chunks(), 0, kTokens / 2, true);
      AddKv(b.add_chunks(), 1, kTokens / 2, true);
      l.push_back(Own(b));
      out.push_back(std::move(l));
      MessageList l2;
      a.mutable_spec()->set_index_kind(v1::KEY_INDEX_HNSW);
      a.mutable_spec()->set_store_dtype(v1::DTYPE_F16);
      l2.push_back(Own(a));
      out.push_back(std::move(l2));
    } else if (m == "Append") {
      v1::AppendRequest r;
      r.set_sequence_id("fzseq");
      AddKv(r.add_chunks(), 0, 1, false);
      AddKv(r.add_chunks(), 1, 1, false);
      out.push_back(One(Own(r)));
    } else if (m == "Attend") {
      v1::AttendRequest r;
      r.set_sequence_id("fzseq");
      for (int l = 0; l < kLayers; ++l) {
        auto* it = r.add_items();
        it->set_layer(l);
        SetTensor(it->mutable_queries(), {kQHeads, kDim}, 0.3f);
      }
      r.set_top_k(3);
      out.push_back(One(Own(r)));
      r.set_retrieved_only(true);
      r.set_ef_search(8);
      out.push_back(One(Own(r)));
    } else if (m == "Release") {
      v1::ReleaseRequest r;
      r.set_sequence_id("fzq");
      out.push_back(One(Own(r)));
    } else if (m == "Stats") {
      out.push_back(One(Own(v1::KvrStatsRequest())));
    }
  } else if (svc == "ContextCacheService") {
    if (m == "Encode") {
      v1::EncodeRequest r;
      r.mutable_model()->set_hex(fx.fingerprint);
      auto* p = r.add_passages();
      p->set_id("d1");
      p->set_text("Rivers run to the sea.");
      out.push_back(One(Own(r)));
      r.mutable_settings()->set_temperature(0.9f);
      r.mutable_settings()->set_scale(0.8f);
      r.mutable_settings()->set_store_dtype(v1::DTYPE_F16);
      out.push_back(One(Own(r)));
    } else if (m == "Get") {
      v1::GetRequest r;
      r.mutable_model()->set_hex(fx.fingerprint);
      r.mutable_key()->set_hex(fx.passage_key);
      out.push_back(One(Own(r)));
      if (!fx.prefix_key.empty()) {
        r.mutable_key()->set_hex(fx.prefix_key);
        out.push_back(One(Own(r)));
      }
    } else if (m == "Has") {
      v1::HasRequest r;
      r.mutable_model()->set_hex(fx.fingerprint);
      r.add_keys()->set_hex(fx.passage_key);
      r.add_keys()->set_hex("00000000000000000000000000000000");
      out.push_back(One(Own(r)));
    } else if (m == "Evict") {
      v1::EvictRequest r;
      r.add_keys()->set_hex("00000000000000000000000000000000");
      out.push_back(One(Own(r)));
    } else if (m == "Stats") {
      out.push_back(One(Own(v1::CtxStatsRequest())));
    }
  } else if (svc == "DecoderService") {
    if (m == "Generate") {
      v1::GenerateRequest r;
      r.set_request_id("fz-1");
      r.set_question("When does the ferry leave?");
      auto* p = r.add_passages();
      p->set_id("d0");
      p->set_text("The Quillmoor ferry leaves at nine in the morning.");
      r.mutable_sampling()->set_max_tokens(4);
      r.mutable_sampling()->set_ignore_eos(true);
      out.push_back(One(Own(r)));
      p->mutable_cache_key()->set_hex(fx.passage_key);
      r.mutable_sampling()->set_temperature(0.7f);
      r.mutable_sampling()->set_seed(7);
      r.add_resume_token_ids(5);
      r.add_resume_token_ids(6);
      out.push_back(One(Own(r)));
      v1::GenerateRequest raw;
      raw.set_request_id("fz-2");
      raw.set_prompt_override("Once upon a time");
      raw.set_sequential_context(true);
      raw.mutable_sampling()->set_max_tokens(3);
      raw.mutable_sampling()->add_stop("\n");
      out.push_back(One(Own(raw)));
    } else if (m == "GetLoad") {
      out.push_back(One(Own(v1::LoadRequest())));
    } else if (m == "Cancel") {
      v1::CancelRequest r;
      r.set_request_id("fz-1");
      out.push_back(One(Own(r)));
    }
  }
  return out;
}

}  // namespace ragserve::rpcfuzz
