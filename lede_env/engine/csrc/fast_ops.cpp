// Fused per-row operations of the fast layer stack (lede_env/engine/fast_stack.py), for CPU.
//
// Why by hand: at one position per step a SmolLM2 layer spends ~0.1-0.2 ms in some 35 small ATen operations
// (RMSNorm alone is 6 kernels, a 3x3x128 bmm 10 us), a third of the layer's time in bf16; torch.compile of
// the layer measured no faster (its per-call guard and wrapper cost replaces the operations' cost). These
// functions do the glue between the matrix products in one call each.
//
// The bf16 matrix product (linear_bf16) is here too: at one position oneDNN's bf16 kernels stream SmolLM2's
// 212 MB of bf16 layer weights in ~12 ms; this kernel, with software prefetch two tiles ahead, in ~6 ms (no AMX
// is exposed here; an fp32 version of the same kernel measured no faster than MKL's gemv, so fp32 products
// stay on MKL/oneDNN).
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

}  // namespace

// RMSNorm of each row of x [rows, n] with weight w [n] (same dtype as x).
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  check_rows(x, "x");
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

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
constexpr bool HAS_BF16_DOT = true;

constexpr int NB = 4;     // weight rows per tile
constexpr int MB_MAX = 6; // input rows per tile
constexpr int PF = 2;            // tiles ahead whose weights are prefetched (by the first tile of rows)

// y[m, n] for the MB x nb tile at x (rows of K bf16) and w (rows of K bf16): one accumulator per output, the
// same instruction sequence for every output whatever the tile's size.
template <int MB, int NBT, bool PREFETCH>
inline void bf16_tile(const uint16_t* x, const uint16_t* w, int64_t K, at::BFloat16* y, int64_t ldy) {
  __m512 acc[MB][NBT];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NBT; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t full = K / 32 * 32;
  for (int64_t k = 0; k < K; k += 32) {
    const __mmask32 mask = k < full ? ~0u : static_cast<__mmask32>((1ull << (K - full)) - 1);
    __m512bh wv[NBT];
    for (int j = 0; j < NBT; ++j) {
      wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + j * K + k);
      if (PREFETCH) _mm_prefetch(reinterpret_cast<const char*>(w + (NB * PF + j) * K + k), _MM_HINT_T0);
    }
    for (int i = 0; i < MB; ++i) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + i * K + k);
      for (int j = 0; j < NBT; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], wv[j], xv);
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NBT; ++j) y[i * ldy + j] = static_cast<at::BFloat16>(_mm512_reduce_add_ps(acc[i][j]));
}

template <int MB, int NBT>
inline void bf16_tile_at(bool first, const uint16_t* x, const uint16_t* w, int64_t K, at::BFloat16* y,
                         int64_t ldy) {
  if (first) bf16_tile<MB, NBT, true>(x, w, K, y, ldy);
  else bf16_tile<MB, NBT, false>(x, w, K, y, ldy);
}

// the last mb < MB_MAX rows (a runtime mb in 1..MBT) against NBT weight rows
template <int MBT, int NBT>
inline void bf16_tail(int64_t mb, bool first, const uint16_t* x, const uint16_t* w, int64_t K, at::BFloat16* y,
                      int64_t ldy) {
  if constexpr (MBT > 1) {
    if (mb < MBT) return bf16_tail<MBT - 1, NBT>(mb, first, x, w, K, y, ldy);
  }
  bf16_tile_at<MBT, NBT>(first, x, w, K, y, ldy);
}

// all M rows against NBT weight rows: tiles of MB_MAX rows, then the rest
template <int NBT>
inline void bf16_rows(const uint16_t* x, int64_t M, const uint16_t* w, int64_t K, at::BFloat16* y, int64_t ldy) {
  int64_t m = 0;
  for (; m + MB_MAX <= M; m += MB_MAX) bf16_tile_at<MB_MAX, NBT>(m == 0, x + m * K, w, K, y + m * ldy, ldy);
  if (m < M) bf16_tail<MB_MAX - 1, NBT>(M - m, m == 0, x + m * K, w, K, y + m * ldy, ldy);
}

// bf16_rows<nb> for a runtime nb in 1..NBT
template <int NBT>
inline void bf16_rows_n(int64_t nb, const uint16_t* x, int64_t M, const uint16_t* w, int64_t K, at::BFloat16* y,
                        int64_t ldy) {
  if constexpr (NBT > 1) {
    if (nb < NBT) return bf16_rows_n<NBT - 1>(nb, x, M, w, K, y, ldy);
  }
  bf16_rows<NBT>(x, M, w, K, y, ldy);
}
#else
constexpr bool HAS_BF16_DOT = false;
#endif

// y = x @ w.T for bf16 x [M, K] and w [N, K], fp32 accumulation, y [M, N] in bf16. Memory-bound at a few
// rows, where it streams the weights faster than oneDNN's bf16 kernels on CPUs without AMX (see
// benchmarks/speed.py). Every y[m, n] is one fixed sequence of 32-wide bf16 dot-product instructions over k
// followed by a fixed horizontal sum, computed whole by one thread: batch-invariant by construction.
torch::Tensor linear_bf16(const torch::Tensor& x, const torch::Tensor& w) {
  TORCH_CHECK(HAS_BF16_DOT, "linear_bf16 needs a CPU with AVX512-BF16 (built with -march=native)");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16 && x.is_contiguous() &&
              w.is_contiguous() && x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
              "linear_bf16 takes contiguous bf16 x [M, K] and w [N, K]");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = torch::empty({M, N}, x.options());
#if defined(__AVX512BF16__) && defined(__AVX512F__)
  const uint16_t* px = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const uint16_t* pw = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  at::BFloat16* py = y.data_ptr<at::BFloat16>();
  at::parallel_for(0, (N + NB - 1) / NB, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * NB;
      bf16_rows_n<NB>(std::min<int64_t>(NB, N - n0), px, M, pw + n0 * K, K, py + n0, N);
    }
  });
#endif
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("has_bf16_dot") = HAS_BF16_DOT;
  m.def("linear_bf16", &linear_bf16, "x @ w.T in bf16, batch-invariant");


  m.def("rms_norm", &rms_norm, "RMSNorm per row");
  m.def("add_rms_norm", &add_rms_norm, "residual add, then RMSNorm");
  m.def("silu_mul", &silu_mul, "silu(g) * u");
  m.def("rope_append", &rope_append, "RoPE on q and k, k and v appended to the cache");
  m.def("attention", &attention, "causal attention over the cache, row by row");
}
