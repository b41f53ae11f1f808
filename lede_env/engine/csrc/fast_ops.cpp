// Fused per-row operations of the fast layer stack (lede_env/engine/fast_stack.py), for CPU.
//
// Why by hand: at one position per step a SmolLM2 layer spends ~0.1-0.2 ms in some 35 small ATen operations
// (RMSNorm alone is 6 kernels, a 3x3x128 bmm 10 us), a third of the layer's time in bf16; torch.compile of
// the layer measured no faster (its per-call guard and wrapper cost replaces the operations' cost). These
// functions do the glue between the matrix products in one call each.
//
// The matrix product (linear) is here too, measured faster than oneDNN and MKL at 1 and 13 rows in fp32 and
// with bf16 weights (figures at `linear`; no AMX is exposed on the machine this was written on).
//
// Batch invariance by construction: every output row is computed by the same sequential loops from its own
// inputs and its own position only (never from the number of rows, the cache capacity or the threads), so
// verifying q positions gives each row the bits that one position at a time gives. Arithmetic is fp32;
// inputs and outputs are fp32 or bf16 (the products take fp32 inputs); the KV cache is fp32.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstring>
#include <vector>
#include <type_traits>

namespace {

constexpr int LANES = 16;

// sum_i a[i] * b[i]: LANES partial sums, added pairwise in a fixed tree (vectorisable, deterministic)
inline float dot(const float* a, const float* b, int n) {
  float acc[LANES] = {0};
  int i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int l = 0; l < LANES; ++l) acc[l] += a[i + l] * b[i + l];
  for (int w = LANES / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  float s = acc[0];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// e^x clamped to [e^-87, e^88], relative error ~3e-7: exponent by rounding x / ln 2, a degree-6
// polynomial for the rest. Branch-free, so that loops over it vectorise (std::exp does not).
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.f), 88.f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
  float p = 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

template <typename T>
inline void rms_row(const float* x, const T* w, T* out, int n, float eps) {
  float r = 1.f / std::sqrt(dot(x, x, n) / n + eps);
  for (int i = 0; i < n; ++i) out[i] = static_cast<T>(x[i] * r * static_cast<float>(w[i]));
}

template <typename T>
inline void load_row(const T* src, float* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

void check_rows(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.dim() == 2, name, " must be a contiguous 2-D CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name, " must be fp32 or bf16");
}

// the KV cache: kc and vc contiguous fp32 CPU tensors [KV, capacity, D] of one shape
void check_cache(const torch::Tensor& kc, const torch::Tensor& vc) {
  TORCH_CHECK(kc.device().is_cpu() && kc.scalar_type() == at::kFloat && vc.scalar_type() == at::kFloat &&
              kc.is_contiguous() && vc.is_contiguous() && kc.dim() == 3 && kc.sizes() == vc.sizes(),
              "the cache must be two contiguous fp32 CPU tensors [KV, capacity, D] of one shape");
}

void check_norm_weight(const torch::Tensor& w, const torch::Tensor& x) {
  TORCH_CHECK(w.is_contiguous() && w.numel() == x.size(1) && w.scalar_type() == x.scalar_type(),
              "the norm weight must be contiguous, of the rows' dtype, with ", x.size(1), " elements");
}

}  // namespace

// RMSNorm of each row of x [rows, n] with weight w [n] (same dtype as x).
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  check_rows(x, "x");
  check_norm_weight(w, x);
  auto out = torch::empty_like(x);
  const int rows = x.size(0), n = x.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "rms_norm", [&] {
    std::vector<float> buf(n);
    for (int r = 0; r < rows; ++r) {
      load_row(x.data_ptr<scalar_t>() + r * n, buf.data(), n);
      rms_row(buf.data(), w.data_ptr<scalar_t>(), out.data_ptr<scalar_t>() + r * n, n, (float)eps);
    }
  });
  return out;
}

