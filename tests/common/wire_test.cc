#include "services/common/wire.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace ragserve::wire {
namespace {

std::string Bytes(const std::vector<uint16_t>& halves) {
  return std::string(reinterpret_cast<const char*>(halves.data()), halves.size() * 2);
}

TEST(WireTest, FloatsRoundTripThroughAnF32TensorOfTheGivenShape) {
  const std::vector<float> x = {1.0f, -2.5f, 3.25f, 0.0f, 1e-30f, -7.0f};
  v1::Tensor t;
  t.add_shape(99);  // replaced, not appended to
  FloatsToTensor(x.data(), {2, 3}, &t);
  EXPECT_EQ(t.dtype(), v1::DTYPE_F32);
  ASSERT_EQ(t.shape_size(), 2);
  EXPECT_EQ(t.shape(0), 2);
  EXPECT_EQ(t.shape(1), 3);
  EXPECT_EQ(t.data().size(), x.size() * sizeof(float));
  auto back = TensorToFloats(t, {2, 3}, /*allow_f16=*/false, "x");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, x);
  // -1 accepts any size in that dimension.
  auto any = TensorToFloats(t, {-1, 3}, false, "x");
  ASSERT_TRUE(any.ok()) << any.status().ToString();
  EXPECT_EQ(*any, x);
}

TEST(WireTest, UnspecifiedDtypeIsReadAsF32) {
  const std::vector<float> x = {4.0f, 5.0f};
  v1::Tensor t;
  FloatsToTensor(x.data(), {2}, &t);
  t.set_dtype(v1::DTYPE_UNSPECIFIED);
  auto back = TensorToFloats(t, {2}, false, "x");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, x);
}

TEST(WireTest, ShapeAndSizeMismatchesAreInvalidArgumentNamingTheTensor) {
  const std::vector<float> x(6, 1.0f);
  v1::Tensor t;
  FloatsToTensor(x.data(), {2, 3}, &t);
  auto rank = TensorToFloats(t, {6}, false, "queries");
  EXPECT_EQ(rank.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(rank.status().message().find("queries: expected 1 dimensions, got 2"),
            std::string::npos)
      << rank.status().message();
  auto dim = TensorToFloats(t, {2, 4}, false, "k");
  EXPECT_EQ(dim.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(dim.status().message().find("k: dimension 1 must be 4, got 3"), std::string::npos)
      << dim.status().message();
  v1::Tensor short_data = t;
  short_data.mutable_data()->resize(6 * 4 - 1);
  auto size = TensorToFloats(short_data, {2, 3}, false, "v");
  EXPECT_EQ(size.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(size.status().message().find("need 24 bytes, got 23"), std::string::npos)
      << size.status().message();
  v1::Tensor negative;
  negative.add_shape(-2);
  auto neg = TensorToFloats(negative, {-1}, false, "o");
  EXPECT_EQ(neg.status().code(), StatusCode::kInvalidArgument);
}

TEST(WireTest, F16IsDecodedExactlyOnlyWhereAllowed) {
  // 1.5, -2, 65504 (largest half), 2^-24 (smallest subnormal), -0.
  v1::Tensor t;
  t.set_dtype(v1::DTYPE_F16);
  t.add_shape(5);
  t.set_data(Bytes({0x3E00, 0xC000, 0x7BFF, 0x0001, 0x8000}));
  auto f = TensorToFloats(t, {5}, /*allow_f16=*/true, "k");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)[0], 1.5f);
  EXPECT_EQ((*f)[1], -2.0f);
  EXPECT_EQ((*f)[2], 65504.0f);
  EXPECT_EQ((*f)[3], std::ldexp(1.0f, -24));
  EXPECT_EQ((*f)[4], 0.0f);
  EXPECT_TRUE(std::signbit((*f)[4]));

  auto refused = TensorToFloats(t, {5}, /*allow_f16=*/false, "queries");
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("unsupported dtype DTYPE_F16 (F32 only)"),
            std::string::npos)
      << refused.status().message();

  t.mutable_data()->resize(9);  // 5 halves need 10 bytes
  EXPECT_EQ(TensorToFloats(t, {5}, true, "k").status().code(), StatusCode::kInvalidArgument);
  t.set_dtype(v1::DTYPE_BF16);
  EXPECT_EQ(TensorToFloats(t, {5}, true, "k").status().code(), StatusCode::kInvalidArgument);
}

TEST(WireTest, PassageKeyIsTheHexXxh3OfTheText) {
  // Known answers of XXH3-64 (seed 0): routers and decoders of different builds must agree.
  EXPECT_EQ(PassageKey(""), "2d06800538d394c2");
  EXPECT_EQ(PassageKey("The quick brown fox."), "5aebb8e7e8794602");
  EXPECT_NE(PassageKey("The quick brown fox"), PassageKey("The quick brown fox."));
  EXPECT_EQ(PassageKey(std::string("a\0b", 3)).size(), 16u);
  EXPECT_NE(PassageKey(std::string("a\0b", 3)), PassageKey("a"));
}

}  // namespace
}  // namespace ragserve::wire
