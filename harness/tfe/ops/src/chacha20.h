// ChaCha20 block function (RFC 8439, section 2.3): 20 rounds, 256-bit key,
// 96-bit nonce, 32-bit block counter.
//
// Blocks are produced kLanes at a time in "structure of arrays" layout
// (state word i of all lanes is contiguous), so every quarter-round step is a
// plain loop over lanes that the compiler turns into SIMD code at -O3 with
// the baseline instruction set; no intrinsics, no -march flags needed. On
// x86-64 GCC additionally emits an AVX2 clone of Blocks() that is selected at
// load time only on CPUs supporting it (function multi-versioning), so the
// library stays portable.
#ifndef HARNESS_OPS_CHACHA20_H_
#define HARNESS_OPS_CHACHA20_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace harness_ops {
namespace chacha20 {

constexpr int kKeyWords = 8;
constexpr int kNonceWords = 3;
constexpr int kBlockWords = 16;
constexpr int kBlockBytes = 4 * kBlockWords;
// Blocks generated per call of Blocks(). 16 lanes fill whole SSE2/AVX2
// vectors; 4 or 8 lanes were measured to vectorise poorly with GCC 12.
constexpr int kLanes = 16;
constexpr int kBatchWords = kLanes * kBlockWords;
// Number of blocks addressable with a 32-bit counter.
constexpr uint64_t kMaxBlocks = uint64_t{1} << 32;

// "expand 32-byte k" as four little-endian words.
constexpr uint32_t kSigma[4] = {0x61707865u, 0x3320646eu, 0x79622d32u,
                                0x6b206574u};

// Applies the quarter round to lanes of state words a, b, c, d.
#define HARNESS_CHACHA_QR(x, a, b, c, d)                                   \
  do {                                                                      \
    for (int l = 0; l < kLanes; ++l) {                                      \
      x[a][l] += x[b][l];                                                   \
      x[d][l] ^= x[a][l];                                                   \
      x[d][l] = (x[d][l] << 16) | (x[d][l] >> 16);                          \
      x[c][l] += x[d][l];                                                   \
      x[b][l] ^= x[c][l];                                                   \
      x[b][l] = (x[b][l] << 12) | (x[b][l] >> 20);                          \
      x[a][l] += x[b][l];                                                   \
      x[d][l] ^= x[a][l];                                                   \
      x[d][l] = (x[d][l] << 8) | (x[d][l] >> 24);                           \
      x[c][l] += x[d][l];                                                   \
      x[b][l] ^= x[c][l];                                                   \
      x[b][l] = (x[b][l] << 7) | (x[b][l] >> 25);                           \
    }                                                                       \
  } while (0)

// Computes blocks counter, counter+1, ..., counter+kLanes-1 (the counter
// wraps modulo 2^32) and writes them to `out` in keystream order: block k's
// state word i lands in out[k * 16 + i]. Words are host integers; the
// keystream bytes are their little-endian serialisation.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
inline void Blocks(const uint32_t key[kKeyWords],
                   const uint32_t nonce[kNonceWords], uint32_t counter,
                   uint32_t out[kBatchWords]) {
  alignas(64) uint32_t init[kBlockWords][kLanes];
  alignas(64) uint32_t x[kBlockWords][kLanes];
  for (int l = 0; l < kLanes; ++l) {
    for (int i = 0; i < 4; ++i) init[i][l] = kSigma[i];
    for (int i = 0; i < kKeyWords; ++i) init[4 + i][l] = key[i];
    init[12][l] = counter + static_cast<uint32_t>(l);
    for (int i = 0; i < kNonceWords; ++i) init[13 + i][l] = nonce[i];
  }
  std::memcpy(x, init, sizeof(x));
  for (int round = 0; round < 10; ++round) {
    // Column round.
    HARNESS_CHACHA_QR(x, 0, 4, 8, 12);
    HARNESS_CHACHA_QR(x, 1, 5, 9, 13);
    HARNESS_CHACHA_QR(x, 2, 6, 10, 14);
    HARNESS_CHACHA_QR(x, 3, 7, 11, 15);
    // Diagonal round.
    HARNESS_CHACHA_QR(x, 0, 5, 10, 15);
    HARNESS_CHACHA_QR(x, 1, 6, 11, 12);
    HARNESS_CHACHA_QR(x, 2, 7, 8, 13);
    HARNESS_CHACHA_QR(x, 3, 4, 9, 14);
  }
  for (int i = 0; i < kBlockWords; ++i) {
    for (int l = 0; l < kLanes; ++l) x[i][l] += init[i][l];
  }
  for (int l = 0; l < kLanes; ++l) {
    for (int i = 0; i < kBlockWords; ++i) out[l * kBlockWords + i] = x[i][l];
  }
}

#undef HARNESS_CHACHA_QR

// Sequential keystream for one (key, nonce), block counter starting at 0.
// Key material and buffered keystream are wiped on destruction.
class KeyStream {
 public:
  KeyStream(const uint32_t key[kKeyWords], const uint32_t nonce[kNonceWords]) {
    std::memcpy(key_, key, sizeof(key_));
    std::memcpy(nonce_, nonce, sizeof(nonce_));
  }
  ~KeyStream() {
    volatile uint32_t* k = key_;
    for (int i = 0; i < kKeyWords; ++i) k[i] = 0;
    volatile uint32_t* b = words_;
    for (int i = 0; i < kBatchWords; ++i) b[i] = 0;
  }
  KeyStream(const KeyStream&) = delete;
  KeyStream& operator=(const KeyStream&) = delete;

  // Generates the next kBatchWords keystream words into words(). Returns
  // false (leaving words() untouched) once the 2^32-block counter space is
  // used up; the counter never wraps.
  bool Refill() {
    if (next_block_ + kLanes > kMaxBlocks) return false;
    Blocks(key_, nonce_, static_cast<uint32_t>(next_block_), words_);
    next_block_ += kLanes;
    return true;
  }
  const uint32_t* words() const { return words_; }

 private:
  uint32_t key_[kKeyWords];
  uint32_t nonce_[kNonceWords];
  uint64_t next_block_ = 0;
  alignas(64) uint32_t words_[kBatchWords];
};

}  // namespace chacha20
}  // namespace harness_ops

#endif  // HARNESS_OPS_CHACHA20_H_
