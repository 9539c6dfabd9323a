// main() of every GoogleTest program of the project.
//
// The *_test.cc files of a test folder form one program, compiled as a unity build (a few files
// per translation unit: the gtest, gRPC and protobuf templates they share are instantiated once
// per unit instead of once per file, about half the compile time). ctest still runs one test per
// file: `--source_file=<name>.cc` runs only the tests defined in that file (TestInfo::file(), the
// file of the TEST macro), intersected with --gtest_filter if one is given too. Without it the
// program runs all its tests, like gtest_main.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr std::string_view kSourceFlag = "--source_file=";

// Removes --source_file=<name> from argv and returns <name> ("" when absent).
std::string TakeSourceFlag(int* argc, char** argv) {
  std::string source;
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.substr(0, kSourceFlag.size()) == kSourceFlag) {
      source = std::string(arg.substr(kSourceFlag.size()));
    } else {
      argv[out++] = argv[i];
    }
  }
  *argc = out;
  argv[out] = nullptr;
  return source;
}

// gtest's wildcard pattern: '*' any run of characters, '?' one character.
bool MatchesPattern(std::string_view pattern, std::string_view name) {
  if (pattern.empty()) return name.empty();
  if (pattern[0] == '*') {
    for (size_t skip = 0; skip <= name.size(); ++skip) {
      if (MatchesPattern(pattern.substr(1), name.substr(skip))) return true;
    }
    return false;
  }
  return !name.empty() && (pattern[0] == '?' || pattern[0] == name[0]) &&
         MatchesPattern(pattern.substr(1), name.substr(1));
}

bool MatchesAny(std::string_view patterns, std::string_view name) {
  while (true) {
    const size_t colon = patterns.find(':');
    if (MatchesPattern(patterns.substr(0, colon), name)) return true;
    if (colon == std::string_view::npos) return false;
    patterns.remove_prefix(colon + 1);
  }
}

// gtest's filter syntax: "POSITIVE[-NEGATIVE]", each a ':'-separated list of patterns; an empty
// positive part means every test.
bool MatchesFilter(std::string_view filter, std::string_view name) {
  const size_t dash = filter.find('-');
  const std::string_view positive = filter.substr(0, dash);
  const bool included = positive.empty() || MatchesAny(positive, name);
  return included && (dash == std::string_view::npos || !MatchesAny(filter.substr(dash + 1), name));
}

bool DefinedIn(const testing::TestInfo& test, const std::string& source) {
  const std::string_view file = test.file();
  return file.size() >= source.size() && file.substr(file.size() - source.size()) == source &&
         (file.size() == source.size() || file[file.size() - source.size() - 1] == '/');
}

// The ':'-separated full names of the tests defined in `source` that pass `filter`.
std::vector<std::string> TestsOf(const std::string& source, const std::string& filter) {
  std::vector<std::string> names;
  const testing::UnitTest& unit = *testing::UnitTest::GetInstance();
  for (int s = 0; s < unit.total_test_suite_count(); ++s) {
    const testing::TestSuite& suite = *unit.GetTestSuite(s);
    for (int t = 0; t < suite.total_test_count(); ++t) {
      const testing::TestInfo& test = *suite.GetTestInfo(t);
      std::string name = std::string(test.test_suite_name()) + "." + test.name();
      if (DefinedIn(test, source) && MatchesFilter(filter, name)) names.push_back(std::move(name));
    }
  }
  return names;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string source = TakeSourceFlag(&argc, argv);
  testing::InitGoogleMock(&argc, argv);  // registers parameterised tests too
  if (!source.empty()) {
    const std::vector<std::string> names = TestsOf(source, GTEST_FLAG_GET(filter));
    if (names.empty()) {
      std::fprintf(stderr, "no test of this program is defined in %s (or passes the filter)\n",
                   source.c_str());
      return 1;
    }
    std::string filter;
    for (const std::string& name : names) filter += (filter.empty() ? "" : ":") + name;
    GTEST_FLAG_SET(filter, filter);
  }
  return RUN_ALL_TESTS();
}