// s = x + y (rounded to x's dtype) and RMSNorm(s) with weight w: the residual add and the next norm.
std::vector<torch::Tensor> add_rms_norm(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& w,
                                        double eps) {
  check_rows(x, "x");
  check_rows(y, "y");
  TORCH_CHECK(x.sizes() == y.sizes() && x.scalar_type() == y.scalar_type(), "x and y must match");
  check_norm_weight(w, x);
  auto s = torch::empty_like(x), out = torch::empty_like(x);
  const int rows = x.size(0), n = x.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "add_rms_norm", [&] {
    std::vector<float> buf(n);
    const scalar_t *px = x.data_ptr<scalar_t>(), *py = y.data_ptr<scalar_t>();
    scalar_t* ps = s.data_ptr<scalar_t>();
    for (int r = 0; r < rows; ++r) {
      for (int i = 0; i < n; ++i) {
        scalar_t v = static_cast<scalar_t>(static_cast<float>(px[r * n + i]) + static_cast<float>(py[r * n + i]));
        ps[r * n + i] = v;
        buf[i] = static_cast<float>(v);
      }
      rms_row(buf.data(), w.data_ptr<scalar_t>(), out.data_ptr<scalar_t>() + r * n, n, (float)eps);
    }
  });
  return {s, out};
}

// silu(g) * u for gu = [g | u] of shape [rows, 2 * n]; returns [rows, n].
torch::Tensor silu_mul(const torch::Tensor& gu) {
  check_rows(gu, "gu");
  const int rows = gu.size(0), n = gu.size(1) / 2;
  auto out = torch::empty({rows, n}, gu.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gu.scalar_type(), "silu_mul", [&] {
    const scalar_t* p = gu.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int r = 0; r < rows; ++r)
      for (int i = 0; i < n; ++i) {
        float g = static_cast<float>(p[r * 2 * n + i]), u = static_cast<float>(p[r * 2 * n + n + i]);
        o[r * n + i] = static_cast<scalar_t>(g / (1.f + exp_approx(-g)) * u);
      }
  });
  return out;
}

// RoPE and cache append. qkv [rows, (H + 2 KV) * D] holds the projections of positions past..past+rows-1;
// cos/sin [capacity, D] fp32 (sin sign-folded: x*cos + roll(x, D/2)*sin == x*cos + rotate_half(x)*sin).
// Writes rotated keys and the values into kc/vc [KV, capacity, D] (fp32) and returns the rotated queries
// [rows, H, D] in fp32.
torch::Tensor rope_append(const torch::Tensor& qkv, torch::Tensor& kc, torch::Tensor& vc, int64_t past,
                          const torch::Tensor& cos, const torch::Tensor& sin, int64_t H, int64_t KV) {
  check_rows(qkv, "qkv");
  check_cache(kc, vc);
  const int rows = qkv.size(0), D = kc.size(2), cap = kc.size(1), half = D / 2;
  TORCH_CHECK(KV == kc.size(0) && H > 0 && H % KV == 0, "H (", H, ") must be a multiple of the cache's ", kc.size(0),
              " kv heads");
  TORCH_CHECK(qkv.size(1) == (H + 2 * KV) * D, "qkv has ", qkv.size(1), " columns, expected ", (H + 2 * KV) * D);
  TORCH_CHECK(past >= 0, "past must be >= 0, got ", past);
  TORCH_CHECK(past + rows <= cap, "the cache holds ", cap, " positions, need ", past + rows);
  for (const auto* t : {&cos, &sin})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->dim() == 2 && t->size(1) == D &&
                t->size(0) >= past + rows, "cos and sin must be contiguous fp32 [positions >= ", past + rows,
                ", ", D, "]");
  auto q = torch::empty({rows, H, D}, qkv.options().dtype(at::kFloat));
  float *pq = q.data_ptr<float>(), *pk = kc.data_ptr<float>(), *pv = vc.data_ptr<float>();
  const float *pc = cos.data_ptr<float>(), *psn = sin.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, qkv.scalar_type(), "rope_append", [&] {
    const scalar_t* src = qkv.data_ptr<scalar_t>();
    std::vector<float> x(D);
    for (int r = 0; r < rows; ++r) {
      const int64_t pos = past + r;
      const float *c = pc + pos * D, *s = psn + pos * D;
      const scalar_t* row = src + (int64_t)r * (H + 2 * KV) * D;
      for (int h = 0; h < H + KV; ++h) {
        load_row(row + h * D, x.data(), D);
        float* dst = h < H ? pq + ((int64_t)r * H + h) * D : pk + ((h - H) * (int64_t)cap + pos) * D;
        for (int d = 0; d < half; ++d) dst[d] = x[d] * c[d] + x[d + half] * s[d];
        for (int d = half; d < D; ++d) dst[d] = x[d] * c[d] + x[d - half] * s[d];
      }
      for (int g = 0; g < KV; ++g) load_row(row + (H + KV + g) * D, pv + (g * (int64_t)cap + pos) * D, D);
    }
  });
  return q;
}

