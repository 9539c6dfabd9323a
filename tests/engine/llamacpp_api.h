// The few entry points of llama.cpp's C API (include/llama.h) that the llama.cpp reference tool
// uses, resolved with dlopen from a prebuilt libllama at run time, so that nothing in the build
// needs llama.cpp. Declarations only (API facts of the llama.cpp version the pinned npm package
// @node-llama-cpp/linux-x64 ships: commit 0ad4a86, llama_version() "0.5.0-dev"); no llama.cpp
// code.
//
// The parameter structs are version-dependent. They are never declared here: each is an opaque,
// 16-aligned 512-byte buffer, larger than the library's struct (x86-64 SysV passes and returns
// structs of more than 16 bytes in memory, so the callee reads / writes only its own size from
// the start of ours), filled by the library's *_default_params(), and only fields that have kept
// their offset since those structs exist are written:
//   llama_model_quantize_params: int32 nthread @0, enum llama_ftype ftype @4
//   llama_context_params:        uint32 n_ctx @0, n_batch @4, n_ubatch @8
// (the sizes of this version, 64 / 80 / 160 bytes, were read from the machine code of the
// *_default_params functions; LlamaCpp::Load checks with a sentinel fill that each writes at most
// half of our buffer). Threads are set with llama_set_n_threads, not through the struct.
// llama_batch is declared: its layout has been the same since it exists. The quantize layout is
// checked end to end: the test reads back each quantized file's file type and tensor types.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace ragserve::llamacpp {

struct Model;    // struct llama_model
struct Context;  // struct llama_context
struct Vocab;    // struct llama_vocab
using Token = int32_t;

// enum llama_ftype values used here.
constexpr int kFtypeAllF32 = 0;
constexpr int kFtypeQ4_0 = 2;
constexpr int kFtypeQ8_0 = 7;
constexpr int kFtypeQ4_K_M = 15;
constexpr int kFtypeQ6_K = 18;
constexpr int kFtypeBF16 = 32;

// An opaque parameter struct (see the header comment).
struct alignas(16) Params {
  unsigned char bytes[512];
};

// struct llama_batch.
struct Batch {
  int32_t n_tokens;
  Token* token;
  float* embd;
  int32_t* pos;
  int32_t* n_seq_id;
  int32_t** seq_id;
  int8_t* logits;
};

using LogCallback = void (*)(int level, const char* text, void* user_data);

// The resolved functions; every pointer is non-null after a successful Load.
struct LlamaCpp {
  void (*backend_init)();
  void (*log_set)(LogCallback, void*);
  const char* (*print_system_info)();
  const char* (*version)();  // llama_version(): may be null in versions without it
  // `struct X llama_*_default_params(void)` in its x86-64 SysV form: a struct returned in
  // memory is written through a hidden pointer (rdi), so the call writes into `out` only.
  void (*model_default_params)(Params* out);
  void (*context_default_params)(Params* out);
  void (*model_quantize_default_params)(Params* out);
  uint32_t (*model_quantize)(const char* in, const char* out, const Params* params);
  Model* (*model_load_from_file)(const char* path, Params params);
  void (*model_free)(Model*);
  Context* (*init_from_model)(Model*, Params params);
  void (*free_context)(Context*);  // llama_free
  void (*set_n_threads)(Context*, int32_t n_threads, int32_t n_threads_batch);
  const Vocab* (*model_get_vocab)(const Model*);
  int32_t (*vocab_n_tokens)(const Vocab*);
  int32_t (*tokenize)(const Vocab*, const char* text, int32_t text_len, Token* tokens,
                      int32_t n_tokens_max, bool add_special, bool parse_special);
  Batch (*batch_get_one)(Token* tokens, int32_t n_tokens);
  int32_t (*decode)(Context*, Batch batch);
  float* (*get_logits_ith)(Context*, int32_t i);
  void (*backend_load_all_from_path)(const char* dir);  // libggml: the CPU backend variants

  // dlopens DIR/libllama*.so and DIR/libggml*.so (the npm package's bins/linux-x64), resolves
  // the functions, loads the CPU backends from DIR (ggml picks the variant for this CPU) and
  // silences llama.cpp's log unless verbose. Returns "" or an error message naming what failed.
  std::string Load(const std::string& dir, bool verbose);
};

}  // namespace ragserve::llamacpp
