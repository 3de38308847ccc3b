// Fused party-local steps of SecureNN's most-significant-bit protocol (the
// private compare of Wagh et al., tf-encrypted's securenn._private_compare and
// _lsb_private). Each op computes on one party exactly the field elements that
// tf-encrypted computes there with a chain of int64 TensorFlow ops followed by
// floormod, in one pass and on small integers. Prime-field values are
// canonical residues in [0, modulus), modulus < 2^15; bit j of an int64 is
// numbered from the least significant (j = 0), L = 64 bits per value.
//
//   HarnessCompareShare(x_bits, r, beta, edge, mask)  party `party`'s share of
//       the masked comparison vector c * mask (x_bits: its share of the bits of
//       x, [..., L]; r: the public revealed value, int64 [...]; beta: the public
//       random bit, [...]; edge: its share of the edge-case vector, [L];
//       mask: the public nonzero mask, [..., L]).
//   HarnessZeroCount(c0, c1)   number of j with c0[..., j] + c1[..., j] = 0
//       (mod modulus), as int64 [...].
//   HarnessBitsSub(r, u)       bit j of r minus u[..., j] (mod modulus).

#include <atomic>
#include <cstdint>

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

constexpr int kBits = 64;
constexpr int64_t kMaxModulus = 1 << 15;

// Canonical residue in [0, p) of a stored field element. int8 values (our wire
// format) go through a 256-entry table; wider ones through one division.
class Canon {
 public:
  explicit Canon(int32_t p) : p_(p) {
    for (int v = -128; v < 128; ++v) {
      const int32_t r = v % p;
      table_[v + 128] = static_cast<int16_t>(r < 0 ? r + p : r);
    }
  }
  int32_t operator()(int8_t v) const { return table_[v + 128]; }
  template <typename T>
  int32_t operator()(T v) const {
    const int64_t r = static_cast<int64_t>(v) % p_;
    return static_cast<int32_t>(r < 0 ? r + p_ : r);
  }
  int32_t p() const { return p_; }

 private:
  int32_t p_;
  int16_t table_[256];
};

// a mod p for 0 <= a < 2^31; kP > 0 fixes p at compile time (a multiply and
// shift instead of a division).
template <int kP>
inline int32_t Reduce(int32_t a, int32_t p) {
  return static_cast<int32_t>(static_cast<uint32_t>(a) %
                              static_cast<uint32_t>(kP > 0 ? kP : p));
}

absl::Status ReadModulus(OpKernelConstruction* ctx, int32_t* modulus) {
  int64_t m = 0;
  TF_RETURN_IF_ERROR(ctx->GetAttr("modulus", &m));
  if (m < 2 || m >= kMaxModulus) {
    return errors::InvalidArgument("modulus must be in [2, 2^15), got ", m);
  }
  *modulus = static_cast<int32_t>(m);
  return absl::OkStatus();
}

// [..., L] with the given leading shape.
TensorShape WithBits(const TensorShape& lead) {
  TensorShape out = lead;
  out.AddDim(kBits);
  return out;
}

absl::Status CheckBitsShape(const char* what, const Tensor& t,
                            const TensorShape& lead) {
  if (t.shape() != WithBits(lead)) {
    return errors::InvalidArgument(what, " must have shape ",
                                   WithBits(lead).DebugString(), ", got ",
                                   t.shape().DebugString());
  }
  return absl::OkStatus();
}

// Shape function: output = input `like` (index) with `extra` appended if >= 0.
absl::Status SameAsInput(InferenceContext* c, int like) {
  c->set_output(0, c->input(like));
  return absl::OkStatus();
}

absl::Status DropBits(InferenceContext* c) {
  ShapeHandle in = c->input(0);
  if (!c->RankKnown(in)) {
    c->set_output(0, c->UnknownShape());
    return absl::OkStatus();
  }
  ShapeHandle out;
  TF_RETURN_IF_ERROR(c->Subshape(in, 0, -1, &out));
  c->set_output(0, out);
  return absl::OkStatus();
}

absl::Status AddBits(InferenceContext* c) {
  ShapeHandle out;
  TF_RETURN_IF_ERROR(c->Concatenate(c->input(0), c->Vector(kBits), &out));
  c->set_output(0, out);
  return absl::OkStatus();
}

