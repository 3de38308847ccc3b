// Cryptographically secure random ops.
//
//   SecureSeed                  256-bit seed from the OS CSPRNG (getrandom(2)).
//   SecureSeededRandomUniform   deterministic uniform integers from a seed.
//   SecureRandomUniform         same, with a fresh getrandom seed per run.
//   HarnessDeriveSeed           seed number i derived from a key (a ChaCha20 PRF).
//   HarnessChacha20Keystream    raw ChaCha20 keystream; for testing only.
//
// Sampling: the keystream is ChaCha20 (RFC 8439) keyed with the 8 seed words
// (key byte order = the words serialised little-endian), nonce kUniformNonce,
// block counter from 0. Dtypes of up to 32 bits consume one 32-bit keystream
// word per candidate, int64 consumes two consecutive words (little endian:
// first word = low half). With range r = maxval - minval, a candidate w is
// accepted only if w < floor(2^k / r) * r (k = 32 or 64), and then yields
// minval + (w mod r); rejected words are skipped. There is no modulo bias and
// the output is a pure function of (shape, seed, minval, maxval).

#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "chacha20.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.h"

namespace harness_ops {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TensorShapeUtils;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
namespace errors = ::tensorflow::errors;

constexpr int kSeedWords = chacha20::kKeyWords;

// Fixed domain-separation nonce: the 12 ASCII bytes "TFEH-uniform" read as
// three little-endian 32-bit words.
constexpr uint32_t kUniformNonce[chacha20::kNonceWords] = {
    0x48454654u,  // "TFEH"
    0x696e752du,  // "-uni"
    0x6d726f66u,  // "form"
};

// Nonce of HarnessDeriveSeed: the 12 ASCII bytes "TFEH-derived".
constexpr uint32_t kDeriveNonce[chacha20::kNonceWords] = {
    0x48454654u,  // "TFEH"
    0x7265642du,  // "-der"
    0x64657669u,  // "ived"
};

// Fills buf[0, n) from getrandom(2), retrying on EINTR and short reads.
// Fails (never falls back to a weaker source) on any other error.
absl::Status OsRandomBytes(void* buf, size_t n) {
  auto* p = static_cast<unsigned char*>(buf);
  size_t done = 0;
  while (done < n) {
    const ssize_t got = getrandom(p + done, n - done, 0);
    if (got < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      return errors::Internal("getrandom(2) failed: errno ", err, " (",
                              std::strerror(err), ")");
    }
    done += static_cast<size_t>(got);
  }
  return absl::OkStatus();
}

// Overwrites key material in a way the optimiser cannot elide.
void WipeKey(uint32_t* words, int n = kSeedWords) {
  volatile uint32_t* k = words;
  for (int i = 0; i < n; ++i) k[i] = 0;
}

// Builds the output shape from a 1-D shape tensor of dtype Tshape.
template <typename Tshape>
absl::Status ShapeFromTensor(const Tensor& t, TensorShape* shape) {
  if (!TensorShapeUtils::IsVector(t.shape())) {
    return errors::InvalidArgument("shape must be a 1-D tensor, got shape ",
                                   t.shape().DebugString());
  }
  const auto dims = t.vec<Tshape>();
  for (int64_t i = 0; i < dims.size(); ++i) {
    if (dims(i) < 0) {
      return errors::InvalidArgument("shape must be non-negative, got dim ",
                                     i, " = ", static_cast<int64_t>(dims(i)));
    }
  }
  return TensorShapeUtils::MakeShape(dims.data(), dims.size(), shape);
}

// Writes n uniform values in [minval, minval + range) to out using keystream
// words of type W (uint32_t or uint64_t). kBigRange (range > max(W) / 2, e.g.
// the full int64 range) means floor(2^k / range) = 1: accepted words are
// already below range and need no (slow, 64-bit) division.
template <typename W, bool kBigRange, typename T>
absl::Status FillUniform(const uint32_t key[kSeedWords], T minval, W range,
                         T* out, int64_t n) {
  static_assert(std::is_unsigned<W>::value, "W must be unsigned");
  using UT = std::make_unsigned_t<T>;
  constexpr int kWordsPerSample = sizeof(W) / sizeof(uint32_t);
  constexpr int kSamplesPerBatch = chacha20::kBatchWords / kWordsPerSample;
  // 2^k mod range, computed without overflow; accept w <= accept_max.
  const W rem = static_cast<W>(W{0} - range) % range;
  const W accept_max = std::numeric_limits<W>::max() - rem;
  const UT base = static_cast<UT>(minval);
  chacha20::KeyStream stream(key, kUniformNonce);
  int64_t i = 0;
  while (i < n) {
    if (!stream.Refill()) {
      return errors::InvalidArgument(
          "keystream exhausted: too many elements requested (", n,
          ") for one ChaCha20 stream");
    }
    const uint32_t* words = stream.words();
    for (int j = 0; j < kSamplesPerBatch && i < n; ++j) {
      W w;
      if constexpr (kWordsPerSample == 1) {
        w = words[j];
      } else {
        w = static_cast<W>(words[2 * j]) |
            (static_cast<W>(words[2 * j + 1]) << 32);
      }
      if (w > accept_max) continue;
      const W v = kBigRange ? w : w % range;
      out[i++] = static_cast<T>(static_cast<UT>(base + static_cast<UT>(v)));
    }
  }
  return absl::OkStatus();
}

// Validates shape/minval/maxval, allocates output 0 and fills it.
template <typename T, typename Tshape>
void ComputeUniform(OpKernelContext* ctx, const uint32_t key[kSeedWords],
                    const Tensor& shape_t, const Tensor& minval_t,
                    const Tensor& maxval_t) {
  TensorShape shape;
  OP_REQUIRES_OK(ctx, ShapeFromTensor<Tshape>(shape_t, &shape));
  OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(minval_t.shape()),
              errors::InvalidArgument("minval must be a scalar, got shape ",
                                      minval_t.shape().DebugString()));
  OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(maxval_t.shape()),
              errors::InvalidArgument("maxval must be a scalar, got shape ",
                                      maxval_t.shape().DebugString()));
  const T minval = minval_t.scalar<T>()();
  const T maxval = maxval_t.scalar<T>()();
  OP_REQUIRES(ctx, minval < maxval,
              errors::InvalidArgument("need minval < maxval, got minval=",
                                      static_cast<int64_t>(minval),
                                      " maxval=",
                                      static_cast<int64_t>(maxval)));
  Tensor* out = nullptr;
  OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &out));
  const int64_t n = shape.num_elements();
  if (n == 0) return;
  T* data = out->flat<T>().data();
  // Exact since minval < maxval and both fit in 64 bits.
  const uint64_t range =
      static_cast<uint64_t>(static_cast<int64_t>(maxval)) -
      static_cast<uint64_t>(static_cast<int64_t>(minval));
  if constexpr (sizeof(T) <= sizeof(uint32_t)) {
    const auto r = static_cast<uint32_t>(range);
    OP_REQUIRES_OK(ctx, r > std::numeric_limits<uint32_t>::max() / 2
                            ? FillUniform<uint32_t, true>(key, minval, r,
                                                          data, n)
                            : FillUniform<uint32_t, false>(key, minval, r,
                                                           data, n));
  } else {
    OP_REQUIRES_OK(ctx, range > std::numeric_limits<uint64_t>::max() / 2
                            ? FillUniform<uint64_t, true>(key, minval, range,
                                                          data, n)
                            : FillUniform<uint64_t, false>(key, minval,
                                                           range, data, n));
  }
}