// LEDE_AVX512: the AVX-512 kernels (attention, products). Built with -march=native, so where the CPU has
// AVX-512F and BW; LEDE_PORTABLE (LEDE_FAST_OPS=portable) builds the portable loops alone, as on AVX2 or ARM CPUs.
#if defined(__AVX512F__) && defined(__AVX512BW__) && !defined(LEDE_PORTABLE)
#define LEDE_AVX512 1
#include <immintrin.h>
constexpr const char* ISA = "avx512";
#else
constexpr const char* ISA = "portable";
#endif

namespace {

// One (row, head) of causal attention: softmax(q . k_j * scale) over keys j < `keys`, times v; o [D] in T.
// Portable version: one dot product per key.
template <typename T>
void attend_row(const float* q, const float* k, const float* v, int64_t keys, int D, float scale, float* p,
                float* acc, T* o) {
  float m = -INFINITY, sum = 0.f;
  for (int64_t j = 0; j < keys; ++j) {
    p[j] = dot(q, k + j * D, D) * scale;
    m = std::max(m, p[j]);
  }
  for (int64_t j = 0; j < keys; ++j) p[j] = exp_approx(p[j] - m);
  for (int64_t j = 0; j < keys; ++j) sum += p[j];
  std::fill(acc, acc + D, 0.f);
  for (int64_t j = 0; j < keys; ++j)
    for (int d = 0; d < D; ++d) acc[d] += p[j] * v[j * D + d];
  for (int d = 0; d < D; ++d) o[d] = static_cast<T>(acc[d] / sum);
}

#if defined(LEDE_AVX512)
constexpr int MAX_DC = 16;   // head_dim up to 256 in vectors of 16

// lane t of the result: the sum of the 16 lanes of a[t]. Every lane is summed in the same tree, whatever t:
// ((x0 + x2) + (x1 + x3)) within each 128-bit quarter, then (q0 + q1) + (q2 + q3).
inline __m512 sum16(const __m512* a) {
  __m512 t[8], u[4], w[2];
  for (int i = 0; i < 8; ++i)
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; ++i)
    u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44), _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xEE));
  for (int i = 0; i < 2; ++i)
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88), _mm512_shuffle_f32x4(w[0], w[1], 0xDD));
}

// exp_approx on 16 lanes (the same steps; fused multiply-adds where the scalar version may round twice)
inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.f)), _mm512_set1_ps(88.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.f / 720);
  for (const float c : {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

// `attend_row` in AVX-512 for D a multiple of 16: scores 16 keys at a time (one vector of partial products
// per key, summed lane-wise by sum16), the softmax sum in 16 lanes, P . V with even and odd keys in two sets
// of accumulators. Each step depends on the row's own query and key count only.
template <typename T>
void attend_row_avx512(const float* q, const float* k, const float* v, int64_t keys, int D, float scale, float* p,
                       T* o) {
  const int DC = D / 16;
  __m512 qv[MAX_DC];
  for (int c = 0; c < DC; ++c) qv[c] = _mm512_loadu_ps(q + 16 * c);
  __m512 mv = _mm512_set1_ps(-INFINITY);
  const __m512 sv = _mm512_set1_ps(scale);
  for (int64_t j0 = 0; j0 < keys; j0 += 16) {
    __m512 a[16];
    for (int t = 0; t < 16; ++t) {
      const float* kj = k + std::min<int64_t>(j0 + t, keys - 1) * D;   // past the last key: a repeat of it
      __m512 s = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kj));
      for (int c = 1; c < DC; ++c) s = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(kj + 16 * c), s);
      a[t] = s;
    }
    const __m512 s = _mm512_mul_ps(sum16(a), sv);
    _mm512_storeu_ps(p + j0, s);
    mv = _mm512_max_ps(mv, s);   // the repeats past the end are copies of a real score: max unchanged
  }
  const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mv));
  __m512 total = _mm512_setzero_ps();
  for (int64_t j0 = 0; j0 < keys; j0 += 16) {
    const __mmask16 live = keys - j0 >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (keys - j0)) - 1);
    const __m512 x = _mm512_maskz_mov_ps(live, exp16(_mm512_sub_ps(_mm512_loadu_ps(p + j0), m)));
    _mm512_storeu_ps(p + j0, x);
    total = _mm512_add_ps(total, x);
  }
  const float sum = _mm512_reduce_add_ps(total);
  __m512 even[MAX_DC], odd[MAX_DC];
  for (int c = 0; c < DC; ++c) even[c] = odd[c] = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 1 < keys; j += 2) {
    const __m512 pe = _mm512_set1_ps(p[j]), po = _mm512_set1_ps(p[j + 1]);
    for (int c = 0; c < DC; ++c) {
      even[c] = _mm512_fmadd_ps(pe, _mm512_loadu_ps(v + j * D + 16 * c), even[c]);
      odd[c] = _mm512_fmadd_ps(po, _mm512_loadu_ps(v + (j + 1) * D + 16 * c), odd[c]);
    }
  }
  if (j < keys) {
    const __m512 pe = _mm512_set1_ps(p[j]);
    for (int c = 0; c < DC; ++c) even[c] = _mm512_fmadd_ps(pe, _mm512_loadu_ps(v + j * D + 16 * c), even[c]);
  }
  alignas(64) float out[16];
  for (int c = 0; c < DC; ++c) {
    _mm512_store_ps(out, _mm512_div_ps(_mm512_add_ps(even[c], odd[c]), _mm512_set1_ps(sum)));
    for (int t = 0; t < 16; ++t) o[16 * c + t] = static_cast<T>(out[t]);
  }
}
#endif

}  // namespace

