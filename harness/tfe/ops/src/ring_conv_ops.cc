// 2-D convolution over the ring Z_2^64 (int64 with wrap-around), the local
// step of every convolution on secret shares: tf-encrypted computes it as
// transpose + extract_image_patches + transposes + int64 matmul + transposes.
// One direct loop gives the same ring elements (sums modulo 2^64 do not
// depend on the order of the terms).
//
//   HarnessRingConv2d(x, w)  x: [N, C, H, W] (NCHW), w: [KH, KW, C, O] (HWIO),
//       attrs strides [sh, sw] and padding "SAME" | "VALID" with TensorFlow's
//       conventions (SAME: out = ceil(in / stride), the extra padding row or
//       column at the bottom/right); output [N, O, OH, OW].

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

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
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
namespace errors = ::tensorflow::errors;

struct Geometry {
  int64_t out = 0;
  int64_t pad_before = 0;
};

Geometry Window(int64_t in, int64_t k, int64_t stride, bool same) {
  Geometry g;
  if (same) {
    g.out = (in + stride - 1) / stride;
    const int64_t total = std::max<int64_t>((g.out - 1) * stride + k - in, 0);
    g.pad_before = total / 2;
  } else {
    g.out = in >= k ? (in - k) / stride + 1 : 0;
  }
  return g;
}

// sum_k a[k] * b[k] modulo 2^64. On x86-64 GCC also emits an AVX-512 clone
// (64-bit vector multiplies), picked at load time only where the CPU has it.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("arch=skylake-avx512", "default")))
#endif
uint64_t DotU64(const uint64_t* a, const uint64_t* b, int64_t n) {
  uint64_t acc = 0;
  for (int64_t k = 0; k < n; ++k) acc += a[k] * b[k];
  return acc;
}

REGISTER_OP("HarnessRingConv2d")
    .Input("x: int64")
    .Input("w: int64")
    .Output("y: int64")
    .Attr("strides: list(int)")
    .Attr("padding: {'SAME', 'VALID'}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, w;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &w));
      std::vector<int32_t> strides;
      TF_RETURN_IF_ERROR(c->GetAttr("strides", &strides));
      std::string padding;
      TF_RETURN_IF_ERROR(c->GetAttr("padding", &padding));
      if (strides.size() != 2) {
        return errors::InvalidArgument("strides must have 2 elements");
      }
      std::vector<DimensionHandle> dims = {c->Dim(x, 0), c->Dim(w, 3)};
      for (int i = 0; i < 2; ++i) {
        DimensionHandle in = c->Dim(x, 2 + i), k = c->Dim(w, i);
        if (!c->ValueKnown(in) || !c->ValueKnown(k)) {
          dims.push_back(c->UnknownDim());
          continue;
        }
        dims.push_back(c->MakeDim(Window(c->Value(in), c->Value(k), strides[i],
                                         padding == "SAME")
                                      .out));
      }
      c->set_output(0, c->MakeShape(dims));
      return absl::OkStatus();
    });

class RingConv2dOp : public OpKernel {
 public:
  explicit RingConv2dOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::vector<int32_t> strides;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("strides", &strides));
    OP_REQUIRES(ctx, strides.size() == 2 && strides[0] > 0 && strides[1] > 0,
                errors::InvalidArgument("strides must be 2 positive ints"));
    sh_ = strides[0];
    sw_ = strides[1];
    std::string padding;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("padding", &padding));
    same_ = padding == "SAME";
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& w = ctx->input(1);
    OP_REQUIRES(ctx, x.dims() == 4 && w.dims() == 4,
                errors::InvalidArgument("x and w must be 4-D, got ",
                                        x.shape().DebugString(), " and ",
                                        w.shape().DebugString()));
    const int64_t n = x.dim_size(0), c = x.dim_size(1), h = x.dim_size(2),
                  wd = x.dim_size(3);
    const int64_t kh = w.dim_size(0), kw = w.dim_size(1), o = w.dim_size(3);
    OP_REQUIRES(ctx, w.dim_size(2) == c,
                errors::InvalidArgument("w has ", w.dim_size(2),
                                        " input channels, x has ", c));
    const Geometry gh = Window(h, kh, sh_, same_);
    const Geometry gw = Window(wd, kw, sw_, same_);
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({n, o, gh.out, gw.out}), &y));
    if (y->NumElements() == 0) return;
    // Filter as [O][K] with K = (C, KH, KW), each patch as [K]: every output
    // element is one contiguous dot product of length K.
    const int64_t k_len = c * kh * kw;
    std::vector<uint64_t> filt(o * k_len);
    const auto wf = w.flat<int64_t>();
    for (int64_t i = 0; i < kh; ++i)
      for (int64_t j = 0; j < kw; ++j)
        for (int64_t ci = 0; ci < c; ++ci)
          for (int64_t oi = 0; oi < o; ++oi)
            filt[oi * k_len + (ci * kh + i) * kw + j] =
                static_cast<uint64_t>(wf(((i * kw + j) * c + ci) * o + oi));
    const uint64_t* xd =
        reinterpret_cast<const uint64_t*>(x.flat<int64_t>().data());
    uint64_t* yd = reinterpret_cast<uint64_t*>(y->flat<int64_t>().data());
    const int64_t oh = gh.out, ow = gw.out, pixels = oh * ow;
    const int64_t sh = sh_, sw = sw_, ph = gh.pad_before, pw = gw.pad_before;
    // One work item = one output pixel of one image, all output channels.
    auto pixels_of = [&](int64_t begin, int64_t end) {
      std::vector<uint64_t> patch(k_len);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t ni = item / pixels, pix = item % pixels;
        const int64_t r = pix / ow, q = pix % ow;
        uint64_t* dst = patch.data();
        for (int64_t ci = 0; ci < c; ++ci) {
          const uint64_t* plane = xd + (ni * c + ci) * h * wd;
          for (int64_t i = 0; i < kh; ++i) {
            const int64_t ir = r * sh + i - ph;
            for (int64_t j = 0; j < kw; ++j) {
              const int64_t iq = q * sw + j - pw;
              *dst++ = (ir < 0 || ir >= h || iq < 0 || iq >= wd)
                           ? 0
                           : plane[ir * wd + iq];
            }
          }
        }
        uint64_t* out = yd + ni * o * pixels + pix;
        for (int64_t oi = 0; oi < o; ++oi) {
          const uint64_t* f = filt.data() + oi * k_len;
          out[oi * pixels] = DotU64(f, patch.data(), k_len);
        }
      }
    };
    const int64_t items = n * pixels;
    const int64_t cost = 2 * k_len * (o + 1);
    auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
    ::tensorflow::Shard(threads->num_threads, threads->workers, items, cost,
                        pixels_of);
  }

 private:
  int64_t sh_ = 1, sw_ = 1;
  bool same_ = false;
};

REGISTER_KERNEL_BUILDER(Name("HarnessRingConv2d").Device(DEVICE_CPU),
                        RingConv2dOp);

}  // namespace
}  // namespace harness_ops
