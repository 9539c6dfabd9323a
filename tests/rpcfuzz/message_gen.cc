#include "tests/rpcfuzz/message_gen.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/message.h>
#include <google/protobuf/reflection.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

namespace ragserve::rpcfuzz {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

constexpr int kMaxDepth = 6;

// Names that exist in the cluster after setup (rpc_table.cc), so random requests hit real objects.
const char* const kKnownNames[] = {"fz", "fz2", "fzseq", "fzq", "docs", "d0", "d1", "d2"};

int64_t ElementBytes(const FieldDescriptor* f) {
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_BOOL:
      return 1;
    case FieldDescriptor::CPPTYPE_FLOAT:
    case FieldDescriptor::CPPTYPE_INT32:
    case FieldDescriptor::CPPTYPE_UINT32:
    case FieldDescriptor::CPPTYPE_ENUM:
      return 4;
    case FieldDescriptor::CPPTYPE_STRING:
      return 16;
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return 32;
    default:
      return 8;
  }
}

bool IsTensor(const Descriptor* d) {
  return d->full_name() == "ragserve.v1.Tensor" || d->full_name() == "ragserve.v1.TensorChunk";
}

}  // namespace

std::string SerializeDeterministic(const Message& msg) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    msg.SerializeToCodedStream(&coded);
  }
  return out;
}

MessageGen::MessageGen(uint64_t seed, int64_t max_bytes) : rng_(seed), max_bytes_(max_bytes) {}

int64_t MessageGen::Uniform(int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng_);
}

bool MessageGen::Chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }

int64_t MessageGen::Int64() {
  static const int64_t kExtremes[] = {0,
                                      1,
                                      -1,
                                      2,
                                      3,
                                      4,
                                      8,
                                      16,
                                      255,
                                      1024,
                                      65536,
                                      int64_t{1} << 31,
                                      (int64_t{1} << 31) - 1,
                                      int64_t{1} << 32,
                                      int64_t{1} << 40,
                                      int64_t{1} << 62,
                                      std::numeric_limits<int64_t>::max(),
                                      std::numeric_limits<int64_t>::min(),
                                      -(int64_t{1} << 31)};
  switch (Uniform(0, 3)) {
    case 0:
      return kExtremes[Uniform(0, std::size(kExtremes) - 1)];
    case 1:
      return Uniform(-4, 64);
    case 2:
      return Uniform(0, 4096);
    default:
      return static_cast<int64_t>(rng_());
  }
}

int32_t MessageGen::Int32() {
  static const int32_t kExtremes[] = {0,
                                      1,
                                      -1,
                                      2,
                                      4,
                                      64,
                                      1024,
                                      4096,
                                      10000,
                                      10001,
                                      1 << 20,
                                      std::numeric_limits<int32_t>::max(),
                                      std::numeric_limits<int32_t>::min()};
  switch (Uniform(0, 3)) {
    case 0:
      return kExtremes[Uniform(0, std::size(kExtremes) - 1)];
    case 1:
      return static_cast<int32_t>(Uniform(-4, 64));
    case 2:
      return static_cast<int32_t>(Uniform(0, 4096));
    default:
      return static_cast<int32_t>(rng_());
  }
}

uint64_t MessageGen::UInt64() {
  if (Chance(0.5)) return static_cast<uint64_t>(Uniform(0, 4096));
  static const uint64_t kExtremes[] = {
      0, 1, 4, 16, uint64_t{1} << 32, uint64_t{1} << 63, std::numeric_limits<uint64_t>::max()};
  if (Chance(0.7)) return kExtremes[Uniform(0, std::size(kExtremes) - 1)];
  return rng_();
}

double MessageGen::Double() {
  static const double kExtremes[] = {0.0,
                                     -0.0,
                                     1.0,
                                     -1.0,
                                     0.5,
                                     2.0,
                                     1e-45,
                                     1e38,
                                     -1e38,
                                     1e300,
                                     std::numeric_limits<double>::quiet_NaN(),
                                     -std::numeric_limits<double>::quiet_NaN(),
                                     std::numeric_limits<double>::infinity(),
                                     -std::numeric_limits<double>::infinity(),
                                     std::numeric_limits<double>::denorm_min()};
  if (Chance(0.5)) return kExtremes[Uniform(0, std::size(kExtremes) - 1)];
  return std::uniform_real_distribution<double>(-4.0, 4.0)(rng_);
}