// Causal attention of queries q [rows, H, D] (fp32, positions past..past+rows-1) over the cache kc/vc
// [KV, capacity, D]: row r sees keys 0..past+r. Grouped-query: head h reads kv head h / (H / KV).
// Returns [rows, H * D] in out_dtype. AVX-512 where D is a multiple of 16 (up to 256), else portable loops.
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& kc, const torch::Tensor& vc, int64_t past,
                        double scale, at::ScalarType out_dtype) {
  TORCH_CHECK(q.device().is_cpu() && q.scalar_type() == at::kFloat && q.is_contiguous() && q.dim() == 3,
              "q must be a contiguous fp32 CPU tensor [rows, H, D]");
  check_cache(kc, vc);
  const int rows = q.size(0), H = q.size(1), D = q.size(2), KV = kc.size(0), cap = kc.size(1);
  TORCH_CHECK(kc.size(2) == D, "q has head_dim ", D, ", the cache ", kc.size(2));
  TORCH_CHECK(H > 0 && H % KV == 0, "the query heads (", H, ") must be a multiple of the kv heads (", KV, ")");
  TORCH_CHECK(past >= 0, "past must be >= 0, got ", past);
  TORCH_CHECK(past + rows <= cap, "the cache holds ", cap, " positions, need ", past + rows);
  const int groups = H / KV;
  auto out = torch::empty({rows, H * D}, q.options().dtype(out_dtype));
  if (rows == 0) return out;
  const float *pq = q.data_ptr<float>(), *pk = kc.data_ptr<float>(), *pv = vc.data_ptr<float>();
#if defined(LEDE_AVX512)
  const bool vector = D % 16 == 0 && D <= 16 * MAX_DC;
#else
  const bool vector = false;
#endif
  // one (row, head) per work item; items run in parallel only when there is enough work (each item is
  // computed whole by one thread, so the split never changes a result)
  const int64_t items = (int64_t)rows * H, grain = std::max<int64_t>(1, 2048 / ((past + rows) * D));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, out_dtype, "attention", [&] {
    scalar_t* po = out.data_ptr<scalar_t>();
    at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> p(past + rows + 16), acc(D);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t r = item / H, h = item % H, keys = past + r + 1;
        const float *k = pk + (h / groups) * cap * D, *v = pv + (h / groups) * cap * D;
#if defined(LEDE_AVX512)
        if (vector) {
          attend_row_avx512(pq + item * D, k, v, keys, D, (float)scale, p.data(), po + item * D);
          continue;
        }
#endif
        attend_row(pq + item * D, k, v, keys, D, (float)scale, p.data(), acc.data(), po + item * D);
      }
    });
  });
  return out;
}