REGISTER_OP("HarnessCompareShare")
    .Input("x_bits: T")
    .Input("r: int64")
    .Input("beta: Tbeta")
    .Input("edge: T")
    .Input("mask: Tmask")
    .Output("c_masked: Tout")
    .Attr("party: int")
    .Attr("modulus: int")
    .Attr("T: {int8, int16, int32, int64}")
    .Attr("Tbeta: {int8, int16, int32, int64}")
    .Attr("Tmask: {int8, int16, int32, int64}")
    .Attr("Tout: {int8, int16, int32, int64}")
    .SetShapeFn([](InferenceContext* c) { return SameAsInput(c, 0); });

REGISTER_OP("HarnessZeroCount")
    .Input("c0: T")
    .Input("c1: T")
    .Output("count: int64")
    .Attr("modulus: int")
    .Attr("T: {int8, int16, int32, int64}")
    .SetShapeFn(DropBits);

REGISTER_OP("HarnessBitsSub")
    .Input("r: int64")
    .Input("u: T")
    .Output("diff: Tout")
    .Attr("modulus: int")
    .Attr("T: {int8, int16, int32, int64}")
    .Attr("Tout: {int8, int16, int32, int64}")
    .SetShapeFn(AddBits);

// Party `party` of tf-encrypted's private compare, for one value:
//   s = r + beta (int64 ring), s_j its bits, x_j this party's bit shares;
//   w_j = x_j xor s_j           (x_j + s_j - 2 x_j s_j; s_j added by party 0)
//   c_j = (s_j - x_j) * (1 - 2 beta) + 1 + sum_{k > j} w_k
//                               (s_j and 1 added by party 0)
//   c_j = edge_j where beta = 1 and s = 0 (tf-encrypted's edge case, r = -1)
//   out_j = c_j * mask_j.
// beta must be a bit. Returns false if some beta is not.
template <int kP, typename T, typename Tb, typename Tm, typename Tout>
bool CompareRows(const Canon& canon, bool party0, const T* x, const int64_t* r,
                 const Tb* beta, const T* edge, const Tm* mask, Tout* out,
                 int64_t begin, int64_t end) {
  const int32_t p = canon.p();
  const int32_t pub = party0 ? 1 : 0;  // public terms are added by party 0
  const bool small = p < (1 << 12);
  int32_t edge_c[kBits], xc[kBits], sb[kBits], after[kBits];
  for (int j = 0; j < kBits; ++j) edge_c[j] = canon(edge[j]);
  for (int64_t n = begin; n < end; ++n) {
    const int32_t b = canon(beta[n]);
    if (b > 1) return false;
    const uint64_t s = static_cast<uint64_t>(r[n]) + static_cast<uint64_t>(b);
    const T* xn = x + n * kBits;
    const Tm* mn = mask + n * kBits;
    Tout* on = out + n * kBits;
    if (b == 1 && s == 0) {
      for (int j = 0; j < kBits; ++j) {
        on[j] = static_cast<Tout>(Reduce<kP>(edge_c[j] * canon(mn[j]), p));
      }
      continue;
    }
    // Branch-free on the bits of s (random: branches would mispredict).
    for (int j = 0; j < kBits; ++j) {
      xc[j] = canon(xn[j]);
      sb[j] = static_cast<int32_t>((s >> j) & 1u);
    }
    // after_j = sum_{k > j} w_k, unreduced (< 64 (p + 1)); w_k = x_k if s_k = 0,
    // else pub - x_k (+ p)
    int32_t wsum = 0;
    for (int j = kBits - 1; j >= 0; --j) {
      after[j] = wsum;
      wsum += xc[j] + sb[j] * (pub + p - 2 * xc[j]);
    }
    // (s_j pub - x_j) * sign + pub + after_j, kept non-negative by adding p
    // (< 66 (p + 1)); times the mask (< p) it stays below 2^31 for p < 2^12.
    const int32_t sign = b ? -1 : 1;
    for (int j = 0; j < kBits; ++j) {
      const int32_t c = sign * (sb[j] * pub - xc[j]) + pub + after[j] + p;
      on[j] = static_cast<Tout>(small ? Reduce<kP>(c * canon(mn[j]), p)
                                      : Reduce<kP>(Reduce<kP>(c, p) * canon(mn[j]), p));
    }
  }
  return true;
}

