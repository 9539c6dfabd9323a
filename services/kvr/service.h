// KvRetrievalGrpcService: the gRPC adapter of ragserve-kvr over the KvRetrieval library
// (kv_retrieval.h). Tensors travel as F32 (K/V may also be F16); every handler runs its work on
// the server's bounded executor after the auth/deadline/cancel prechecks.
#pragma once

#include "ragserve/v1/kvr.grpc.pb.h"
#include "services/common/server.h"
#include "services/kvr/kv_retrieval.h"

namespace ragserve::kvr {

class KvRetrievalGrpcService final : public v1::KvRetrievalService::CallbackService {
 public:
  // Borrows both; they must outlive the service.
  KvRetrievalGrpcService(ServiceServer* server, KvRetrieval* kvr) : server_(server), kvr_(kvr) {}

  grpc::ServerReadReactor<v1::CreateSequenceRequest>* CreateSequence(
      grpc::CallbackServerContext* ctx, v1::CreateSequenceResponse* resp) override;
  grpc::ServerUnaryReactor* Append(grpc::CallbackServerContext* ctx, const v1::AppendRequest* req,
                                   v1::AppendResponse* resp) override;
  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* ctx, const v1::AttendRequest* req,
                                   v1::AttendResponse* resp) override;
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* ctx, const v1::ReleaseRequest* req,
                                    v1::ReleaseResponse* resp) override;
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* ctx, const v1::KvrStatsRequest* req,
                                  v1::KvrStatsResponse* resp) override;

  ServiceServer* server() const { return server_; }
  KvRetrieval* kvr() const { return kvr_; }

 private:
  ServiceServer* server_;
  KvRetrieval* kvr_;
};

}  // namespace ragserve::kvr
