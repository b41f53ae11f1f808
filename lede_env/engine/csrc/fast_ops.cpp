// Fused per-row operations of the fast layer stack (lede_env/engine/fast_stack.py), for CPU.
//
// Why by hand: at one position per step a SmolLM2 layer spends ~0.1-0.2 ms in some 35 small ATen operations
// (RMSNorm alone is 6 kernels, a 3x3x128 bmm 10 us), a third of the layer's time in bf16; torch.compile of
// the layer measured no faster (its per-call guard and wrapper cost replaces the operations' cost). These
// functions do the glue between the matrix products in one call each.
//
// The matrix product (linear) is here too. At one position oneDNN's bf16 kernels stream SmolLM2's 212 MB of
// bf16 layer weights in ~12 ms; this kernel, with software prefetch, in ~6 ms (no AMX is exposed here). In
// fp32 it beats oneDNN at several positions (30 layers x 12 rows: ~23 vs ~29 ms) but not MKL's gemv at one.
//
// Batch invariance by construction: every output row is computed by the same sequential loops from its own
// inputs and its own position only (never from the number of rows, the cache capacity or the threads), so
// verifying q positions gives each row the bits that one position at a time gives. Arithmetic is fp32;
// inputs and outputs are fp32 or bf16; the KV cache is fp32.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstring>
#include <vector>

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
  TORCH_CHECK(kc.scalar_type() == at::kFloat && vc.scalar_type() == at::kFloat && kc.is_contiguous() &&
              vc.is_contiguous(), "the cache must be contiguous fp32");
  const int rows = qkv.size(0), D = kc.size(2), cap = kc.size(1), half = D / 2;
  TORCH_CHECK(qkv.size(1) == (H + 2 * KV) * D, "qkv has ", qkv.size(1), " columns, expected ", (H + 2 * KV) * D);
  TORCH_CHECK(past + rows <= cap && past + rows <= cos.size(0), "the cache holds ", cap, " positions, need ",
              past + rows);
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

// Causal attention of queries q [rows, H, D] (fp32, positions past..past+rows-1) over the cache kc/vc
// [KV, capacity, D]: row r sees keys 0..past+r. Grouped-query: head h reads kv head h / (H / KV).
// Returns [rows, H * D] in out_dtype.
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& kc, const torch::Tensor& vc, int64_t past,
                        double scale, at::ScalarType out_dtype) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && q.is_contiguous() && q.dim() == 3, "q must be [rows, H, D] fp32");
  const int rows = q.size(0), H = q.size(1), D = q.size(2), KV = kc.size(0), cap = kc.size(1);
  const int groups = H / KV;
  TORCH_CHECK(past + rows <= cap, "the cache holds ", cap, " positions, need ", past + rows);
  auto out = torch::empty({rows, H * D}, q.options().dtype(out_dtype));
  const float *pq = q.data_ptr<float>(), *pk = kc.data_ptr<float>(), *pv = vc.data_ptr<float>();
  // one (row, head) per work item; items run in parallel only when there is enough work (each item is
  // computed whole by one thread, so the split never changes a result)
  const int64_t items = (int64_t)rows * H, grain = std::max<int64_t>(1, 32768 / ((past + rows) * D));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, out_dtype, "attention", [&] {
    scalar_t* po = out.data_ptr<scalar_t>();
    at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> p(past + rows), acc(D);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t r = item / H, h = item % H, keys = past + r + 1;
        const float* qh = pq + item * D;
        const float *k = pk + (h / groups) * cap * D, *v = pv + (h / groups) * cap * D;
        float m = -INFINITY, sum = 0.f;
        for (int64_t j = 0; j < keys; ++j) {
          p[j] = dot(qh, k + j * D, D) * (float)scale;
          m = std::max(m, p[j]);
        }
        for (int64_t j = 0; j < keys; ++j) p[j] = exp_approx(p[j] - m);
        for (int64_t j = 0; j < keys; ++j) sum += p[j];
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t j = 0; j < keys; ++j)
          for (int d = 0; d < D; ++d) acc[d] += p[j] * v[j * D + d];
        scalar_t* o = po + item * D;
        for (int d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(acc[d] / sum);
      }
    });
  });
  return out;
}

