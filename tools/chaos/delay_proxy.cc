#include "tools/chaos/delay_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <random>

namespace ragserve::chaos {

namespace {

using Clock = std::chrono::steady_clock;

bool WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

int ConnectTo(const std::string& host, int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1 ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return -1;
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

}  // namespace

// One direction of a connection: the reader queues chunks stamped with their due time, the
// writer sends each when it is due.
struct Pipe {
  Mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<Clock::time_point, std::string>> q ABSL_GUARDED_BY(mu);
  bool eof ABSL_GUARDED_BY(mu) = false;
  Clock::time_point last_due ABSL_GUARDED_BY(mu){};
};

struct DelayProxy::Conn {
  int a = -1, b = -1;  // client side, target side
  Pipe up, down;       // a -> b, b -> a
  std::vector<std::thread> threads;
  std::atomic<bool> closed{false};
  void Shutdown() {
    if (closed.exchange(true)) return;
    ::shutdown(a, SHUT_RDWR);
    ::shutdown(b, SHUT_RDWR);
    for (Pipe* p : {&up, &down}) {
      MutexLock l(p->mu);
      p->eof = true;
      p->cv.notify_all();
    }
  }
};

namespace {

void ReadLoop(DelayProxy* proxy, DelayProxy::Conn* c, int from, Pipe* p) {
  std::mt19937 rng(static_cast<uint32_t>(from * 7919 + 17));
  std::vector<char> buf(64 << 10);
  while (true) {
    const ssize_t n = ::recv(from, buf.data(), buf.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    const int d = proxy->delay_ms();
    const int j = proxy->jitter_ms();
    const int ms = d + (j > 0 ? std::uniform_int_distribution<int>(-j, j)(rng) : 0);
    MutexLock l(p->mu);
    Clock::time_point due = Clock::now() + std::chrono::milliseconds(std::max(0, ms));
    if (due < p->last_due) due = p->last_due;  // keep the byte order
    p->last_due = due;
    p->q.emplace_back(due, std::string(buf.data(), static_cast<size_t>(n)));
    p->cv.notify_all();
  }
  MutexLock l(p->mu);
  p->eof = true;
  p->cv.notify_all();
  (void)c;
}

void WriteLoop(DelayProxy::Conn* c, int to, Pipe* p) {
  while (true) {
    std::string chunk;
    {
      MutexLock l(p->mu);
      l.Wait(p->cv, [p]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu) { return p->eof || !p->q.empty(); });
      if (p->q.empty()) break;  // eof and drained
      const Clock::time_point due = p->q.front().first;
      if (Clock::now() < due) {
        l.Unlock();
        std::this_thread::sleep_until(due);
        continue;
      }
      chunk = std::move(p->q.front().second);
      p->q.pop_front();
    }
    if (c->closed || !WriteAll(to, chunk.data(), chunk.size())) {
      c->Shutdown();
      return;
    }
  }
  // The source closed: pass the half-close on; when both directions are done, close.
  ::shutdown(to, SHUT_WR);
}

}  // namespace

StatusOr<std::unique_ptr<DelayProxy>> DelayProxy::Start(const std::string& listen_host,
                                                        int listen_port, std::string target_host,
                                                        int target_port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Internal(StrCat("delay proxy: socket: ", std::strerror(errno)));
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(listen_port));
  if (::inet_pton(AF_INET, listen_host.c_str(), &a.sin_addr) != 1 ||
      ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(fd, 64) != 0) {
    const std::string err = std::strerror(errno);
    ::close(fd);
    return Internal(StrCat("delay proxy: listen on ", listen_host, ":", listen_port, ": ", err));
  }
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  std::unique_ptr<DelayProxy> p(
      new DelayProxy(fd, ntohs(a.sin_port), std::move(target_host), target_port));
  p->accept_thread_ = std::thread([raw = p.get()] { raw->AcceptLoop(); });
  return p;
}

DelayProxy::DelayProxy(int listen_fd, int port, std::string target_host, int target_port)
    : listen_fd_(listen_fd),
      port_(port),
      target_host_(std::move(target_host)),
      target_port_(target_port) {}

void DelayProxy::AcceptLoop() {
  while (!stop_) {
    pollfd pfd{listen_fd_, POLLIN, 0};
    if (::poll(&pfd, 1, 200) <= 0) continue;
    const int a = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (a < 0) continue;
    const int b = ConnectTo(target_host_, target_port_);
    if (b < 0) {  // the peer is down: the caller sees a refused connection, as without us
      ::close(a);
      continue;
    }
    const int one = 1;
    ::setsockopt(a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    auto c = std::make_shared<Conn>();
    c->a = a;
    c->b = b;
    Conn* raw = c.get();
    c->threads.emplace_back([this, raw] { ReadLoop(this, raw, raw->a, &raw->up); });
    c->threads.emplace_back([raw] { WriteLoop(raw, raw->b, &raw->up); });
    c->threads.emplace_back([this, raw] { ReadLoop(this, raw, raw->b, &raw->down); });
    c->threads.emplace_back([raw] { WriteLoop(raw, raw->a, &raw->down); });
    MutexLock l(mu_);
    conns_.push_back(std::move(c));
  }
}

DelayProxy::~DelayProxy() {
  stop_ = true;
  if (accept_thread_.joinable()) accept_thread_.join();
  ::close(listen_fd_);
  std::vector<std::shared_ptr<Conn>> conns;
  {
    MutexLock l(mu_);
    conns.swap(conns_);
  }
  for (auto& c : conns) {
    c->Shutdown();
    for (auto& t : c->threads) t.join();
    ::close(c->a);
    ::close(c->b);
  }
}

}  // namespace ragserve::chaos