// Shape function: output shape from the `shape` input; scalar bounds.
absl::Status UniformShapeFn(InferenceContext* c, int minval_index) {
  ShapeHandle unused;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &unused));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(minval_index), 0, &unused));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(minval_index + 1), 0, &unused));
  ShapeHandle out;
  TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(0, &out));
  c->set_output(0, out);
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("SecureSeed")
    .Output("seed: int32")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->Vector(kSeedWords));
      return absl::OkStatus();
    })
    .Doc("Returns 256 bits from the OS CSPRNG (getrandom(2)) as int32[8].");

REGISTER_OP("SecureSeededRandomUniform")
    .Input("shape: Tshape")
    .Input("seed: int32")
    .Input("minval: T")
    .Input("maxval: T")
    .Output("output: T")
    .Attr("T: {int8, int16, int32, int64}")
    .Attr("Tshape: {int32, int64} = DT_INT32")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle seed;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &seed));
      DimensionHandle unused;
      TF_RETURN_IF_ERROR(c->WithValue(c->Dim(seed, 0), kSeedWords, &unused));
      return UniformShapeFn(c, 2);
    })
    .Doc(R"doc(
Deterministic uniform integers in [minval, maxval) from a 256-bit seed,
ChaCha20 keystream (nonce "TFEH-uniform", counter from 0) with rejection
sampling, so there is no modulo bias.
)doc");