namespace {

#if defined(LEDE_AVX512)
// The matrix product y = x @ w.T, x [M, K] fp32, w [N, K] fp32 or bf16, y fp32. Each output y[m, n] is one
// accumulator of 16 fp32 lanes, fed by the same multiply-add instructions over k in the same order whatever M,
// the tile it falls in and the thread, then summed across lanes in one fixed tree: batch-invariant.
//
// Up to MB_ONE rows (decoding and verification) all rows share one pass over the weights: tiles of M rows x
// NB(M) weight rows, so each weight line is loaded once and used M times, with software prefetch into L2
// PF_BYTES ahead of every line read (the hardware prefetchers alone leave the 13-row product twice slower).
// More rows (prefills) run in tiles of at most MB_MANY rows x 4 weight rows; the first tile of rows prefetches.
constexpr int MB_ONE = 14;
constexpr int MB_MANY = 6;
constexpr int NB_MANY = 4;
constexpr int64_t PF_BYTES = 16384;

// One step of k per weight type: STEP elements of NBT weight rows times the matching x, into fp32 lanes.
struct F32W {   // fp32 weights: 16 per vector, x in its natural order
  using T = float;
  static constexpr int STEP = 16;
  static constexpr int nb(int mb) { return mb <= 2 ? 8 : mb <= 6 ? 4 : 2; }   // registers: mb*nb + nb + 1 <= 32
  template <int MB, int NBT, bool MASKED>
  static void step(__m512 (&acc)[MB][NBT], const float* x, int64_t ldx, const float* w, int64_t K, int64_t k,
                   int64_t rest) {
    __m512 wv[NBT];
    const __mmask16 mask = MASKED ? static_cast<__mmask16>((1u << rest) - 1) : 0xFFFF;
    for (int j = 0; j < NBT; ++j) wv[j] = MASKED ? _mm512_maskz_loadu_ps(mask, w + j * K + k) : _mm512_loadu_ps(w + j * K + k);
    for (int i = 0; i < MB; ++i) {
      const __m512 xv = MASKED ? _mm512_maskz_loadu_ps(mask, x + i * ldx + k) : _mm512_loadu_ps(x + i * ldx + k);
      for (int j = 0; j < NBT; ++j) acc[i][j] = _mm512_fmadd_ps(wv[j], xv, acc[i][j]);
    }
  }
};
struct BF16W {  // bf16 weights: 32 per load, split exactly into the even and odd ones as fp32 (a shift and a
                // mask: bf16 is the top half of fp32); x deinterleaved to match (see `deinterleave`)
  using T = uint16_t;
  static constexpr int STEP = 32;
  // registers: mb*nb + 2nb + 2 <= 32 up to 12 rows (13-14 rows and the 6 x 4 prefill tiles spill a few)
  static constexpr int nb(int mb) { return mb <= 1 ? 8 : mb <= 5 ? 4 : 2; }
  template <int MB, int NBT, bool MASKED>
  static void step(__m512 (&acc)[MB][NBT], const float* x, int64_t ldx, const uint16_t* w, int64_t K, int64_t k,
                   int64_t rest) {
    __m512 we[NBT], wo[NBT];
    const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
    const __mmask32 mask = MASKED ? static_cast<__mmask32>((1ull << rest) - 1) : 0xFFFFFFFFu;
    for (int j = 0; j < NBT; ++j) {
      const __m512i v = MASKED ? _mm512_maskz_loadu_epi16(mask, w + j * K + k) : _mm512_loadu_si512(w + j * K + k);
      we[j] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
      wo[j] = _mm512_castsi512_ps(_mm512_and_si512(v, high));
    }
    for (int i = 0; i < MB; ++i) {   // x rows padded with zeros to a multiple of 32: no masks needed
      const __m512 xe = _mm512_loadu_ps(x + i * ldx + k), xo = _mm512_loadu_ps(x + i * ldx + k + 16);
      for (int j = 0; j < NBT; ++j) acc[i][j] = _mm512_fmadd_ps(we[j], xe, acc[i][j]);
      for (int j = 0; j < NBT; ++j) acc[i][j] = _mm512_fmadd_ps(wo[j], xo, acc[i][j]);
    }
  }
};

// y[m, n] for MB rows of x (row stride ldx) and NBT weight rows of K; prefetch: 0 none, 1 L1 two tiles ahead
// (many-row tiles), 2 L2 PF_BYTES ahead (one-pass tiles)
template <typename W, int MB, int NBT, int PREFETCH>
inline void tile(const float* x, int64_t ldx, const typename W::T* w, int64_t K, float* y, int64_t ldy) {
  __m512 acc[MB][NBT];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NBT; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t full = K / W::STEP * W::STEP;
  constexpr int64_t ahead = PF_BYTES / sizeof(typename W::T);
  for (int64_t k = 0; k < full; k += W::STEP) {
    W::template step<MB, NBT, false>(acc, x, ldx, w, K, k, 0);
    for (int j = 0; j < NBT; ++j) {
      if (PREFETCH == 1) _mm_prefetch(reinterpret_cast<const char*>(w + (NB_MANY * 2 + j) * K + k), _MM_HINT_T0);
      if (PREFETCH == 2) _mm_prefetch(reinterpret_cast<const char*>(w + j * K + k + ahead), _MM_HINT_T1);
    }
  }
  if (full < K) W::template step<MB, NBT, true>(acc, x, ldx, w, K, full, K - full);
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NBT; ++j) y[i * ldy + j] = _mm512_reduce_add_ps(acc[i][j]);
}

