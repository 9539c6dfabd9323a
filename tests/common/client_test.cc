// Connections between services (services/common/client.h), against real gRPC servers on
// loopback: a server slow to send its HTTP/2 SETTINGS (a loaded machine) is still reached; a
// PeerChannel's first call waits for a peer that is still starting; a peer that is down or lost
// is a clean UNAVAILABLE well before the call's deadline, never a hang.
#include <grpcpp/grpcpp.h>
#include <grpcpp/server_posix.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "services/common/client.h"
#include "tests/support/process.h"

namespace ragserve {
namespace {

using SysClock = std::chrono::system_clock;

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Answers grpc.health.v1.Health/Check with SERVING.
class ServingHealth final : public grpc::health::v1::Health::Service {
  grpc::Status Check(grpc::ServerContext* /*ctx*/, const grpc::health::v1::HealthCheckRequest*,
                     grpc::health::v1::HealthCheckResponse* resp) override {
    resp->set_status(grpc::health::v1::HealthCheckResponse::SERVING);
    return grpc::Status::OK;
  }
};

// A gRPC server with a health service; listening on 127.0.0.1:port, or on no port at all when
// port is 0 (connections are then handed to it, see SlowHandshakePort).
std::unique_ptr<grpc::Server> StartHealthServer(int port) {
  static ServingHealth* health = new ServingHealth;  // shared by every server of the test
  grpc::ServerBuilder b;
  b.RegisterService(health);
  if (port != 0) {
    b.AddListeningPort("127.0.0.1:" + std::to_string(port), grpc::InsecureServerCredentials());
  }
  return b.BuildAndStart();
}

// grpc.health.v1.Health/Check ("" = the server) with `deadline`.
grpc::Status Check(const std::shared_ptr<grpc::Channel>& channel, SysClock::time_point deadline) {
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline);
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  return grpc::health::v1::Health::NewStub(channel)->Check(&ctx, req, &resp);
}

// A loopback port whose connections reach `server` only `delay` after they were made: the TCP
// handshake completes at once (in the kernel's backlog) and the server's HTTP/2 SETTINGS frame
// follows after the delay, as from a server slow to handshake on a loaded machine.
class SlowHandshakePort {
 public:
  SlowHandshakePort(grpc::Server* server, std::chrono::milliseconds delay)
      : server_(server), delay_(delay) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    ok_ = fd_ >= 0 && bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
          listen(fd_, 16) == 0 && getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
    port_ = ntohs(addr.sin_port);
    if (ok_) thread_ = std::thread([this] { Run(); });
  }
  ~SlowHandshakePort() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) close(fd_);
  }
  bool ok() const { return ok_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int handed_over() const { return handed_over_.load(); }

 private:
  void Run() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      std::this_thread::sleep_for(delay_);
      const int conn = accept4(fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (conn < 0) continue;
      // Counted first: the call this connection serves can finish (and the test read the count)
      // before this thread runs again after the handover.
      ++handed_over_;
      grpc::AddInsecureChannelFromFd(server_, conn);  // the server owns it now
    }
  }

  grpc::Server* const server_;
  const std::chrono::milliseconds delay_;
  int fd_ = -1;
  int port_ = 0;
  bool ok_ = false;
  std::atomic<bool> stop_{false};
  std::atomic<int> handed_over_{0};
  std::thread thread_;
};

// The flake this guards against: gRPC takes GRPC_ARG_MIN_RECONNECT_BACKOFF_MS as the minimum
// connect timeout, and it was 100 ms, so a handshake slower than that failed the call with
// UNAVAILABLE "connection attempt timed out before receiving SETTINGS frame".
TEST(ClientChannelTest, AServerSlowToHandshakeIsStillReached) {
  auto server = StartHealthServer(0);
  ASSERT_NE(server, nullptr);
  SlowHandshakePort slow(server.get(), std::chrono::milliseconds(1000));
  ASSERT_TRUE(slow.ok());
  auto ch = MakeChannel(slow.address());
  ASSERT_TRUE(ch.ok()) << ch.status().ToString();
  const grpc::Status st = Check(*ch, SysClock::now() + std::chrono::seconds(30));
  EXPECT_TRUE(st.ok()) << st.error_code() << ": " << st.error_message();
  EXPECT_GE(slow.handed_over(), 1);
  server->Shutdown(SysClock::now());
}

