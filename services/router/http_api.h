// The router's OpenAI-compatible HTTP API (--http-port): POST /v1/chat/completions (JSON or
// server-sent events), POST /v1/completions, POST /v1/embeddings, GET /v1/models[/{id}], and
// GET /health. JSON shapes and request fields: services/router/openai_json.h.
//
// Every generation is an ordinary RagService.Query on the router's own server through an
// in-process channel, so HTTP requests take the same path as gRPC ones (validation, retrieval,
// worker choice, failover, the query executor's backpressure, metrics). The HTTP status is
// decided by the query's first event (or its error), so errors before any output (bad request,
// unknown collection, overload, no worker) are proper HTTP errors even for streams; an error after
// the stream started is sent as a `data: {"error": ...}` event. A client that disconnects
// mid-stream cancels the query, which cancels the worker's sequence.
//
// Security: the gRPC server's TLS certificate/key (HTTPS) and bearer token ("Authorization:
// Bearer <token>", 401 without it) apply here too; bodies over max_body_bytes are 413.
#pragma once

#include <grpcpp/channel.h>

#include <memory>
#include <string>
#include <thread>

#include "ragserve/v1/rag.grpc.pb.h"
#include "services/common/status.h"
#include "services/router/openai_json.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace ragserve::router {

struct HttpApiOptions {
  std::string host = "127.0.0.1";
  int port = 0;          // > 0 (0 means off: do not create an HttpApi)
  std::string tls_cert;  // PEM chain and key: HTTPS when both are set
  std::string tls_key;
  std::string auth_token;  // required as "Authorization: Bearer <token>" when non-empty
  openai::ModelNames models = {"ragserve"};  // what /v1/models lists and requests must name
  int threads = 32;  // requests served at once (a stream holds one for its duration)
  size_t max_body_bytes = size_t{8} << 20;  // larger bodies: 413
};

class HttpApi {
 public:
  // Binds host:port and serves in a background thread; `rag` reaches the RagService (the
  // router's in-process channel). Unavailable when the port cannot be bound, InvalidArgument for
  // unusable TLS files.
  static StatusOr<std::unique_ptr<HttpApi>> Start(HttpApiOptions opts,
                                                  std::shared_ptr<grpc::Channel> rag);
  ~HttpApi();  // Stop()
  // Stops accepting, waits for requests in progress (their queries end with the gRPC server).
  void Stop();
  int port() const { return port_; }

 private:
  HttpApi(HttpApiOptions opts, std::shared_ptr<grpc::Channel> rag);
  void Routes();
  // 401 (and true) when auth is on and the request lacks the token.
  bool Unauthorized(const httplib::Request& req, httplib::Response& res) const;
  // The authorization metadata of the in-process RagService call ("" when auth is off).
  std::string Downstream() const;
  void Generate(const httplib::Request& req, httplib::Response& res, bool chat);
  void Embeddings(const httplib::Request& req, httplib::Response& res);
  void Models(const httplib::Request& req, httplib::Response& res);

  HttpApiOptions opts_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::RagService::Stub> rag_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
  int64_t created_ = 0;  // start time: the "created" of the served models
};

}  // namespace ragserve::router