REGISTER_OP("SecureRandomUniform")
    .Input("shape: Tshape")
    .Input("minval: T")
    .Input("maxval: T")
    .Output("output: T")
    .Attr("T: {int8, int16, int32, int64}")
    .Attr("Tshape: {int32, int64} = DT_INT32")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) { return UniformShapeFn(c, 1); })
    .Doc(R"doc(
Uniform integers in [minval, maxval) like SecureSeededRandomUniform, seeded
with fresh getrandom(2) bits on every run.
)doc");

REGISTER_OP("HarnessDeriveSeed")
    .Input("key: int32")
    .Input("index: int64")
    .Output("seed: int32")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 0, &unused));
      c->set_output(0, c->Vector(kSeedWords));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Seed number `index` (0 <= index < 2^32) derived from a 256-bit key: the first
256 bits of ChaCha20 block `index` under the key with the nonce "TFEH-derived"
(a PRF, so seeds of distinct indices are independent to anyone without the
key, and unrelated to the key's own "TFEH-uniform" stream).
)doc");

REGISTER_OP("HarnessChacha20Keystream")
    .Input("key: int32")
    .Input("nonce: int32")
    .Input("counter: int64")
    .Input("num_blocks: int64")
    .Output("keystream: uint8")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->Vector(InferenceContext::kUnknownDim));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Testing aid: raw ChaCha20 keystream bytes of blocks counter ..
counter + num_blocks - 1 for an int32[8] key and int32[3] nonce (words are
serialised little-endian, as in RFC 8439).
)doc");

namespace {

// Reads an int32[n] tensor into host words; returns false on shape mismatch.
bool ReadWords(const Tensor& t, int n, uint32_t* words) {
  if (t.dims() != 1 || t.dim_size(0) != n) return false;
  const auto v = t.vec<int32_t>();
  for (int i = 0; i < n; ++i) words[i] = static_cast<uint32_t>(v(i));
  return true;
}

class SecureSeedOp : public OpKernel {
 public:
  explicit SecureSeedOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_output(0, TensorShape({kSeedWords}), &out));
    OP_REQUIRES_OK(ctx, OsRandomBytes(out->flat<int32_t>().data(),
                                      kSeedWords * sizeof(int32_t)));
  }
};

template <typename T, typename Tshape>
class SecureSeededRandomUniformOp : public OpKernel {
 public:
  explicit SecureSeededRandomUniformOp(OpKernelConstruction* ctx)
      : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& seed_t = ctx->input(1);
    uint32_t key[kSeedWords];
    OP_REQUIRES(ctx, ReadWords(seed_t, kSeedWords, key),
                errors::InvalidArgument("seed must have shape [8], got ",
                                        seed_t.shape().DebugString()));
    ComputeUniform<T, Tshape>(ctx, key, ctx->input(0), ctx->input(2),
                              ctx->input(3));
    WipeKey(key);
  }
};

template <typename T, typename Tshape>
class SecureRandomUniformOp : public OpKernel {
 public:
  explicit SecureRandomUniformOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    uint32_t key[kSeedWords];
    OP_REQUIRES_OK(ctx, OsRandomBytes(key, sizeof(key)));
    ComputeUniform<T, Tshape>(ctx, key, ctx->input(0), ctx->input(1),
                              ctx->input(2));
    WipeKey(key);
  }
};

class HarnessDeriveSeedOp : public OpKernel {
 public:
  explicit HarnessDeriveSeedOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    uint32_t key[kSeedWords];
    OP_REQUIRES(ctx, ReadWords(ctx->input(0), kSeedWords, key),
                errors::InvalidArgument("key must have shape [8], got ",
                                        ctx->input(0).shape().DebugString()));
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(ctx->input(1).shape()),
                errors::InvalidArgument("index must be a scalar"));
    const int64_t index = ctx->input(1).scalar<int64_t>()();
    OP_REQUIRES(ctx, index >= 0 && index < static_cast<int64_t>(chacha20::kMaxBlocks),
                errors::InvalidArgument("index must be in [0, 2^32), got ", index));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({kSeedWords}), &out));
    uint32_t words[chacha20::kBatchWords];
    chacha20::Blocks(key, kDeriveNonce, static_cast<uint32_t>(index), words);
    auto seed = out->vec<int32_t>();
    for (int i = 0; i < kSeedWords; ++i) seed(i) = static_cast<int32_t>(words[i]);
    WipeKey(words, chacha20::kBatchWords);
    WipeKey(key);
  }
};

