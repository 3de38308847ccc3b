// Element-wise bit manipulation ops on int8/16/32/64 tensors (attr T; ABY3
// uses the narrow ones in its carry circuits). Bits are numbered from the least
// significant (bit 0); width = 8 * sizeof(T).
//
//   BitGather(x, start, stride)    bit j of output = bit start + j*stride of x.
//   BitSplitAndGather(x, stride)   out[i] = BitGather(x, i, stride),
//                                  output shape [stride] + x.shape.
//   BitReverse(x)                  bit order reversed over the full width.
//   XorIndices(x)                  XOR of the indices d of all set bits.

#include <cstdint>
#include <type_traits>

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/util/work_sharder.h"

namespace harness_ops {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
namespace errors = ::tensorflow::errors;

template <typename T>
constexpr int kWidth = 8 * sizeof(T);

template <typename T>
using Unsigned = std::make_unsigned_t<T>;

template <typename T>
T BitGather(T x, int64_t start, int64_t stride) {
  const auto u = static_cast<Unsigned<T>>(x);
  Unsigned<T> r = 0;
  int j = 0;
  for (int64_t b = start; b < kWidth<T>; b += stride, ++j) {
    r |= static_cast<Unsigned<T>>((u >> b) & 1u) << j;
  }
  return static_cast<T>(r);
}

inline uint64_t ReverseBits(uint64_t v) {
  v = ((v >> 1) & 0x5555555555555555ull) | ((v & 0x5555555555555555ull) << 1);
  v = ((v >> 2) & 0x3333333333333333ull) | ((v & 0x3333333333333333ull) << 2);
  v = ((v >> 4) & 0x0F0F0F0F0F0F0F0Full) | ((v & 0x0F0F0F0F0F0F0F0Full) << 4);
  return __builtin_bswap64(v);
}

inline uint32_t ReverseBits(uint32_t v) {
  v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
  v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
  v = ((v >> 4) & 0x0F0F0F0Fu) | ((v & 0x0F0F0F0Fu) << 4);
  return __builtin_bswap32(v);
}

inline uint16_t ReverseBits(uint16_t v) {
  return static_cast<uint16_t>(ReverseBits(static_cast<uint32_t>(v)) >> 16);
}

inline uint8_t ReverseBits(uint8_t v) {
  return static_cast<uint8_t>(ReverseBits(static_cast<uint32_t>(v)) >> 24);
}

// Bit k of the result is the parity of the set bits whose index has bit k
// set; kIndexMasks[k] selects those bit positions.
constexpr uint64_t kIndexMasks[6] = {
    0xAAAAAAAAAAAAAAAAull, 0xCCCCCCCCCCCCCCCCull, 0xF0F0F0F0F0F0F0F0ull,
    0xFF00FF00FF00FF00ull, 0xFFFF0000FFFF0000ull, 0xFFFFFFFF00000000ull,
};

template <typename T>
T XorIndices(T x) {
  const uint64_t u = static_cast<Unsigned<T>>(x);
  constexpr int kIndexBits = __builtin_ctz(kWidth<T>);  // log2(width)
  T r = 0;
  for (int k = 0; k < kIndexBits; ++k) {
    r |= static_cast<T>(__builtin_parityll(u & kIndexMasks[k]) << k);
  }
  return r;
}

// Runs fn(begin, end) over [0, n) on the intra-op thread pool.
template <typename Fn>
void ParallelFor(OpKernelContext* ctx, int64_t n, int64_t cost_per_unit,
                 Fn fn) {
  const auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(threads->num_threads, threads->workers, n,
                      cost_per_unit, fn);
}

absl::Status CheckStride(int64_t stride) {
  if (stride < 1) {
    return errors::InvalidArgument("stride must be >= 1, got ", stride);
  }
  return absl::OkStatus();
}

template <typename T>
class BitGatherOp : public OpKernel {
 public:
  explicit BitGatherOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("start", &start_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("stride", &stride_));
    OP_REQUIRES(ctx, start_ >= 0 && start_ < kWidth<T>,
                errors::InvalidArgument("start must be in [0, ", kWidth<T>,
                                        ") for this dtype, got ", start_));
    OP_REQUIRES_OK(ctx, CheckStride(stride_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x_t = ctx->input(0);
    Tensor* out_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x_t.shape(), &out_t));
    const T* x = x_t.flat<T>().data();
    T* out = out_t->flat<T>().data();
    const int64_t start = start_;
    const int64_t stride = stride_;
    ParallelFor(ctx, x_t.NumElements(), kWidth<T>,
                [=](int64_t begin, int64_t end) {
                  for (int64_t i = begin; i < end; ++i) {
                    out[i] = BitGather(x[i], start, stride);
                  }
                });
  }

