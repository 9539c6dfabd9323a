// A libFuzzer-compatible driver for builds without libFuzzer (gcc, sanitizer builds): runs every
// file in the given corpus folders, the empty input, and `--mutations N` seeded mutations of them
// (bit flips, byte sets, truncations, insertions, splices). A crash or sanitizer report fails the
// run; the input that caused it is written to ./replay-crash-<n> first.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

using Bytes = std::vector<uint8_t>;

Bytes Mutate(const std::vector<Bytes>& seeds, std::mt19937_64& rng) {
  Bytes b = seeds[rng() % seeds.size()];
  const int edits = 1 + static_cast<int>(rng() % 8);
  for (int e = 0; e < edits; ++e) {
    switch (rng() % 6) {
      case 0:  // flip a bit
        if (!b.empty()) b[rng() % b.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 1: {  // set a byte to an interesting value
        static constexpr uint8_t kVals[] = {0, 1, 0x7f, 0x80, 0xff, '"', '{', '}', '[', ']', ':'};
        if (!b.empty()) b[rng() % b.size()] = kVals[rng() % sizeof(kVals)];
        break;
      }
      case 2:  // truncate
        if (!b.empty()) b.resize(rng() % b.size());
        break;
      case 3: {  // insert random bytes
        const size_t pos = b.empty() ? 0 : rng() % (b.size() + 1);
        const size_t n = 1 + rng() % 16;
        Bytes ins(n);
        for (auto& x : ins) x = static_cast<uint8_t>(rng());
        b.insert(b.begin() + static_cast<std::ptrdiff_t>(pos), ins.begin(), ins.end());
        break;
      }
      case 4: {  // splice with another seed
        const Bytes& o = seeds[rng() % seeds.size()];
        if (!o.empty() && !b.empty()) {
          const size_t cut = rng() % b.size();
          const size_t from = rng() % o.size();
          b.resize(cut);
          b.insert(b.end(), o.begin() + static_cast<std::ptrdiff_t>(from), o.end());
        }
        break;
      }
      case 5: {  // overwrite 8 bytes with a random (often huge) integer
        if (b.size() >= 8) {
          const size_t pos = rng() % (b.size() - 7);
          const uint64_t v = (rng() % 2) ? rng() : (uint64_t{1} << (rng() % 64));
          std::memcpy(b.data() + pos, &v, 8);
        }
        break;
      }
    }
  }
  return b;
}

void Run(const Bytes& b, long n) {
  // Written before the call so the input survives a crash; removed when it passes.
  const std::string path = "replay-crash-" + std::to_string(n);
  {
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }
  LLVMFuzzerTestOneInput(b.data(), b.size());
  std::remove(path.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  long mutations = 1000;
  uint64_t seed = 1;
  std::vector<Bytes> seeds = {Bytes{}};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--mutations" && i + 1 < argc) {
      mutations = std::strtol(argv[++i], nullptr, 10);
    } else if (a == "--seed" && i + 1 < argc) {
      seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (std::filesystem::is_directory(a)) {
      for (const auto& e : std::filesystem::directory_iterator(a)) {
        if (!e.is_regular_file()) continue;
        std::ifstream f(e.path(), std::ios::binary);
        seeds.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
      }
    } else if (std::filesystem::is_regular_file(a)) {
      std::ifstream f(a, std::ios::binary);
      seeds.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    } else {
      std::fprintf(stderr, "replay: '%s' is not a file or folder (corpus missing?)\n", a.c_str());
    }
  }
  long n = 0;
  for (const Bytes& s : seeds) Run(s, n++);
  std::mt19937_64 rng(seed);
  for (long i = 0; i < mutations; ++i) Run(Mutate(seeds, rng), n++);
  std::printf("replay: %zu seeds + %ld mutations ran without a crash\n", seeds.size(), mutations);
  return 0;
}