#if defined(__AVX512F__)
#include <immintrin.h>
constexpr bool HAS_F32_DOT = true;
#else
constexpr bool HAS_F32_DOT = false;
#endif
#if defined(__AVX512BF16__) && defined(__AVX512F__)
constexpr bool HAS_BF16_DOT = true;
#else
constexpr bool HAS_BF16_DOT = false;
#endif

#if defined(__AVX512F__)
constexpr int NB = 4;      // weight rows per tile
constexpr int MB_MAX = 6;  // input rows per tile (6 x 4 accumulators: 24 of the 32 vector registers)
constexpr int PF = 2;      // tiles ahead whose weights are prefetched (by the first tile of rows)

// One step of k for each element type: how many elements a 512-bit vector holds, a (masked) load, the
// multiply-accumulate into fp32 lanes, and the rounding of the result.
struct F32Dot {
  using T = float;
  using V = __m512;
  using Mask = __mmask16;
  static constexpr int STEP = 16;
  static V load(Mask m, const T* p) { return _mm512_maskz_loadu_ps(m, p); }
  static V load(const T* p) { return _mm512_loadu_ps(p); }
  static __m512 fma(__m512 acc, V w, V x) { return _mm512_fmadd_ps(w, x, acc); }
  static T out(float v) { return v; }
};
#if defined(__AVX512BF16__)
struct BF16Dot {   // bf16 pairs multiplied and summed into fp32 lanes (vdpbf16ps)
  using T = uint16_t;
  using V = __m512bh;
  using Mask = __mmask32;
  static constexpr int STEP = 32;
  static V load(Mask m, const T* p) { return (__m512bh)_mm512_maskz_loadu_epi16(m, p); }
  static V load(const T* p) { return (__m512bh)_mm512_loadu_si512(p); }
  static __m512 fma(__m512 acc, V w, V x) { return _mm512_dpbf16_ps(acc, w, x); }
  static at::BFloat16 out(float v) { return static_cast<at::BFloat16>(v); }
};
#endif

// y[m, n] for the MB x NBT tile at x (MB rows of K) and w (NBT rows of K): one accumulator per output and the
// same instruction sequence for every output, whatever the tile's size.
template <typename D, int MB, int NBT, bool PREFETCH, typename Out>
inline void dot_tile(const typename D::T* x, const typename D::T* w, int64_t K, Out* y, int64_t ldy) {
  __m512 acc[MB][NBT];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NBT; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t full = K / D::STEP * D::STEP;
  auto step = [&](int64_t k, typename D::Mask mask, auto masked) {
    typename D::V wv[NBT];
    for (int j = 0; j < NBT; ++j) {
      wv[j] = masked ? D::load(mask, w + j * K + k) : D::load(w + j * K + k);
      if (PREFETCH) _mm_prefetch(reinterpret_cast<const char*>(w + (NB * PF + j) * K + k), _MM_HINT_T0);
    }
    for (int i = 0; i < MB; ++i) {
      const typename D::V xv = masked ? D::load(mask, x + i * K + k) : D::load(x + i * K + k);
      for (int j = 0; j < NBT; ++j) acc[i][j] = D::fma(acc[i][j], wv[j], xv);
    }
  };
  for (int64_t k = 0; k < full; k += D::STEP) step(k, 0, std::false_type{});
  if (full < K) step(full, static_cast<typename D::Mask>((1ull << (K - full)) - 1), std::true_type{});
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NBT; ++j) y[i * ldy + j] = D::out(_mm512_reduce_add_ps(acc[i][j]));
}

// the MB rows at x (MB a runtime value in 1..MBT) against NBT weight rows
template <typename D, int MBT, int NBT, typename Out>
inline void dot_rows_m(int64_t mb, bool first, const typename D::T* x, const typename D::T* w, int64_t K, Out* y,
                       int64_t ldy) {
  if constexpr (MBT > 1) {
    if (mb < MBT) return dot_rows_m<D, MBT - 1, NBT>(mb, first, x, w, K, y, ldy);
  }
  if (first) dot_tile<D, MBT, NBT, true>(x, w, K, y, ldy);
  else dot_tile<D, MBT, NBT, false>(x, w, K, y, ldy);
}