 private:
  int64_t start_ = 0;
  int64_t stride_ = 1;
};

template <typename T>
class BitSplitAndGatherOp : public OpKernel {
 public:
  explicit BitSplitAndGatherOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("stride", &stride_));
    OP_REQUIRES_OK(ctx, CheckStride(stride_));
    OP_REQUIRES(ctx, stride_ <= kWidth<T>,
                errors::InvalidArgument("stride must be <= ", kWidth<T>,
                                        " for this dtype, got ", stride_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x_t = ctx->input(0);
    TensorShape out_shape({stride_});
    out_shape.AppendShape(x_t.shape());
    Tensor* out_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out_t));
    const T* x = x_t.flat<T>().data();
    T* out = out_t->flat<T>().data();
    const int64_t n = x_t.NumElements();
    const int64_t stride = stride_;
    ParallelFor(ctx, n, kWidth<T>, [=](int64_t begin, int64_t end) {
      for (int64_t s = 0; s < stride; ++s) {
        T* row = out + s * n;
        for (int64_t i = begin; i < end; ++i) {
          row[i] = BitGather(x[i], s, stride);
        }
      }
    });
  }

 private:
  int64_t stride_ = 1;
};

template <typename T>
class BitReverseOp : public OpKernel {
 public:
  explicit BitReverseOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x_t = ctx->input(0);
    Tensor* out_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x_t.shape(), &out_t));
    const T* x = x_t.flat<T>().data();
    T* out = out_t->flat<T>().data();
    ParallelFor(ctx, x_t.NumElements(), 8, [=](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        out[i] = static_cast<T>(ReverseBits(static_cast<Unsigned<T>>(x[i])));
      }
    });
  }
};

template <typename T>
class XorIndicesOp : public OpKernel {
 public:
  explicit XorIndicesOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x_t = ctx->input(0);
    Tensor* out_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x_t.shape(), &out_t));
    const T* x = x_t.flat<T>().data();
    T* out = out_t->flat<T>().data();
    ParallelFor(ctx, x_t.NumElements(), 16, [=](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) out[i] = XorIndices(x[i]);
    });
  }
};

}  // namespace

REGISTER_OP("BitGather")
    .Input("x: T")
    .Output("output: T")
    .Attr("T: {int8, int16, int32, int64}")
    .Attr("start: int")
    .Attr("stride: int")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape)
    .Doc("Bit j of output = bit start + j * stride of x (LSB = bit 0).");

REGISTER_OP("BitSplitAndGather")
    .Input("x: T")
    .Output("output: T")
    .Attr("T: {int8, int16, int32, int64}")
    .Attr("stride: int")
    .SetShapeFn([](InferenceContext* c) {
      int64_t stride;
      TF_RETURN_IF_ERROR(c->GetAttr("stride", &stride));
      TF_RETURN_IF_ERROR(CheckStride(stride));
      ShapeHandle out;
      TF_RETURN_IF_ERROR(c->Concatenate(c->Vector(stride), c->input(0), &out));
      c->set_output(0, out);
      return absl::OkStatus();
    })
    .Doc("output[i] = BitGather(x, start=i, stride), shape [stride] + x.shape.");

REGISTER_OP("BitReverse")
    .Input("x: T")
    .Output("output: T")
    .Attr("T: {int8, int16, int32, int64}")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape)
    .Doc("Reverses the bit order of each element over the full dtype width.");

REGISTER_OP("XorIndices")
    .Input("x: T")
    .Output("output: T")
    .Attr("T: {int8, int16, int32, int64}")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape)
    .Doc("XOR of the bit indices d of all set bits of each element.");

namespace {

#define HARNESS_REGISTER_AUX(T)                                           \
  REGISTER_KERNEL_BUILDER(                                                \
      Name("BitGather").Device(DEVICE_CPU).TypeConstraint<T>("T"),        \
      BitGatherOp<T>);                                                    \
  REGISTER_KERNEL_BUILDER(                                                \
      Name("BitSplitAndGather").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
      BitSplitAndGatherOp<T>);                                            \
  REGISTER_KERNEL_BUILDER(                                                \
      Name("BitReverse").Device(DEVICE_CPU).TypeConstraint<T>("T"),       \
      BitReverseOp<T>);                                                   \
  REGISTER_KERNEL_BUILDER(                                                \
      Name("XorIndices").Device(DEVICE_CPU).TypeConstraint<T>("T"),       \
      XorIndicesOp<T>);

HARNESS_REGISTER_AUX(int8_t)
HARNESS_REGISTER_AUX(int16_t)
HARNESS_REGISTER_AUX(int32_t)
HARNESS_REGISTER_AUX(int64_t)

#undef HARNESS_REGISTER_AUX

}  // namespace
}  // namespace harness_ops