template <typename T, typename Tb, typename Tm, typename Tout>
class CompareShareOp : public OpKernel {
 public:
  explicit CompareShareOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadModulus(ctx, &modulus_));
    int64_t party = -1;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("party", &party));
    OP_REQUIRES(ctx, party == 0 || party == 1,
                errors::InvalidArgument("party must be 0 or 1, got ", party));
    party0_ = party == 0;
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& r = ctx->input(1);
    const Tensor& beta = ctx->input(2);
    const Tensor& edge = ctx->input(3);
    const Tensor& mask = ctx->input(4);
    OP_REQUIRES_OK(ctx, CheckBitsShape("x_bits", x, r.shape()));
    OP_REQUIRES_OK(ctx, CheckBitsShape("mask", mask, r.shape()));
    OP_REQUIRES(ctx, beta.shape() == r.shape(),
                errors::InvalidArgument("beta must have the shape of r ",
                                        r.shape().DebugString(), ", got ",
                                        beta.shape().DebugString()));
    OP_REQUIRES(ctx, edge.NumElements() == kBits,
                errors::InvalidArgument("edge must have ", kBits,
                                        " elements, got ",
                                        edge.shape().DebugString()));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &out));
    const int64_t rows = r.NumElements();
    const Canon canon(modulus_);
    std::atomic<bool> bits_ok{true};
    auto rows_of = [&](int64_t begin, int64_t end) {
      const bool ok =
          modulus_ == 107
              ? CompareRows<107>(canon, party0_, x.flat<T>().data(),
                                 r.flat<int64_t>().data(), beta.flat<Tb>().data(),
                                 edge.flat<T>().data(), mask.flat<Tm>().data(),
                                 out->flat<Tout>().data(), begin, end)
              : CompareRows<0>(canon, party0_, x.flat<T>().data(),
                               r.flat<int64_t>().data(), beta.flat<Tb>().data(),
                               edge.flat<T>().data(), mask.flat<Tm>().data(),
                               out->flat<Tout>().data(), begin, end);
      if (!ok) bits_ok = false;
    };
    auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
    ::tensorflow::Shard(threads->num_threads, threads->workers, rows, 20 * kBits,
                        rows_of);
    OP_REQUIRES(ctx, bits_ok.load(),
                errors::InvalidArgument("beta must hold bits (0 or 1)"));
  }

 private:
  int32_t modulus_ = 0;
  bool party0_ = true;
};

template <typename T>
void ZeroCountRows(const Canon& canon, const T* c0, const T* c1, int64_t* out,
                   int64_t begin, int64_t end) {
  const int32_t p = canon.p();
  for (int64_t n = begin; n < end; ++n) {
    int64_t zeros = 0;
    for (int j = 0; j < kBits; ++j) {
      const int64_t k = n * kBits + j;
      const int32_t d = canon(c0[k]) + canon(c1[k]);  // in [0, 2p)
      zeros += (d == 0) | (d == p);
    }
    out[n] = zeros;
  }
}

template <typename T>
class ZeroCountOp : public OpKernel {
 public:
  explicit ZeroCountOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadModulus(ctx, &modulus_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& c0 = ctx->input(0);
    const Tensor& c1 = ctx->input(1);
    OP_REQUIRES(ctx, c0.shape() == c1.shape(),
                errors::InvalidArgument("c0 and c1 differ in shape: ",
                                        c0.shape().DebugString(), " vs ",
                                        c1.shape().DebugString()));
    OP_REQUIRES(ctx, c0.dims() >= 1 && c0.dim_size(c0.dims() - 1) == kBits,
                errors::InvalidArgument("last dimension must be ", kBits,
                                        ", got ", c0.shape().DebugString()));
    TensorShape lead = c0.shape();
    lead.RemoveLastDims(1);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, lead, &out));
    const int64_t rows = lead.num_elements();
    const Canon canon(modulus_);
    auto rows_of = [&](int64_t begin, int64_t end) {
      ZeroCountRows(canon, c0.flat<T>().data(), c1.flat<T>().data(),
                    out->flat<int64_t>().data(), begin, end);
    };
    auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
    ::tensorflow::Shard(threads->num_threads, threads->workers, rows, 8 * kBits,
                        rows_of);
  }

 private:
  int32_t modulus_ = 0;
};

