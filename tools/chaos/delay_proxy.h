// A TCP relay that adds latency to one peer link (tools/chaos): what is read from one side is
// written to the other `delay_ms` (± jitter) later, in order. The chaos run puts it on the
// router -> decoder link because this machine's kernel has no sch_netem (tc qdisc netem): packet
// loss is done in the kernel (a tc filter on the peer's veth), added latency here.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "services/common/mutex.h"
#include "services/common/status.h"

namespace ragserve::chaos {

class DelayProxy {
 public:
  // Listens on listen_host:listen_port (0 = a free port) and relays each connection to
  // target_host:target_port.
  static StatusOr<std::unique_ptr<DelayProxy>> Start(const std::string& listen_host,
                                                     int listen_port, std::string target_host,
                                                     int target_port);
  ~DelayProxy();  // Stops accepting, closes every relayed connection, joins its threads.
  DelayProxy(const DelayProxy&) = delete;
  DelayProxy& operator=(const DelayProxy&) = delete;

  int port() const { return port_; }
  // Latency added to each direction from now on (0 = none); applies to bytes read after the call.
  void SetDelay(int delay_ms, int jitter_ms) {
    delay_ms_ = delay_ms;
    jitter_ms_ = jitter_ms;
  }
  int delay_ms() const { return delay_ms_; }
  int jitter_ms() const { return jitter_ms_; }

  struct Conn;  // one relayed connection (delay_proxy.cc)

 private:
  DelayProxy(int listen_fd, int port, std::string target_host, int target_port);
  void AcceptLoop();

  int listen_fd_;
  int port_;
  std::string target_host_;
  int target_port_;
  std::atomic<bool> stop_{false};
  std::atomic<int> delay_ms_{0};
  std::atomic<int> jitter_ms_{0};
  std::thread accept_thread_;
  Mutex mu_;
  std::vector<std::shared_ptr<Conn>> conns_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ragserve::chaos
