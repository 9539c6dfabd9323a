#include "services/index/service.h"

#include <nlohmann/json.hpp>

#include "services/common/grpc_status.h"
#include "services/common/grpc_util.h"
#include "services/common/metrics.h"
#include "services/index/retrieval.h"

namespace ragserve::collection {

namespace {

StatusOr<std::string> KindName(v1::IndexKind k) {
  switch (k) {
    case v1::INDEX_KIND_UNSPECIFIED:
    case v1::INDEX_KIND_HNSW:
      return std::string("hnsw");
    case v1::INDEX_KIND_FLAT:
      return std::string("flat");
    case v1::INDEX_KIND_IVF_FLAT:
      return std::string("ivf_flat");
    case v1::INDEX_KIND_IVF_PQ:
      return std::string("ivf_pq");
    default:
      return InvalidArgument(StrCat("unknown index kind ", static_cast<int>(k)));
  }
}

v1::IndexKind KindProto(const std::string& k) {
  if (k == "flat") return v1::INDEX_KIND_FLAT;
  if (k == "ivf_flat") return v1::INDEX_KIND_IVF_FLAT;
  if (k == "ivf_pq") return v1::INDEX_KIND_IVF_PQ;
  return v1::INDEX_KIND_HNSW;
}

v1::Metric MetricProto(index::Metric m) {
  switch (m) {
    case index::Metric::kL2:
      return v1::METRIC_L2;
    case index::Metric::kInnerProduct:
      return v1::METRIC_INNER_PRODUCT;
    default:
      return v1::METRIC_COSINE;
  }
}

// ragserve_index_memory_bytes / _limit_bytes: the collections' memory estimate and its limit
// (--memory-limit-mb), set after the writes that change it and on Stats.
void UpdateMemoryGauges(const CollectionStore& store) {
  auto& r = MetricsRegistry::Default();
  r.GetGauge("ragserve_index_memory_bytes",
             "Estimated bytes the collections hold in memory (vector and BM25 indexes, maps)")
      .Set(static_cast<double>(store.MemoryBytes()));
  r.GetGauge("ragserve_index_memory_limit_bytes",
             "Bytes the collections may hold in memory (--memory-limit-mb)")
      .Set(static_cast<double>(store.limits().max_memory_bytes));
}

StatusOr<std::shared_ptr<Collection>> Find(CollectionStore* store, const std::string& name) {
  RS_CHECK_ARG(!name.empty(), "collection name is empty");
  return store->Get(name);
}

// Reads documents of an UpsertRequest into library documents.
std::vector<Document> DocsFromProto(const google::protobuf::RepeatedPtrField<v1::Document>& in) {
  std::vector<Document> out;
  out.reserve(in.size());
  for (const auto& d : in) {
    out.push_back(Document{d.id(), d.text(), d.metadata_json().empty() ? "{}" : d.metadata_json(),
                           std::vector<float>(d.vector().begin(), d.vector().end()),
                           d.document_id(), d.chunk_index(), d.offset()});
  }
  return out;
}

// Client-streamed upserts: each message's documents are written (durably) on the executor
// before the next read starts; the response is sent after the last one is durable.
class UpsertReactor final : public grpc::ServerReadReactor<v1::UpsertRequest> {
 public:
  UpsertReactor(IndexGrpcService* svc, grpc::CallbackServerContext* ctx, v1::UpsertResponse* resp)
      : svc_(svc), ctx_(ctx), resp_(resp) {
    if (grpc::Status st = PrecheckCall(ctx, svc->server()->auth()); !st.ok()) {
      Finish(st);
      return;
    }
    ReadNext();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      budget_.Release();
      if (collection_ == nullptr) {
        Finish(ToGrpcStatus(InvalidArgument("no UpsertRequest naming a collection was received")));
      } else {
        resp_->set_upserted(upserted_);
        Finish(grpc::Status::OK);
      }
      return;
    }
    // The message is held until applied, within the stream's reservation (StreamReadBudget).
    budget_.Account(msg_);
    Status submitted = budget_.Submit(
        [this] {
          // A message queued for a caller that has left is not applied (under a flood most
          // queued messages are such: applying them kept the index busy long after it).
          if (Status st = CallerStillWaiting(*ctx_); !st.ok()) {
            Fail(Annotate(st, "upsert not applied"));
            return;
          }
          if (Status st = Apply(); !st.ok()) {
            Fail(st);
            return;
          }
          ReadNext();
        },
        *ctx_, [this](const Status& shed) { Fail(Annotate(shed, "upsert not applied")); });
    if (!submitted.ok()) Fail(submitted);
  }