class HarnessChacha20KeystreamOp : public OpKernel {
 public:
  explicit HarnessChacha20KeystreamOp(OpKernelConstruction* ctx)
      : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    uint32_t key[chacha20::kKeyWords];
    uint32_t nonce[chacha20::kNonceWords];
    OP_REQUIRES(ctx, ReadWords(ctx->input(0), chacha20::kKeyWords, key),
                errors::InvalidArgument("key must have shape [8]"));
    OP_REQUIRES(ctx, ReadWords(ctx->input(1), chacha20::kNonceWords, nonce),
                errors::InvalidArgument("nonce must have shape [3]"));
    OP_REQUIRES(ctx,
                TensorShapeUtils::IsScalar(ctx->input(2).shape()) &&
                    TensorShapeUtils::IsScalar(ctx->input(3).shape()),
                errors::InvalidArgument("counter, num_blocks must be scalars"));
    const int64_t counter = ctx->input(2).scalar<int64_t>()();
    const int64_t num_blocks = ctx->input(3).scalar<int64_t>()();
    OP_REQUIRES(ctx,
                counter >= 0 && num_blocks >= 0 &&
                    static_cast<uint64_t>(counter) +
                            static_cast<uint64_t>(num_blocks) <=
                        chacha20::kMaxBlocks,
                errors::InvalidArgument(
                    "need 0 <= counter, 0 <= num_blocks, counter + "
                    "num_blocks <= 2^32; got counter=",
                    counter, " num_blocks=", num_blocks));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({num_blocks * chacha20::kBlockBytes}),
                            &out));
    uint8_t* bytes = out->flat<uint8_t>().data();
    uint32_t words[chacha20::kBatchWords];
    for (int64_t b = 0; b < num_blocks; b += chacha20::kLanes) {
      chacha20::Blocks(key, nonce, static_cast<uint32_t>(counter + b), words);
      const int64_t nb = std::min<int64_t>(chacha20::kLanes, num_blocks - b);
      for (int64_t w = 0; w < nb * chacha20::kBlockWords; ++w) {
        uint8_t* dst = bytes + (b * chacha20::kBlockWords + w) * 4;
        for (int k = 0; k < 4; ++k) {
          dst[k] = static_cast<uint8_t>(words[w] >> (8 * k));
        }
      }
    }
  }
};

REGISTER_KERNEL_BUILDER(Name("SecureSeed").Device(DEVICE_CPU), SecureSeedOp);
REGISTER_KERNEL_BUILDER(Name("HarnessDeriveSeed").Device(DEVICE_CPU),
                        HarnessDeriveSeedOp);
REGISTER_KERNEL_BUILDER(Name("HarnessChacha20Keystream").Device(DEVICE_CPU),
                        HarnessChacha20KeystreamOp);

#define HARNESS_REGISTER_UNIFORM(T, Tshape)                              \
  REGISTER_KERNEL_BUILDER(Name("SecureSeededRandomUniform")              \
                              .Device(DEVICE_CPU)                        \
                              .TypeConstraint<T>("T")                    \
                              .TypeConstraint<Tshape>("Tshape"),         \
                          SecureSeededRandomUniformOp<T, Tshape>);       \
  REGISTER_KERNEL_BUILDER(Name("SecureRandomUniform")                    \
                              .Device(DEVICE_CPU)                        \
                              .TypeConstraint<T>("T")                    \
                              .TypeConstraint<Tshape>("Tshape"),         \
                          SecureRandomUniformOp<T, Tshape>);

#define HARNESS_REGISTER_UNIFORM_T(T) \
  HARNESS_REGISTER_UNIFORM(T, int32_t) \
  HARNESS_REGISTER_UNIFORM(T, int64_t)

HARNESS_REGISTER_UNIFORM_T(int8_t)
HARNESS_REGISTER_UNIFORM_T(int16_t)
HARNESS_REGISTER_UNIFORM_T(int32_t)
HARNESS_REGISTER_UNIFORM_T(int64_t)

#undef HARNESS_REGISTER_UNIFORM_T
#undef HARNESS_REGISTER_UNIFORM

}  // namespace
}  // namespace harness_ops