// `tile` with the row count mb (1..MBT) and the weight-row count nb (1..NBT) as runtime values
template <typename W, int MBT, int NBT, int PREFETCH>
inline void tile_n(int64_t mb, int64_t nb, const float* x, int64_t ldx, const typename W::T* w, int64_t K, float* y,
                   int64_t ldy) {
  if constexpr (NBT > 1) {
    if (nb < NBT) return tile_n<W, MBT, NBT - 1, PREFETCH>(mb, nb, x, ldx, w, K, y, ldy);
  }
  if constexpr (MBT > 1) {
    if (mb < MBT) return tile_n<W, MBT - 1, NBT, PREFETCH>(mb, nb, x, ldx, w, K, y, ldy);
  }
  tile<W, MBT, NBT, PREFETCH>(x, ldx, w, K, y, ldy);
}

// all M rows against blocks of NB weight rows (the blocks split over the threads), the rows in tiles of at
// most MBT of as equal a size as possible (13 rows in tiles of 6: 5 + 4 + 4, not 6 + 6 + 1); the first tile of
// each block prefetches
template <typename W, int MBT, int NB, int PREFETCH>
void blocks(const float* x, int64_t M, int64_t ldx, const typename W::T* w, int64_t N, int64_t K, float* y) {
  const int64_t tiles = (M + MBT - 1) / MBT, base = M / tiles, extra = M % tiles;
  at::parallel_for(0, (N + NB - 1) / NB, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t nb = std::min<int64_t>(NB, N - b * NB);
      const typename W::T* wb = w + b * NB * K;
      for (int64_t t = 0, m = 0; t < tiles; m += base + (t < extra), ++t) {
        const int64_t mb = base + (t < extra);
        if (t == 0) tile_n<W, MBT, NB, PREFETCH>(mb, nb, x + m * ldx, ldx, wb, K, y + m * N + b * NB, N);
        else tile_n<W, MBT, NB, 0>(mb, nb, x + m * ldx, ldx, wb, K, y + m * N + b * NB, N);
      }
    }
  });
}

// up to MB_ONE rows in one pass over the weights (one tile of all M rows), more in tiles of MB_MANY rows
template <typename W, int MB = MB_ONE>
void dot_linear(const float* x, int64_t M, int64_t ldx, const typename W::T* w, int64_t N, int64_t K, float* y) {
  if (M > MB_ONE) return blocks<W, MB_MANY, NB_MANY, 1>(x, M, ldx, w, N, K, y);
  if constexpr (MB > 1) {
    if (M < MB) return dot_linear<W, MB - 1>(x, M, ldx, w, N, K, y);
  }
  blocks<W, MB, W::nb(MB), 2>(x, M, ldx, w, N, K, y);
}