  void OnDone() override { delete this; }

 private:
  // Ends the call with `st`; its reservation is given back first, so a caller that has its
  // answer finds the budget as its call left it.
  void Fail(const Status& st) {
    budget_.Release();
    Finish(ToGrpcStatus(st));
  }

  // Reads the next message once the request memory budget can hold one (StreamReadBudget).
  void ReadNext() {
    if (Status st = budget_.Reserve(); !st.ok()) {
      Finish(ToGrpcStatus(Annotate(st, "upsert message not read")));
      return;
    }
    StartRead(&msg_);
  }

  Status Apply() {
    if (collection_ == nullptr) {
      RS_CHECK_ARG(!msg_.collection().empty(), "the first UpsertRequest must name the collection");
      RS_ASSIGN_OR_RETURN(collection_, svc_->store()->Get(msg_.collection()));
    } else {
      RS_CHECK_ARG(msg_.collection().empty() || msg_.collection() == collection_->spec().name,
                   "collection changed mid-stream from '", collection_->spec().name, "' to '",
                   msg_.collection(), "'");
    }
    if (msg_.documents_size() == 0) return OkStatus();
    // Before DocsFromProto copies them: one message may hold at most max_docs_per_upsert.
    const int64_t max_docs = svc_->store()->limits().max_docs_per_upsert;
    RS_CHECK_ARG(msg_.documents_size() <= max_docs, "UpsertRequest holds ", msg_.documents_size(),
                 " documents; the limit per message is ", max_docs, " (--max-upsert-docs)");
    auto n = collection_->Upsert(DocsFromProto(msg_.documents()));
    UpdateMemoryGauges(*svc_->store());
    RS_RETURN_IF_ERROR(n.status());
    upserted_ += *n;
    return OkStatus();
  }

  IndexGrpcService* svc_;
  grpc::CallbackServerContext* ctx_;
  v1::UpsertResponse* resp_;
  v1::UpsertRequest msg_;
  StreamReadBudget budget_{svc_->server()};
  std::shared_ptr<Collection> collection_;
  int64_t upserted_ = 0;
};

StatusOr<std::string> RetrievalName(v1::RetrievalMode m) {
  switch (m) {
    case v1::RETRIEVAL_MODE_UNSPECIFIED:
      return std::string();
    case v1::RETRIEVAL_MODE_DENSE:
      return std::string("dense");
    case v1::RETRIEVAL_MODE_BM25:
      return std::string("bm25");
    case v1::RETRIEVAL_MODE_HYBRID:
      return std::string("hybrid");
    default:
      return InvalidArgument(StrCat("unknown retrieval mode ", static_cast<int>(m)));
  }
}

v1::RetrievalMode RetrievalProto(const std::string& m) {
  if (m == "dense") return v1::RETRIEVAL_MODE_DENSE;
  if (m == "bm25") return v1::RETRIEVAL_MODE_BM25;
  return v1::RETRIEVAL_MODE_HYBRID;
}

StatusOr<FusionSpec> FusionFromProto(const v1::FusionParams& p, const FusionSpec& base) {
  FusionSpec f = base;
  switch (p.method()) {
    case v1::FUSION_METHOD_UNSPECIFIED:
      break;
    case v1::FUSION_METHOD_RRF:
      f.method = "rrf";
      break;
    case v1::FUSION_METHOD_WEIGHTED:
      f.method = "weighted";
      break;
    default:
      return InvalidArgument(StrCat("unknown fusion method ", static_cast<int>(p.method())));
  }
  if (p.rrf_k() != 0) f.rrf_k = p.rrf_k();
  if (p.has_dense_weight()) f.dense_weight = p.dense_weight();
  RS_RETURN_IF_ERROR(ValidateFusion(f));
  return f;
}

}  // namespace