std::string MessageGen::DeepJson(int64_t depth) {
  std::string s;
  switch (Uniform(0, 2)) {
    case 0:  // [[[[...]]]]
      s.append(depth, '[');
      s.append(depth, ']');
      break;
    case 1: {  // {"a":{"a":...}}
      s.reserve(depth * 6);
      for (int64_t i = 0; i < depth; ++i) s += "{\"a\":";
      s += "1";
      s.append(depth, '}');
      break;
    }
    default:  // unbalanced: opened and never closed
      s.append(depth, '[');
      break;
  }
  return s;
}

std::string MessageGen::String(const std::string& field_name) {
  const bool jsonish = field_name.find("json") != std::string::npos || field_name == "value";
  int choice = static_cast<int>(Uniform(0, 11));
  if (jsonish && Chance(0.6)) choice = 100;
  switch (choice) {
    case 0:
      return "";
    case 1:
    case 2:
      return kKnownNames[Uniform(0, std::size(kKnownNames) - 1)];
    case 3: {
      std::string s(static_cast<size_t>(Uniform(1, 24)), 'a');
      for (char& c : s) c = "abcdefghijklmnopqrstuvwxyz0123456789_.-"[Uniform(0, 38)];
      return s;
    }
    case 4: {  // Long: around the documented limits (64 KiB question, 512-byte id, 128-char name).
      static const int64_t kLens[] = {128, 129, 512, 513, 4096, 65536, 65537, 1 << 20};
      int64_t n = std::min<int64_t>(kLens[Uniform(0, std::size(kLens) - 1)], max_bytes_ / 2);
      std::string s(static_cast<size_t>(n), 'x');
      for (int64_t i = 0; i < n; i += 7) s[i] = ' ';
      return s;
    }
    case 5: {  // Invalid UTF-8 (only where allowed: it never gets past gRPC's parser).
      if (!allow_invalid_utf8_) return "\xc3\xa9t\xc3\xa9";
      static const char* const kBad[] = {
          "\xff", "\xc3", "a\xc0\xaf", "\xed\xa0\x80", "\xfe\xfe", "\xf4\x90\x80\x80", "ok\x80"};
      invalid_utf8_ = true;
      return kBad[Uniform(0, std::size(kBad) - 1)];
    }
    case 6: {  // Valid but odd UTF-8: NUL, controls, combining marks, astral planes.
      static const char* const kOdd[] = {"\t\n\r",    "é漢字🙂", "\xe2\x80\xae", "   ",
                                         "!!!...???", "\u0301\u0301", "<|im_start|>", "</s>"};
      if (Uniform(0, 8) == 0) return std::string("a\0b", 3);
      return kOdd[Uniform(0, std::size(kOdd) - 1)];
    }
    case 7: {  // Hex of plausible and implausible lengths (fingerprints, cache keys).
      static const int kLens[] = {0, 15, 16, 17, 31, 32, 33, 64};
      std::string s(static_cast<size_t>(kLens[Uniform(0, 7)]), '0');
      for (char& c : s) c = "0123456789abcdefABCDEFg"[Uniform(0, Chance(0.9) ? 15 : 22)];
      return s;
    }
    case 8:
      return "the";
    default:
      break;
  }
  // JSON: valid small objects, odd scalars, and deep nesting within the byte budget.
  static const char* const kJson[] = {"{}",
                                      "{\"topic\":\"physics\"}",
                                      "{\"n\":42,\"b\":true,\"x\":null}",
                                      "[]",
                                      "42",
                                      "\"physics\"",
                                      "1e999",
                                      "{\"a\":1,\"a\":2}",
                                      "{",
                                      "nan",
                                      "{\"k\":\"\\ud800\"}"};
  if (Chance(0.5)) return kJson[Uniform(0, std::size(kJson) - 1)];
  static const int64_t kDepths[] = {64, 1000, 10000, 100000, 200000};
  int64_t depth = kDepths[Uniform(0, std::size(kDepths) - 1)];
  depth = std::max<int64_t>(1, std::min<int64_t>(depth, max_bytes_ / 8));
  return DeepJson(depth);
}