// all M rows against nb weight rows (a runtime value in 1..NBT), in tiles of at most MB_MAX rows
template <typename D, int NBT, typename Out>
inline void dot_rows(int64_t nb, const typename D::T* x, int64_t M, const typename D::T* w, int64_t K, Out* y,
                     int64_t ldy) {
  if constexpr (NBT > 1) {
    if (nb < NBT) return dot_rows<D, NBT - 1>(nb, x, M, w, K, y, ldy);
  }
  // tiles of as equal a size as possible (13 rows: 5 + 4 + 4, not 6 + 6 + 1: a one-row tile is latency-bound)
  const int64_t tiles = std::max<int64_t>(1, (M + MB_MAX - 1) / MB_MAX), base = M / tiles, extra = M % tiles;
  for (int64_t t = 0, m = 0; t < tiles; ++t) {
    const int64_t mb = base + (t < extra);
    dot_rows_m<D, MB_MAX, NBT>(mb, t == 0, x + m * K, w, K, y + m * ldy, ldy);
    m += mb;
  }
}

template <typename D, typename Out>
void dot_linear(const typename D::T* x, int64_t M, const typename D::T* w, int64_t N, int64_t K, Out* y) {
  at::parallel_for(0, (N + NB - 1) / NB, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      dot_rows<D, NB>(std::min<int64_t>(NB, N - b * NB), x, M, w + b * NB * K, K, y + b * NB, N);
  });
}
#endif

// y = x @ w.T for x [M, K] and w [N, K], both fp32 or both bf16 (fp32 accumulation, y in their dtype).
// Tiles of 6 input rows x 4 weight rows, weights prefetched two tiles ahead. bf16 at a few rows is
// memory-bound, where this streams the weights about twice as fast as oneDNN's bf16 kernels on CPUs without
// AMX; fp32 at several rows reaches ~60 GMAC/s per core (oneDNN's fp32 kernels at 13 rows: ~45). Every
// y[m, n] is one fixed sequence of multiply-accumulate instructions over k followed by a fixed horizontal
// sum, computed whole by one thread: batch-invariant by construction.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w) {
  TORCH_CHECK(x.scalar_type() == w.scalar_type() && x.is_contiguous() && w.is_contiguous() && x.dim() == 2 &&
              w.dim() == 2 && x.size(1) == w.size(1), "linear takes contiguous x [M, K] and w [N, K] of one dtype");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  if (x.scalar_type() == at::kFloat) {
    TORCH_CHECK(HAS_F32_DOT, "linear in fp32 needs a CPU with AVX-512 (built with -march=native)");
#if defined(__AVX512F__)
    dot_linear<F32Dot>(x.data_ptr<float>(), M, w.data_ptr<float>(), N, K, y.data_ptr<float>());
#endif
  } else if (x.scalar_type() == at::kBFloat16) {
    TORCH_CHECK(HAS_BF16_DOT, "linear in bf16 needs a CPU with AVX512-BF16 (built with -march=native)");
#if defined(__AVX512BF16__) && defined(__AVX512F__)
    dot_linear<BF16Dot>(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()), M,
                        reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()), N, K,
                        y.data_ptr<at::BFloat16>());
#endif
  } else {
    TORCH_CHECK(false, "linear takes fp32 or bf16, got ", x.scalar_type());
  }
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("has_bf16_dot") = HAS_BF16_DOT;
  m.attr("has_f32_dot") = HAS_F32_DOT;
  m.def("linear", &linear, "x @ w.T in fp32 or bf16, batch-invariant");


  m.def("rms_norm", &rms_norm, "RMSNorm per row");
  m.def("add_rms_norm", &add_rms_norm, "residual add, then RMSNorm");
  m.def("silu_mul", &silu_mul, "silu(g) * u");
  m.def("rope_append", &rope_append, "RoPE on q and k, k and v appended to the cache");
  m.def("attention", &attention, "causal attention over the cache, row by row");
}