// x [M, K] -> [M, KP] (KP = K rounded up to 32, zero-padded), each chunk of 32 as its 16 even then 16 odd
// elements: the order in which BF16W's step meets the weights
torch::Tensor deinterleave(const torch::Tensor& x) {
  const int64_t M = x.size(0), K = x.size(1), KP = (K + 31) / 32 * 32;
  auto out = torch::empty({M, KP}, x.options());
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t m = 0; m < M; ++m) {
    const float* s = src + m * K;
    float* d = dst + m * KP;
    for (int64_t k = 0; k < KP; k += 32) {   // the last chunk: masked loads, zeros past K
      const int64_t rest = std::min<int64_t>(32, K - k);
      const __mmask16 lo = rest >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << rest) - 1);
      const __mmask16 hi = rest >= 32 ? 0xFFFF : rest <= 16 ? 0 : static_cast<__mmask16>((1u << (rest - 16)) - 1);
      const __m512 a = _mm512_maskz_loadu_ps(lo, s + k), b = _mm512_maskz_loadu_ps(hi, s + k + 16);
      _mm512_storeu_ps(d + k, _mm512_permutex2var_ps(a, even, b));
      _mm512_storeu_ps(d + k + 16, _mm512_permutex2var_ps(a, odd, b));
    }
  }
  return out;
}
#else
// The portable product (any CPU): y[m, n] = `dot`(x_m, w_n), the same loops for every output whatever M, the
// block and the thread, so batch-invariant by construction. The compiler vectorises `dot`'s LANES partial sums
// (AVX2, NEON) without reordering any sum. Each block of weight rows meets all M rows while it is in cache;
// bf16 weights are widened exactly (bf16 is the top half of fp32) one row at a time.
inline float widen(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

template <typename T>
void portable_linear(const float* x, int64_t M, const T* w, int64_t N, int64_t K, float* y) {
  at::parallel_for(0, N, 8, [&](int64_t n0, int64_t n1) {
    std::vector<float> row(std::is_same_v<T, float> ? 0 : K);
    for (int64_t n = n0; n < n1; ++n) {
      const float* wn;
      if constexpr (std::is_same_v<T, float>) {
        wn = w + n * K;
      } else {
        for (int64_t k = 0; k < K; ++k) row[k] = widen(w[n * K + k]);
        wn = row.data();
      }
      for (int64_t m = 0; m < M; ++m) y[m * N + n] = dot(x + m * K, wn, static_cast<int>(K));
    }
  });
}
#endif

}  // namespace

// y = x @ w.T for x [M, K] fp32 and w [N, K] fp32 or bf16: fp32 products and accumulation, y fp32. bf16
// weights are widened exactly, so the result is the fp32 product with the rounded weights. Batch-invariant
// by construction (above). Measured in one run for SmolLM2's 30 layers, 2 threads, medians: fp32 one row
// 14.7 ms (MKL's gemv as F.linear calls it: 16.0, oneDNN: 19.9), 13 rows 22.1 ms (oneDNN: 30.2, MKL: 44.2);
// bf16 weights one row 7.9 ms, 13 rows 18.3 ms (oneDNN's bf16 kernels, bf16 inputs: 13.1 and 27.1).
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && (w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16),
              "linear takes x in fp32 and w in fp32 or bf16, got ", x.scalar_type(), " and ", w.scalar_type());
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu() && x.is_contiguous() && w.is_contiguous() && x.dim() == 2 &&
              w.dim() == 2 && x.size(1) == w.size(1), "linear takes contiguous CPU tensors x [M, K] and w [N, K]");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
#if defined(LEDE_AVX512)
  if (w.scalar_type() == at::kFloat) {
    dot_linear<F32W>(x.data_ptr<float>(), M, K, w.data_ptr<float>(), N, K, y.data_ptr<float>());
  } else {
    const auto xd = deinterleave(x);
    dot_linear<BF16W>(xd.data_ptr<float>(), M, xd.size(1), reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()),
                      N, K, y.data_ptr<float>());
  }
#else
  if (w.scalar_type() == at::kFloat) portable_linear(x.data_ptr<float>(), M, w.data_ptr<float>(), N, K, y.data_ptr<float>());
  else portable_linear(x.data_ptr<float>(), M, reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()), N, K,
                       y.data_ptr<float>());
#endif
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("isa") = ISA;
  m.def("linear", &linear, "x @ w.T, x fp32, w fp32 or bf16, batch-invariant");


  m.def("rms_norm", &rms_norm, "RMSNorm per row");
  m.def("add_rms_norm", &add_rms_norm, "residual add, then RMSNorm");
  m.def("silu_mul", &silu_mul, "silu(g) * u");
  m.def("rope_append", &rope_append, "RoPE on q and k, k and v appended to the cache");
  m.def("attention", &attention, "causal attention over the cache, row by row");
}