std::string MessageGen::Bytes() {
  int64_t n;
  switch (Uniform(0, 4)) {
    case 0:
      n = 0;
      break;
    case 1:
      n = Uniform(1, 64);
      break;
    case 2:
      n = 4 * Uniform(1, 256);
      break;
    case 3:
      n = Uniform(0, 65536);
      break;
    default:
      n = Uniform(0, max_bytes_ / 2);
      break;
  }
  std::string s(static_cast<size_t>(n), '\0');
  for (int64_t i = 0; i < n; i += 8) {
    const uint64_t r = rng_();
    for (int64_t j = 0; j < 8 && i + j < n; ++j) s[i + j] = static_cast<char>(r >> (8 * j));
  }
  return s;
}

int64_t MessageGen::RepeatedCount(const FieldDescriptor* f, int64_t budget) {
  const int64_t cap = std::max<int64_t>(0, budget / ElementBytes(f));
  int64_t n;
  switch (Uniform(0, 9)) {
    case 0:
      n = 0;
      break;
    case 1:
    case 2:
    case 3:
      n = Uniform(1, 3);
      break;
    case 4:
    case 5:
      n = Uniform(1, 16);
      break;
    case 6:
      n = Uniform(17, 300);
      break;
    case 7:  // Around documented limits (256 passages, 1024 queries, 10000 hits).
      n = std::vector<int64_t>{255, 256, 257, 1024, 1025, 10000}[Uniform(0, 5)];
      break;
    default:  // As many as the byte budget allows: up to the message limit.
      n = Uniform(cap / 2, cap);
      break;
  }
  return std::min(n, cap);
}

void MessageGen::FillTensor(Message* msg, int64_t* budget) {
  const Descriptor* d = msg->GetDescriptor();
  const Reflection* r = msg->GetReflection();
  const FieldDescriptor* dtype = d->FindFieldByName("dtype");
  const FieldDescriptor* shape = d->FindFieldByName("shape");
  const FieldDescriptor* data = d->FindFieldByName("data");
  const FieldDescriptor* offset = d->FindFieldByName("offset");
  msg->Clear();
  const int dt = Chance(0.85) ? static_cast<int>(Uniform(1, 6)) : static_cast<int>(Int32());
  r->SetEnumValue(msg, dtype, dt);
  static const int64_t kDims[] = {1,
                                  2,
                                  4,
                                  8,
                                  16,
                                  0,
                                  -1,
                                  3,
                                  int64_t{1} << 20,
                                  int64_t{1} << 31,
                                  int64_t{1} << 40,
                                  std::numeric_limits<int64_t>::max()};
  const int rank = static_cast<int>(Uniform(0, 4));
  int64_t elems = 1;
  bool sane = true;
  for (int i = 0; i < rank; ++i) {
    const int64_t dim =
        Chance(0.75) ? kDims[Uniform(0, 4)] : kDims[Uniform(0, std::size(kDims) - 1)];
    r->AddInt64(msg, shape, dim);
    if (dim < 0 || dim > (int64_t{1} << 24) || elems > (int64_t{1} << 24)) sane = false;
    if (sane) elems *= dim;
  }
  static const int kElemSize[] = {4, 4, 2, 2, 4, 8, 1};
  const int esize = dt >= 0 && dt <= 6 ? kElemSize[dt] : 4;
  std::string bytes;
  if (sane && elems * esize <= *budget && Chance(0.6)) {
    // Agrees with the shape: a valid tensor of random floats (finite mostly).
    bytes.resize(static_cast<size_t>(elems * esize));
    for (int64_t i = 0; i + 4 <= static_cast<int64_t>(bytes.size()); i += 4) {
      float v =
          Chance(0.98) ? static_cast<float>(Double()) : std::numeric_limits<float>::quiet_NaN();
      if (!std::isfinite(v) && Chance(0.9)) v = 0.25f;
      std::memcpy(&bytes[i], &v, 4);
    }
    if (Chance(0.1) && !bytes.empty()) bytes.pop_back();  // One byte short.
  } else {
    bytes = Bytes();
  }
  *budget -= static_cast<int64_t>(bytes.size()) + 8 * rank;
  r->SetString(msg, data, std::move(bytes));
  if (offset != nullptr && Chance(0.5)) r->SetUInt64(msg, offset, UInt64());
}