StatusOr<SearchOptions> SearchOptionsFromProto(const v1::SearchRequest& req,
                                               const CollectionSpec& spec) {
  SearchOptions o;
  o.k = req.k();
  o.ef_search = req.ef_search();
  o.nprobe = req.nprobe();
  o.include_text = req.include_text();
  for (const auto& [field, value] : req.filter().equals()) o.filter_equals[field] = value;
  for (const auto& [field, r] : req.filter().ranges()) {
    NumericRange& nr = o.filter_ranges[field];
    if (r.has_gt()) nr.gt = r.gt();
    if (r.has_gte()) nr.gte = r.gte();
    if (r.has_lt()) nr.lt = r.lt();
    if (r.has_lte()) nr.lte = r.lte();
  }
  for (const auto& [field, any] : req.filter().any_of()) {
    RS_CHECK_ARG(any.values_size() <= static_cast<int>(kMaxAnyOfValues), "filter on '", field,
                 "': any_of holds ", any.values_size(), " values; the limit is ", kMaxAnyOfValues);
    o.filter_any_of[field].assign(any.values().begin(), any.values().end());
  }
  RS_ASSIGN_OR_RETURN(o.retrieval, RetrievalName(req.retrieval()));
  if (req.has_fusion()) {
    RS_ASSIGN_OR_RETURN(o.fusion, FusionFromProto(req.fusion(), spec.fusion));
  }
  return o;
}

std::string ParamsJsonFromProto(const v1::IndexParams& p) {
  nlohmann::json j = nlohmann::json::object();
  if (p.hnsw_m()) j["M"] = p.hnsw_m();
  if (p.hnsw_ef_construction()) j["ef_construction"] = p.hnsw_ef_construction();
  if (p.hnsw_ef_search()) j["ef_search"] = p.hnsw_ef_search();
  if (p.ivf_nlist()) j["nlist"] = p.ivf_nlist();
  if (p.ivf_nprobe()) j["nprobe"] = p.ivf_nprobe();
  if (p.pq_m()) j["pq_m"] = p.pq_m();
  if (p.pq_nbits()) j["pq_nbits"] = p.pq_nbits();
  return j.dump();
}

StatusOr<CollectionSpec> SpecFromProto(const v1::CollectionSpec& p) {
  CollectionSpec s;
  s.name = p.name();
  s.dim = p.dimension();
  switch (p.metric()) {
    case v1::METRIC_L2:
      s.metric = index::Metric::kL2;
      break;
    case v1::METRIC_INNER_PRODUCT:
      s.metric = index::Metric::kInnerProduct;
      break;
    case v1::METRIC_UNSPECIFIED:
    case v1::METRIC_COSINE:
      s.metric = index::Metric::kCosine;
      break;
    default:
      return InvalidArgument(StrCat("unknown metric ", static_cast<int>(p.metric())));
  }
  RS_ASSIGN_OR_RETURN(s.index_kind, KindName(p.index_kind()));
  s.params_json = ParamsJsonFromProto(p.params());
  s.embedder = p.embedder().empty() ? "hashing" : p.embedder();
  if (p.bm25().has_k1()) s.bm25.k1 = p.bm25().k1();
  if (p.bm25().has_b()) s.bm25.b = p.bm25().b();
  RS_ASSIGN_OR_RETURN(s.retrieval, RetrievalName(p.retrieval()));
  if (s.retrieval.empty()) s.retrieval = "hybrid";
  RS_ASSIGN_OR_RETURN(s.fusion, FusionFromProto(p.fusion(), FusionSpec{}));
  return s;
}

void InfoToProto(const CollectionInfo& info, v1::CollectionInfo* out) {
  v1::CollectionSpec* s = out->mutable_spec();
  s->set_name(info.spec.name);
  s->set_dimension(info.spec.dim);
  s->set_metric(MetricProto(info.spec.metric));
  s->set_index_kind(KindProto(info.spec.index_kind));
  s->set_embedder(info.spec.embedder);
  s->mutable_bm25()->set_k1(info.spec.bm25.k1);
  s->mutable_bm25()->set_b(info.spec.bm25.b);
  s->set_retrieval(RetrievalProto(info.spec.retrieval));
  s->mutable_fusion()->set_method(info.spec.fusion.method == "weighted" ? v1::FUSION_METHOD_WEIGHTED
                                                                        : v1::FUSION_METHOD_RRF);
  s->mutable_fusion()->set_rrf_k(info.spec.fusion.rrf_k);
  s->mutable_fusion()->set_dense_weight(info.spec.fusion.dense_weight);
  auto j = nlohmann::json::parse(info.spec.params_json, nullptr, false);
  if (j.is_object()) {
    auto get = [&j](const char* key) { return j.contains(key) ? j[key].get<int>() : 0; };
    v1::IndexParams* p = s->mutable_params();
    p->set_hnsw_m(get("M"));
    p->set_hnsw_ef_construction(get("ef_construction"));
    p->set_hnsw_ef_search(get("ef_search"));
    p->set_ivf_nlist(get("nlist"));
    p->set_ivf_nprobe(get("nprobe"));
    p->set_pq_m(get("pq_m"));
    p->set_pq_nbits(get("pq_nbits"));
  }
  out->set_num_documents(info.num_documents);
  out->set_num_vectors(info.num_vectors);
  out->set_index_bytes(info.index_bytes);
  out->set_disk_bytes(info.disk_bytes);
  out->set_rebuilding(info.rebuilding);
  out->set_lexical_documents(info.lexical_documents);
  out->set_lexical_bytes(info.lexical_bytes);
  out->set_memory_bytes(info.memory_bytes);
}