template <typename T, typename Tout>
void BitsSubRows(const Canon& canon, const int64_t* r, const T* u, Tout* out,
                 int64_t begin, int64_t end) {
  const int32_t p = canon.p();
  for (int64_t n = begin; n < end; ++n) {
    const uint64_t v = static_cast<uint64_t>(r[n]);
    for (int j = 0; j < kBits; ++j) {
      const int64_t k = n * kBits + j;
      const int32_t d = static_cast<int32_t>((v >> j) & 1u) - canon(u[k]);
      out[k] = static_cast<Tout>(d < 0 ? d + p : d);
    }
  }
}

template <typename T, typename Tout>
class BitsSubOp : public OpKernel {
 public:
  explicit BitsSubOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadModulus(ctx, &modulus_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& r = ctx->input(0);
    const Tensor& u = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckBitsShape("u", u, r.shape()));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, u.shape(), &out));
    const int64_t rows = r.NumElements();
    const Canon canon(modulus_);
    auto rows_of = [&](int64_t begin, int64_t end) {
      BitsSubRows(canon, r.flat<int64_t>().data(), u.flat<T>().data(),
                  out->flat<Tout>().data(), begin, end);
    };
    auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
    ::tensorflow::Shard(threads->num_threads, threads->workers, rows, 6 * kBits,
                        rows_of);
  }

 private:
  int32_t modulus_ = 0;
};

// Kernels for every combination of the small-integer dtypes we use: prime-field
// values as int8 (on the wire) or int64 (tf-encrypted's native dtype).
#define HARNESS_COMPARE(T, Tb, Tm, Tout)                         \
  REGISTER_KERNEL_BUILDER(Name("HarnessCompareShare")            \
                              .Device(DEVICE_CPU)                \
                              .TypeConstraint<T>("T")            \
                              .TypeConstraint<Tb>("Tbeta")       \
                              .TypeConstraint<Tm>("Tmask")       \
                              .TypeConstraint<Tout>("Tout"),     \
                          CompareShareOp<T, Tb, Tm, Tout>);
#define HARNESS_COMPARE_OUT(T, Tb, Tm) \
  HARNESS_COMPARE(T, Tb, Tm, int8_t) HARNESS_COMPARE(T, Tb, Tm, int64_t)
#define HARNESS_COMPARE_MASK(T, Tb) \
  HARNESS_COMPARE_OUT(T, Tb, int8_t) HARNESS_COMPARE_OUT(T, Tb, int64_t)
#define HARNESS_COMPARE_BETA(T) \
  HARNESS_COMPARE_MASK(T, int8_t) HARNESS_COMPARE_MASK(T, int64_t)
HARNESS_COMPARE_BETA(int8_t)
HARNESS_COMPARE_BETA(int64_t)
#undef HARNESS_COMPARE_BETA
#undef HARNESS_COMPARE_MASK
#undef HARNESS_COMPARE_OUT
#undef HARNESS_COMPARE

#define HARNESS_ZERO_COUNT(T)                                               \
  REGISTER_KERNEL_BUILDER(                                                  \
      Name("HarnessZeroCount").Device(DEVICE_CPU).TypeConstraint<T>("T"),   \
      ZeroCountOp<T>);
HARNESS_ZERO_COUNT(int8_t)
HARNESS_ZERO_COUNT(int64_t)
#undef HARNESS_ZERO_COUNT

#define HARNESS_BITS_SUB(T, Tout)                           \
  REGISTER_KERNEL_BUILDER(Name("HarnessBitsSub")            \
                              .Device(DEVICE_CPU)           \
                              .TypeConstraint<T>("T")       \
                              .TypeConstraint<Tout>("Tout"), \
                          BitsSubOp<T, Tout>);
HARNESS_BITS_SUB(int8_t, int8_t)
HARNESS_BITS_SUB(int8_t, int64_t)
HARNESS_BITS_SUB(int64_t, int8_t)
HARNESS_BITS_SUB(int64_t, int64_t)
#undef HARNESS_BITS_SUB

}  // namespace
}  // namespace harness_ops