void MessageGen::SetField(Message* msg, const FieldDescriptor* f, int depth, int64_t* budget) {
  const Reflection* r = msg->GetReflection();
  if (f->is_repeated()) {
    r->ClearField(msg, f);
    AddRepeated(msg, f, depth, budget);
    return;
  }
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      r->SetInt32(msg, f, Int32());
      break;
    case FieldDescriptor::CPPTYPE_INT64:
      r->SetInt64(msg, f, Int64());
      break;
    case FieldDescriptor::CPPTYPE_UINT32:
      r->SetUInt32(msg, f, static_cast<uint32_t>(UInt64()));
      break;
    case FieldDescriptor::CPPTYPE_UINT64:
      r->SetUInt64(msg, f, UInt64());
      break;
    case FieldDescriptor::CPPTYPE_FLOAT:
      r->SetFloat(msg, f, static_cast<float>(Double()));
      break;
    case FieldDescriptor::CPPTYPE_DOUBLE:
      r->SetDouble(msg, f, Double());
      break;
    case FieldDescriptor::CPPTYPE_BOOL:
      r->SetBool(msg, f, Chance(0.5));
      break;
    case FieldDescriptor::CPPTYPE_ENUM: {
      const auto* e = f->enum_type();
      if (Chance(0.8)) {
        r->SetEnumValue(msg, f,
                        e->value(static_cast<int>(Uniform(0, e->value_count() - 1)))->number());
      } else {
        r->SetEnumValue(msg, f, Chance(0.5) ? static_cast<int>(Uniform(7, 99)) : Int32());
      }
      break;
    }
    case FieldDescriptor::CPPTYPE_STRING: {
      std::string s = f->type() == FieldDescriptor::TYPE_BYTES ? Bytes() : String(f->name());
      *budget -= static_cast<int64_t>(s.size());
      r->SetString(msg, f, std::move(s));
      break;
    }
    case FieldDescriptor::CPPTYPE_MESSAGE: {
      Message* sub = r->MutableMessage(msg, f);
      if (IsTensor(f->message_type())) {
        FillTensor(sub, budget);
      } else if (depth < kMaxDepth) {
        Fill(sub, depth + 1, budget);
      }
      break;
    }
  }
}

void MessageGen::AddRepeated(Message* msg, const FieldDescriptor* f, int depth, int64_t* budget) {
  const Reflection* r = msg->GetReflection();
  const int64_t n = RepeatedCount(f, *budget);
  // Scalars of a huge repeated field: one value repeated is as good as many and far cheaper.
  const bool cheap = n > 4096;
  for (int64_t i = 0; i<n&& * budget> 0; ++i) {
    *budget -= ElementBytes(f);
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        r->AddInt32(msg, f, cheap ? static_cast<int32_t>(i & 1023) : Int32());
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        r->AddInt64(msg, f, cheap ? i : Int64());
        break;
      case FieldDescriptor::CPPTYPE_UINT32:
        r->AddUInt32(msg, f, static_cast<uint32_t>(cheap ? i : UInt64()));
        break;
      case FieldDescriptor::CPPTYPE_UINT64:
        r->AddUInt64(msg, f, cheap ? i : UInt64());
        break;
      case FieldDescriptor::CPPTYPE_FLOAT:
        r->AddFloat(msg, f, cheap ? 0.5f : static_cast<float>(Double()));
        break;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        r->AddDouble(msg, f, cheap ? 0.5 : Double());
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        r->AddBool(msg, f, Chance(0.5));
        break;
      case FieldDescriptor::CPPTYPE_ENUM:
        r->AddEnumValue(msg, f, static_cast<int>(Uniform(-1, 8)));
        break;
      case FieldDescriptor::CPPTYPE_STRING: {
        std::string s;
        if (cheap) {
          s = "id" + std::to_string(i);
        } else {
          s = f->type() == FieldDescriptor::TYPE_BYTES ? Bytes() : String(f->name());
        }
        *budget -= static_cast<int64_t>(s.size());
        r->AddString(msg, f, std::move(s));
        break;
      }
      case FieldDescriptor::CPPTYPE_MESSAGE: {
        Message* sub = r->AddMessage(msg, f);
        if (IsTensor(f->message_type())) {
          FillTensor(sub, budget);
        } else if (depth < kMaxDepth) {
          Fill(sub, depth + 1, budget);
        }
        break;
      }
    }
  }
}