// Fast failover between decode workers rests on this: a refused connection fails a call at
// once, whatever the connect timeout.
TEST(ClientChannelTest, APeerThatIsNotListeningFailsACallAtOnce) {
  auto ch = MakeChannel("127.0.0.1:" + std::to_string(testing::FreePort()));
  ASSERT_TRUE(ch.ok());
  const auto t0 = std::chrono::steady_clock::now();
  const grpc::Status st = Check(*ch, SysClock::now() + std::chrono::seconds(60));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_LT(SecondsSince(t0), 30.0) << "a refused connection waited for the call's deadline";
}

TEST(PeerChannelTest, TheFirstCallWaitsForAPeerThatIsStillStarting) {
  const int port = testing::FreePort();
  auto peer = PeerChannel::Create("127.0.0.1:" + std::to_string(port));
  ASSERT_TRUE(peer.ok()) << peer.status().ToString();
  // The peer starts listening a second after the client was made (and refused at least once).
  std::unique_ptr<grpc::Server> server;
  std::thread starter([&] {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    server = StartHealthServer(port);
  });
  const auto deadline = SysClock::now() + std::chrono::seconds(10);
  const bool connected = (*peer)->AwaitFirstConnection(deadline);
  const grpc::Status st = Check((*peer)->channel(), deadline);
  starter.join();
  ASSERT_NE(server, nullptr) << "port " << port << " was taken meanwhile";
  EXPECT_TRUE(connected);
  EXPECT_TRUE(st.ok()) << st.error_code() << ": " << st.error_message();
  server->Shutdown(SysClock::now());
}

TEST(PeerChannelTest, APeerThatNeverStartsIsUnavailableWithinTheDeadline) {
  auto peer = PeerChannel::Create("127.0.0.1:" + std::to_string(testing::FreePort()));
  ASSERT_TRUE(peer.ok());
  const auto t0 = std::chrono::steady_clock::now();
  const auto deadline = SysClock::now() + std::chrono::seconds(4);
  EXPECT_FALSE((*peer)->AwaitFirstConnection(deadline));
  const grpc::Status st = Check((*peer)->channel(), deadline);
  // The wait leaves the call time to say why: UNAVAILABLE, not DEADLINE_EXCEEDED.
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_LT(SecondsSince(t0), 4.0 + 10.0) << "the call outlived its deadline";
  // With no deadline the wait is bounded too (first_connect_wait_ms).
  ChannelOptions o;
  o.first_connect_wait_ms = 500;
  auto bounded = PeerChannel::Create("127.0.0.1:" + std::to_string(testing::FreePort()), o);
  ASSERT_TRUE(bounded.ok());
  const auto t1 = std::chrono::steady_clock::now();
  EXPECT_FALSE((*bounded)->AwaitFirstConnection(SysClock::time_point::max()));
  EXPECT_LT(SecondsSince(t1), 10.0);
}

TEST(PeerChannelTest, ACallerThatGaveUpStopsWaiting) {
  auto peer = PeerChannel::Create("127.0.0.1:" + std::to_string(testing::FreePort()));
  ASSERT_TRUE(peer.ok());
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE((*peer)->AwaitFirstConnection(SysClock::now() + std::chrono::seconds(600),
                                             [] { return true; }));
  EXPECT_LT(SecondsSince(t0), 5.0) << "a cancelled caller waited for the peer";
}

// Once connected, a lost peer is reported at once: the router tells its client UNAVAILABLE (and
// the client can retry) instead of holding the call until its deadline.
TEST(PeerChannelTest, APeerLostAfterTheFirstConnectionFailsCallsAtOnce) {
  const int port = testing::FreePort();
  auto server = StartHealthServer(port);
  ASSERT_NE(server, nullptr);
  auto peer = PeerChannel::Create("127.0.0.1:" + std::to_string(port));
  ASSERT_TRUE(peer.ok());
  auto deadline = SysClock::now() + std::chrono::seconds(60);
  ASSERT_TRUE((*peer)->AwaitFirstConnection(deadline));
  ASSERT_TRUE(Check((*peer)->channel(), deadline).ok());
  server->Shutdown(SysClock::now());
  server->Wait();
  server.reset();
  const auto t0 = std::chrono::steady_clock::now();
  deadline = SysClock::now() + std::chrono::seconds(60);
  EXPECT_TRUE((*peer)->AwaitFirstConnection(deadline));  // it has been connected: no wait
  const grpc::Status st = Check((*peer)->channel(), deadline);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_LT(SecondsSince(t0), 30.0) << "a lost peer held the call";
}

}  // namespace
}  // namespace ragserve
