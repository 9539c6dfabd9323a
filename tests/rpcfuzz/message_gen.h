// Structure-aware random protobuf messages for the RPC fuzzer, built by reflection from the
// descriptors: every field gets the extremes of its type (0, -1, INT_MIN/MAX, 2^40, NaN, Inf,
// denormals), strings get invalid UTF-8 and deeply nested JSON, enums get unknown values, repeated
// fields get 0..many elements within a byte budget, and `ragserve.v1.Tensor`/`TensorChunk` get
// shapes that agree or disagree with their bytes (including products past 2^63). Mutation takes a
// valid seed request and rewrites a few of its fields the same way, which reaches deeper code than
// pure noise. Everything draws from one std::mt19937_64, so a seed reproduces a run.
#pragma once

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>

namespace ragserve::rpcfuzz {

// Wire bytes of `msg` with map entries in key order (plain serialization orders them by hash, which
// differs between two equal messages), so that a seed gives byte-identical requests.
std::string SerializeDeterministic(const google::protobuf::Message& msg);

class MessageGen {
 public:
  // max_bytes: rough upper bound of one generated message's wire size (strings, bytes and
  // repeated fields are sized against it).
  MessageGen(uint64_t seed, int64_t max_bytes);

  // A new random message of type `desc` (from the generated pool).
  std::unique_ptr<google::protobuf::Message> Random(const google::protobuf::Descriptor* desc);
  // Rewrites 1..4 randomly chosen fields (anywhere in the tree) of `msg` in place.
  void Mutate(google::protobuf::Message* msg);

  // True when something generated since the last Reset() put invalid UTF-8 in a string field:
  // proto3 receivers then fail to parse the request inside gRPC itself (see rpc_table.h).
  bool wrote_invalid_utf8() const { return invalid_utf8_; }
  void ResetFlags() { invalid_utf8_ = false; }
  // Whether String() may return invalid UTF-8. Requests carrying it stop in gRPC's parser and
  // reach no service code, so a run allows it only in a small share of requests.
  void set_allow_invalid_utf8(bool allow) { allow_invalid_utf8_ = allow; }

  std::mt19937_64& rng() { return rng_; }
  // Uniform in [lo, hi].
  int64_t Uniform(int64_t lo, int64_t hi);
  bool Chance(double p);

  // Field value generators, also used by the seed builders.
  int64_t Int64();
  int32_t Int32();
  uint64_t UInt64();
  double Double();
  std::string String(const std::string& field_name);
  std::string Bytes();
  std::string DeepJson(int64_t depth);

 private:
  void Fill(google::protobuf::Message* msg, int depth, int64_t* budget);
  void SetField(google::protobuf::Message* msg, const google::protobuf::FieldDescriptor* f,
                int depth, int64_t* budget);
  void AddRepeated(google::protobuf::Message* msg, const google::protobuf::FieldDescriptor* f,
                   int depth, int64_t* budget);
  void FillTensor(google::protobuf::Message* msg, int64_t* budget);
  int64_t RepeatedCount(const google::protobuf::FieldDescriptor* f, int64_t budget);

  std::mt19937_64 rng_;
  int64_t max_bytes_;
  bool invalid_utf8_ = false;
  bool allow_invalid_utf8_ = true;
};

}  // namespace ragserve::rpcfuzz
