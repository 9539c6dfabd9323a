// Test support: start real binaries as child processes, wait for them to serve, signal them.
#pragma once

#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

namespace ragserve::testing {

// $RAGSERVE_BIN_DIR/<name> (the build's bin/ folder, set by ctest).
std::string BinPath(const std::string& name);
// $RAGSERVE_SOURCE_DIR (the repository root, set by ctest).
std::string SourceDir();
// A fresh empty directory under $TMPDIR, removed with its contents when the test program exits
// normally (RAGSERVE_KEEP_TEST_DIRS=1 keeps it for debugging); callers may remove it sooner.
std::string MakeTempDir(const std::string& prefix);
// A TCP port on 127.0.0.1 that was free a moment ago.
int FreePort();

class Process {
 public:
  Process() = default;
  ~Process();  // SIGKILL + reap if still running.
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  // Starts `path` with `args`; stdout and stderr go to `log_path` (appended). Extra env entries
  // are added to (or replace in) the current environment; a non-empty `cwd` is the child's
  // working directory. Returns false if the spawn failed.
  bool Start(const std::string& path, const std::vector<std::string>& args,
             const std::string& log_path, const std::map<std::string, std::string>& env = {},
             const std::string& cwd = "");
  // Sends a signal.
  void Signal(int sig);
  // Sends SIGSTOP and waits up to timeout_s until the child has stopped (every thread: waitpid
  // with WUNTRACED), so a call made afterwards meets a hung process, not one still answering.
  // False if it did not stop in time (or is not running). SIGCONT resumes it.
  bool Stop(double timeout_s = 10);
  // Waits up to timeout_s for exit; returns true if exited, with its exit code (or 128+signal).
  bool Wait(double timeout_s, int* exit_code);
  bool running();
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
};

// Waits until `path` exists and holds a complete ready-file JSON; returns its grpc_port and
// metrics_port. False after timeout_s.
bool WaitForReadyFile(const std::string& path, double timeout_s, int* grpc_port, int* metrics_port);

// Runs a command line through /bin/sh, returning its exit code and capturing stdout+stderr.
int RunCommand(const std::string& cmd, std::string* output);

// Writes the tiny model (make-tiny-model, tokenizer trained on the sample corpus) into
// <dir>/model unless it is already there; returns that path, or "" with *error set.
std::string MakeTinyModel(const std::string& dir, std::string* error);

// Reads a whole file ("" if missing).
std::string ReadFileOrEmpty(const std::string& path);

// Plain HTTP GET of http://127.0.0.1:<port><path>; returns the status code (-1 if unreachable).
int HttpGet(int port, const std::string& path, std::string* body);

}  // namespace ragserve::testing