grpc::ServerUnaryReactor* IndexGrpcService::CreateCollection(grpc::CallbackServerContext* ctx,
                                                             const v1::CreateCollectionRequest* req,
                                                             v1::CreateCollectionResponse* resp) {
  return ServeUnary(ctx, server_, req, resp, [this, req, resp]() -> Status {
    RS_ASSIGN_OR_RETURN(auto spec, SpecFromProto(req->spec()));
    RS_ASSIGN_OR_RETURN(auto c, store_->Create(spec));
    InfoToProto(c->Info(), resp->mutable_info());
    return OkStatus();
  });
}

grpc::ServerUnaryReactor* IndexGrpcService::DropCollection(grpc::CallbackServerContext* ctx,
                                                           const v1::DropCollectionRequest* req,
                                                           v1::DropCollectionResponse* resp) {
  return ServeUnary(ctx, server_, req, resp, [this, req]() -> Status {
    RS_CHECK_ARG(!req->name().empty(), "collection name is empty");
    Status s = store_->Drop(req->name());
    UpdateMemoryGauges(*store_);
    return s;
  });
}

grpc::ServerUnaryReactor* IndexGrpcService::ListCollections(grpc::CallbackServerContext* ctx,
                                                            const v1::ListCollectionsRequest* req,
                                                            v1::ListCollectionsResponse* resp) {
  return ServeCheapUnary(ctx, server_, req, resp, [this, resp]() -> Status {
    for (const auto& c : store_->List()) InfoToProto(c->Info(), resp->add_collections());
    return OkStatus();
  });
}

grpc::ServerReadReactor<v1::UpsertRequest>* IndexGrpcService::Upsert(
    grpc::CallbackServerContext* ctx, v1::UpsertResponse* resp) {
  return new UpsertReactor(this, ctx, resp);
}

grpc::ServerUnaryReactor* IndexGrpcService::Delete(grpc::CallbackServerContext* ctx,
                                                   const v1::DeleteRequest* req,
                                                   v1::DeleteResponse* resp) {
  return ServeUnary(ctx, server_, req, resp, [this, req, resp]() -> Status {
    RS_ASSIGN_OR_RETURN(auto c, Find(store_, req->collection()));
    RS_ASSIGN_OR_RETURN(int64_t n,
                        c->Delete({req->ids().begin(), req->ids().end()},
                                  {req->document_ids().begin(), req->document_ids().end()}));
    UpdateMemoryGauges(*store_);
    resp->set_deleted(n);
    return OkStatus();
  });
}

grpc::ServerUnaryReactor* IndexGrpcService::Embed(grpc::CallbackServerContext* ctx,
                                                  const v1::EmbedRequest* req,
                                                  v1::EmbedResponse* resp) {
  return ServeUnary(ctx, server_, req, resp, [this, req, resp]() -> Status {
    RS_CHECK_ARG(req->texts_size() >= 1 && req->texts_size() <= kMaxEmbedTexts,
                 "texts must hold 1..", kMaxEmbedTexts, " texts, got ", req->texts_size());
    RS_ASSIGN_OR_RETURN(auto c, Find(store_, req->collection()));
    std::vector<std::string> texts(req->texts().begin(), req->texts().end());
    std::vector<float> vectors;
    RS_RETURN_IF_ERROR(c->EmbedTexts(texts, &vectors));
    const size_t dim = texts.empty() ? 0 : vectors.size() / texts.size();
    resp->set_dimension(static_cast<int32_t>(dim));
    for (size_t i = 0; i < texts.size(); ++i) {
      auto* v = resp->add_embeddings()->mutable_vector();
      v->Add(vectors.begin() + i * dim, vectors.begin() + (i + 1) * dim);
    }
    return OkStatus();
  });
}

