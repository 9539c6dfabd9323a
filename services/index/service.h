// gRPC adapter of the index service: ragserve.v1.IndexService over a CollectionStore.
// Every handler checks auth first (PrecheckCall / ServeUnary) and runs store work on the
// server's bounded executor; Status -> grpc::Status happens in ServeUnary / ToGrpcStatus only.
#pragma once

#include <memory>

#include "ragserve/v1/index.grpc.pb.h"
#include "services/common/server.h"
#include "services/index/collection.h"

namespace ragserve::collection {

class IndexGrpcService final : public v1::IndexService::CallbackService {
 public:
  // Borrows both; they must outlive the service.
  IndexGrpcService(ServiceServer* server, CollectionStore* store)
      : server_(server), store_(store) {}

  grpc::ServerUnaryReactor* CreateCollection(grpc::CallbackServerContext* ctx,
                                             const v1::CreateCollectionRequest* req,
                                             v1::CreateCollectionResponse* resp) override;
  grpc::ServerUnaryReactor* DropCollection(grpc::CallbackServerContext* ctx,
                                           const v1::DropCollectionRequest* req,
                                           v1::DropCollectionResponse* resp) override;
  grpc::ServerUnaryReactor* ListCollections(grpc::CallbackServerContext* ctx,
                                            const v1::ListCollectionsRequest* req,
                                            v1::ListCollectionsResponse* resp) override;
  grpc::ServerReadReactor<v1::UpsertRequest>* Upsert(grpc::CallbackServerContext* ctx,
                                                     v1::UpsertResponse* resp) override;
  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* ctx, const v1::DeleteRequest* req,
                                   v1::DeleteResponse* resp) override;
  grpc::ServerUnaryReactor* Search(grpc::CallbackServerContext* ctx, const v1::SearchRequest* req,
                                   v1::SearchResponse* resp) override;
  grpc::ServerUnaryReactor* Embed(grpc::CallbackServerContext* ctx, const v1::EmbedRequest* req,
                                  v1::EmbedResponse* resp) override;
  grpc::ServerUnaryReactor* GetDocuments(grpc::CallbackServerContext* ctx,
                                         const v1::GetDocumentsRequest* req,
                                         v1::GetDocumentsResponse* resp) override;
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* ctx, const v1::StatsRequest* req,
                                  v1::StatsResponse* resp) override;
  grpc::ServerUnaryReactor* Rebuild(grpc::CallbackServerContext* ctx, const v1::RebuildRequest* req,
                                    v1::RebuildResponse* resp) override;

  ServiceServer* server() const { return server_; }
  CollectionStore* store() const { return store_; }

 private:
  ServiceServer* server_;
  CollectionStore* store_;
};

// Texts per Embed call, at most.
inline constexpr int kMaxEmbedTexts = 2048;

// Proto <-> library conversions (exposed for tests).
StatusOr<CollectionSpec> SpecFromProto(const v1::CollectionSpec& p);
void InfoToProto(const CollectionInfo& info, v1::CollectionInfo* out);
// A SearchRequest's options (filters, retrieval mode, fusion over the collection's defaults).
StatusOr<SearchOptions> SearchOptionsFromProto(const v1::SearchRequest& req,
                                               const CollectionSpec& spec);
// IndexParams -> params JSON for `kind` (only the non-zero fields).
std::string ParamsJsonFromProto(const v1::IndexParams& p);

}  // namespace ragserve::collection
