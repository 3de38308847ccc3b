// Uniform elements of a small range as int8, from a seed, one keystream byte
// per candidate: the sampler of SecureNN's prime-field masks and bit shares
// (p = 107), 4x fewer keystream bytes and no division per element compared
// with SecureSeededRandomUniform (one 32-bit word and one modulo each).
//
//   HarnessFieldUniform(shape, seed)  uniform in [low, low + range), int8;
//       attrs low, range with 1 <= range <= 256 and the range inside int8.
//
// Keystream: ChaCha20 (RFC 8439) keyed with the 8 seed words, nonce
// kFieldNonce ("TFEH-field8u"), block counter from 0, bytes in keystream order.
// A byte b is accepted only if b < floor(256 / range) * range, and then
// yields low + (b mod range): no modulo bias; the output is a pure function of
// (shape, seed, low, range). Fails, never falls back, if the counter space of
// one stream is exhausted.

#include <cstdint>
#include <cstring>

#include "chacha20.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace harness_ops {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TensorShapeUtils;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
namespace errors = ::tensorflow::errors;

// "TFEH-field8u" as three little-endian 32-bit words.
constexpr uint32_t kFieldNonce[chacha20::kNonceWords] = {
    0x48454654u,  // "TFEH"
    0x6569662du,  // "-fie"
    0x7538646cu,  // "ld8u"
};

REGISTER_OP("HarnessFieldUniform")
    .Input("shape: int32")
    .Input("seed: int32")
    .Output("output: int8")
    .Attr("low: int")
    .Attr("range: int")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle unused, out;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &unused));
      TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(0, &out));
      c->set_output(0, out);
      return absl::OkStatus();
    });

class FieldUniformOp : public OpKernel {
 public:
  explicit FieldUniformOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    int64_t low = 0, range = 0;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("low", &low));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("range", &range));
    OP_REQUIRES(ctx, range >= 1 && range <= 256 && low >= -128 && low + range - 1 <= 127,
                errors::InvalidArgument("need 1 <= range <= 256 and [low, low + range) "
                                        "inside int8, got low=", low, " range=", range));
    const int64_t limit = (256 / range) * range;
    for (int b = 0; b < 256; ++b) {
      table_[b] = b < limit ? static_cast<int16_t>(low + b % range) : kReject;
    }
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& shape_t = ctx->input(0);
    const Tensor& seed_t = ctx->input(1);
    OP_REQUIRES(ctx, TensorShapeUtils::IsVector(shape_t.shape()),
                errors::InvalidArgument("shape must be a vector"));
    OP_REQUIRES(ctx, seed_t.NumElements() == chacha20::kKeyWords,
                errors::InvalidArgument("seed must have shape [8], got ",
                                        seed_t.shape().DebugString()));
    TensorShape shape;
    OP_REQUIRES_OK(ctx, TensorShapeUtils::MakeShape(
                            shape_t.flat<int32_t>().data(), shape_t.NumElements(), &shape));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &out));
    uint32_t key[chacha20::kKeyWords];
    const auto seed = seed_t.flat<int32_t>();
    for (int i = 0; i < chacha20::kKeyWords; ++i) key[i] = static_cast<uint32_t>(seed(i));
    int8_t* dst = out->flat<int8_t>().data();
    const int64_t n = shape.num_elements();
    chacha20::KeyStream stream(key, kFieldNonce);
    volatile uint32_t* wipe = key;
    for (int i = 0; i < chacha20::kKeyWords; ++i) wipe[i] = 0;
    int64_t i = 0;
    while (i < n) {
      OP_REQUIRES(ctx, stream.Refill(),
                  errors::InvalidArgument("keystream exhausted: too many elements (", n,
                                          ") for one ChaCha20 stream"));
      const uint32_t* words = stream.words();
      for (int w = 0; w < chacha20::kBatchWords && i < n; ++w) {
        const uint32_t word = words[w];
        if (i + 4 <= n) {  // branch-free: a rejected byte is overwritten next
          for (int k = 0; k < 4; ++k) {
            const int16_t v = table_[(word >> (8 * k)) & 0xffu];
            dst[i] = static_cast<int8_t>(v);
            i += v != kReject;
          }
          continue;
        }
        for (int k = 0; k < 4 && i < n; ++k) {
          const int16_t v = table_[(word >> (8 * k)) & 0xffu];
          if (v != kReject) dst[i++] = static_cast<int8_t>(v);
        }
      }
    }
  }

 private:
  static constexpr int16_t kReject = 1000;
  int16_t table_[256];
};

REGISTER_KERNEL_BUILDER(Name("HarnessFieldUniform").Device(DEVICE_CPU), FieldUniformOp);

}  // namespace
}  // namespace harness_ops