grpc::ServerUnaryReactor* IndexGrpcService::Search(grpc::CallbackServerContext* ctx,
                                                   const v1::SearchRequest* req,
                                                   v1::SearchResponse* resp) {
  // A few unfiltered queries with a small k are tens to hundreds of microseconds of in-memory
  // work (plus <= 4 x 64 point reads of documents): cheaper run on the gRPC thread than handed to
  // the executor and back (index_bench's latency table measures the difference). Batches and
  // filtered searches, which can widen to a scan, go to the executor.
  // Anything out of those bounds (a large ef_search or nprobe included) takes the executor; the
  // caps on k, ef_search and nprobe are checked by Collection::Search on both paths.
  const bool small = req->queries_size() <= 4 && req->k() <= 64 && req->ef_search() <= 256 &&
                     req->nprobe() <= 256 && req->filter().equals().empty() &&
                     req->filter().ranges().empty() && req->filter().any_of().empty();
  auto serve = small ? ServeUnaryInline : ServeUnary;
  return serve(ctx, server_, req, resp, [this, req, resp]() -> Status {
    RS_ASSIGN_OR_RETURN(auto c, Find(store_, req->collection()));
    std::vector<Query> queries;
    queries.reserve(req->queries_size());
    for (const auto& q : req->queries()) {
      queries.push_back(Query{std::vector<float>(q.vector().begin(), q.vector().end()), q.text()});
    }
    RS_ASSIGN_OR_RETURN(SearchOptions o, SearchOptionsFromProto(*req, c->spec()));
    RS_ASSIGN_OR_RETURN(auto results, c->Search(queries, o));
    for (auto& hits : results) {
      v1::HitList* list = resp->add_results();
      for (auto& h : hits) {
        v1::Hit* out = list->add_hits();
        out->set_id(std::move(h.id));
        out->set_score(h.score);
        out->set_document_id(std::move(h.document_id));
        out->set_chunk_index(h.chunk_index);
        out->set_offset(h.offset);
        if (req->include_text()) {
          out->set_text(std::move(h.text));
          out->set_metadata_json(std::move(h.metadata_json));
        }
      }
    }
    return OkStatus();
  });
}

grpc::ServerUnaryReactor* IndexGrpcService::GetDocuments(grpc::CallbackServerContext* ctx,
                                                         const v1::GetDocumentsRequest* req,
                                                         v1::GetDocumentsResponse* resp) {
  return ServeUnary(ctx, server_, req, resp, [this, req, resp]() -> Status {
    RS_ASSIGN_OR_RETURN(auto c, Find(store_, req->collection()));
    std::vector<Document> found;
    std::vector<std::string> missing;
    RS_RETURN_IF_ERROR(c->Get({req->ids().begin(), req->ids().end()}, &found, &missing));
    for (auto& d : found) {
      v1::Document* out = resp->add_documents();
      out->set_id(std::move(d.id));
      out->set_text(std::move(d.text));
      out->set_metadata_json(std::move(d.metadata_json));
      out->mutable_vector()->Add(d.vector.begin(), d.vector.end());
    }
    for (auto& id : missing) resp->add_missing_ids(std::move(id));
    return OkStatus();
  });
}

grpc::ServerUnaryReactor* IndexGrpcService::Stats(grpc::CallbackServerContext* ctx,
                                                  const v1::StatsRequest* req,
                                                  v1::StatsResponse* resp) {
  return ServeCheapUnary(ctx, server_, req, resp, [this, req, resp]() -> Status {
    RS_ASSIGN_OR_RETURN(auto c, Find(store_, req->collection()));
    InfoToProto(c->Info(), resp->mutable_info());
    UpdateMemoryGauges(*store_);
    return OkStatus();
  });
}

grpc::ServerUnaryReactor* IndexGrpcService::Rebuild(grpc::CallbackServerContext* ctx,
                                                    const v1::RebuildRequest* req,
                                                    v1::RebuildResponse* resp) {
  return ServeUnary(ctx, server_, req, resp, [this, req, resp]() -> Status {
    RS_ASSIGN_OR_RETURN(auto c, Find(store_, req->collection()));
    std::string kind;
    if (req->index_kind() != v1::INDEX_KIND_UNSPECIFIED) {
      RS_ASSIGN_OR_RETURN(kind, KindName(req->index_kind()));
    }
    RS_RETURN_IF_ERROR(c->Rebuild(kind, ParamsJsonFromProto(req->params())));
    InfoToProto(c->Info(), resp->mutable_info());
    return OkStatus();
  });
}

}  // namespace ragserve::collection
