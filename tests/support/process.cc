#include "tests/support/process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "httplib.h"
#include "nlohmann/json.hpp"
#include "services/common/mutex.h"

extern char** environ;

namespace ragserve::testing {

std::string BinPath(const std::string& name) {
  const char* dir = std::getenv("RAGSERVE_BIN_DIR");
  return std::string(dir ? dir : ".") + "/" + name;
}

std::string SourceDir() {
  const char* dir = std::getenv("RAGSERVE_SOURCE_DIR");
  return dir ? dir : ".";
}

namespace {

// The directories MakeTempDir made, removed when the test program exits normally (by the process
// that made them, not by a forked child), unless RAGSERVE_KEEP_TEST_DIRS is set.
class TempDirRegistry {
 public:
  void Add(const std::string& dir) {
    MutexLock lock(mu_);
    dirs_.push_back(dir);
  }
  ~TempDirRegistry() {
    if (std::getenv("RAGSERVE_KEEP_TEST_DIRS") != nullptr || getpid() != owner_) return;
    MutexLock lock(mu_);
    for (const auto& dir : dirs_) {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  }

 private:
  const pid_t owner_ = getpid();
  Mutex mu_;
  std::vector<std::string> dirs_ ABSL_GUARDED_BY(mu_);
};

TempDirRegistry& TempDirs() {
  static TempDirRegistry registry;
  return registry;
}

}  // namespace

std::string MakeTempDir(const std::string& prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string tmpl = std::string(tmp ? tmp : "/tmp") + "/" + prefix + "-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) return "";
  TempDirs().Add(buf.data());
  return buf.data();
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

Process::~Process() {
  if (pid_ > 0 && !reaped_) {
    kill(pid_, SIGKILL);
    waitpid(pid_, &status_, 0);
  }
}

bool Process::Start(const std::string& path, const std::vector<std::string>& args,
                    const std::string& log_path, const std::map<std::string, std::string>& env,
                    const std::string& cwd) {
  std::vector<std::string> argv_s = {path};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);

  std::map<std::string, std::string> merged;
  for (char** e = environ; *e; ++e) {
    std::string kv(*e);
    auto eq = kv.find('=');
    if (eq != std::string::npos) merged[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (auto& [k, v] : env) merged[k] = v;
  std::vector<std::string> env_s;
  for (auto& [k, v] : merged) env_s.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  if (!cwd.empty()) posix_spawn_file_actions_addchdir_np(&fa, cwd.c_str());
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  const int rc = posix_spawn(&pid_, path.c_str(), &fa, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  reaped_ = false;
  return rc == 0;
}

void Process::Signal(int sig) {
  if (pid_ > 0 && !reaped_) kill(pid_, sig);
}

bool Process::Stop(double timeout_s) {
  if (pid_ <= 0 || reaped_) return false;
  kill(pid_, SIGSTOP);
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG | WUNTRACED);
    if (r == pid_ && WIFSTOPPED(status)) return true;
    if (r == pid_) {  // it exited instead
      status_ = status;
      reaped_ = true;
      return false;
    }
    if (r < 0 || std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

bool Process::Wait(double timeout_s, int* exit_code) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (!reaped_) {
    const pid_t r = waitpid(pid_, &status_, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      break;
    }
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (exit_code) {
    *exit_code = WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
  }
  return true;
}

bool Process::running() {
  if (pid_ <= 0 || reaped_) return false;
  return !Wait(0, nullptr);
}

std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool WaitForReadyFile(const std::string& path, double timeout_s, int* grpc_port,
                      int* metrics_port) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (std::chrono::steady_clock::now() < end) {
    const std::string text = ReadFileOrEmpty(path);
    if (!text.empty()) {
      auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.contains("grpc_port")) {
        *grpc_port = j["grpc_port"].get<int>();
        if (metrics_port) *metrics_port = j.value("metrics_port", 0);
        return true;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

int RunCommand(const std::string& cmd, std::string* output) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t n;
  std::string out;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  if (output) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int HttpGet(int port, const std::string& path, std::string* body) {
  httplib::Client cli("127.0.0.1", port);
  cli.set_connection_timeout(2);
  auto res = cli.Get(path.c_str());
  if (!res) return -1;
  if (body) *body = res->body;
  return res->status;
}

std::string MakeTinyModel(const std::string& dir, std::string* error) {
  const std::string model = dir + "/model";
  if (!ReadFileOrEmpty(model + "/config.json").empty()) return model;
  std::string out;
  const int rc = RunCommand(BinPath("make-tiny-model") + " --out " + model + " --corpus " +
                                SourceDir() + "/data/corpus/passages.jsonl",
                            &out);
  if (rc != 0) {
    *error = "make-tiny-model failed: " + out;
    return "";
  }
  return model;
}

}  // namespace ragserve::testing