void MessageGen::Fill(Message* msg, int depth, int64_t* budget) {
  const Descriptor* d = msg->GetDescriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (*budget <= 0) return;
    if (f->containing_oneof() != nullptr && Chance(0.5)) continue;
    if (!Chance(0.7)) continue;
    SetField(msg, f, depth, budget);
  }
}

std::unique_ptr<Message> MessageGen::Random(const Descriptor* desc) {
  std::unique_ptr<Message> msg(
      google::protobuf::MessageFactory::generated_factory()->GetPrototype(desc)->New());
  int64_t budget = Chance(0.7) ? std::min<int64_t>(max_bytes_, 4096) : max_bytes_;
  Fill(msg.get(), 0, &budget);
  return msg;
}

void MessageGen::Mutate(Message* msg) {
  const int edits = static_cast<int>(Uniform(1, 4));
  for (int e = 0; e < edits; ++e) {
    // Every (message, field) reachable through set fields, unset ones included.
    std::vector<std::pair<Message*, const FieldDescriptor*>> slots;
    std::vector<Message*> stack = {msg};
    while (!stack.empty() && slots.size() < 4096) {
      Message* m = stack.back();
      stack.pop_back();
      const Descriptor* d = m->GetDescriptor();
      const Reflection* r = m->GetReflection();
      for (int i = 0; i < d->field_count(); ++i) {
        const FieldDescriptor* f = d->field(i);
        slots.emplace_back(m, f);
        if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
        if (f->is_repeated()) {
          const int n = r->FieldSize(*m, f);
          for (int j = 0; j < n && j < 8; ++j) stack.push_back(r->MutableRepeatedMessage(m, f, j));
        } else if (r->HasField(*m, f)) {
          stack.push_back(r->MutableMessage(m, f));
        }
      }
    }
    if (slots.empty()) return;  // A message without fields (ListCollectionsRequest, ...).
    auto [m, f] = slots[Uniform(0, static_cast<int64_t>(slots.size()) - 1)];
    const Reflection* r = m->GetReflection();
    int64_t budget = Chance(0.8) ? 4096 : max_bytes_;
    const int action = static_cast<int>(Uniform(0, 9));
    if (action == 0) {
      r->ClearField(m, f);
    } else if (f->is_repeated() && action <= 2 && r->FieldSize(*m, f) > 0) {
      // Duplicate an element (same id twice, same layer twice, ...) or drop the last one.
      if (action == 1 && f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        const int n = r->FieldSize(*m, f);
        const Message& src = r->GetRepeatedMessage(*m, f, static_cast<int>(Uniform(0, n - 1)));
        std::unique_ptr<Message> copy(src.New());
        copy->CopyFrom(src);
        r->AddMessage(m, f)->CopyFrom(*copy);
      } else {
        r->RemoveLast(m, f);
      }
    } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && !f->is_repeated() &&
               IsTensor(f->message_type())) {
      FillTensor(r->MutableMessage(m, f), &budget);
    } else {
      SetField(m, f, 1, &budget);
    }
  }
}

}  // namespace ragserve::rpcfuzz
